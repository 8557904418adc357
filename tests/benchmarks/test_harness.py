"""``benchmarks.harness.time_interleaved``: blocks alternate between the callables, settle calls are untimed."""

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
