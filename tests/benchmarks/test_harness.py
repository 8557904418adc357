"""``benchmarks.harness``: ``time_interleaved`` (blocks alternate between the callables, settle calls are untimed) and the CPU line of results headers."""

import pytest

from benchmarks import harness


def test_time_interleaved_runs_blocks_in_turn():
    order = []

    def make(name):
        def call():
            order.append(name)
            return f"{name}{len(order)}"

        return call

    result = harness.time_interleaved({"a": make("a"), "b": make("b")}, rounds=2, per_round=3, settle=1)
    assert order == (["a"] * 4 + ["b"] * 4) * 2  # per round: a's block, then b's; 1 settle + 3 timed each
    assert set(result) == {"a", "b"}
    for name, last in (("a", "a12"), ("b", "b16")):
        assert result[name]["repeats"] == 6  # settle calls are not timed
        assert result[name]["output"] == last
        assert 0 <= result[name]["min_ms"] <= result[name]["median_ms"] <= result[name]["p90_ms"]


@pytest.mark.parametrize("kwargs, word", [({}, "calls"), ({"rounds": 0}, "rounds"), ({"per_round": 0}, "per_round"),
                                          ({"settle": -1}, "settle")])  # fmt: skip
def test_time_interleaved_rejects_bad_arguments(kwargs, word):
    calls = {} if word == "calls" else {"a": lambda: None}
    with pytest.raises(ValueError, match=word):
        harness.time_interleaved(calls, **kwargs)


def test_cpu_description_names_model_features_and_caches():
    cpuinfo = (
        "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n"
        "model name\t: Intel(R) Xeon(R) Platinum 8480+\n"
        "flags\t\t: fpu sse avx2 fma avx512f amx_tile amx_bf16 avx512_bf16\n"
    )
    text = harness.cpu_description(cpuinfo)
    assert text.startswith("Intel(R) Xeon(R) Platinum 8480+ (family 6, model 143); features ")
    features = text.split("; ")[1].split()[1:]
    assert features == ["avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"]  # _CPU_FEATURES' order
    assert "avx512_fp16" not in text


def test_cpu_description_without_features_says_so():
    text = harness.cpu_description("model name\t: Some CPU\nflags\t\t: fpu sse sse2\n")
    assert text.split("; ")[:2] == ["Some CPU", "features none of " + "/".join(harness._CPU_FEATURES)]


def test_environment_records_the_cpu():
    env = harness.environment()
    assert isinstance(env["cpu"], str) and env["cpu"]
    report = harness.markdown_report("t", {**env, "torch_threads": None}, "cmd", "p", {}, [])
    assert f"- cpu: {env['cpu']}" in report
