"""The capsules benchmark suite runs end to end at tiny shapes and writes its results."""

import json

import pytest

from benchmarks import bench_capsules, run


def test_suite_is_registered():
    assert run.SUITES["capsules"] == "benchmarks.bench_capsules"


def test_quick_run_writes_results(tmp_path):
    try:
        import torch
    except ImportError:
        torch = None
    threads = torch.get_num_threads() if torch else None
    if torch:
        torch.set_num_threads(1)
    try:
        assert bench_capsules.main(["--quick", "--out", str(tmp_path)]) == 0
    finally:
        if torch:
            torch.set_num_threads(threads)

    jsonl, md = tmp_path / "capsules-cpu.jsonl", tmp_path / "capsules-cpu.md"
    assert jsonl.exists() and md.exists()
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert records[0]["record"] == "environment" and "torch_threads" in records[0]
    results = records[1:]
    assert all(r["check_ok"] for r in results)
    impls = {(r["task"], r["impl"]) for r in results}
    for task in ("dynamic_routing[sabour]", "dynamic_routing[su]", "em_routing"):
        assert {(task, "zoo-kernel"), (task, "reference")} <= impls
    for layer in ("primary-capsule conv 9x9 s2", "class capsules (votes + routing)"):
        assert sum(task == layer for task, _ in impls) == 2  # the zoo's path and the one it replaced
    for model in ("capsnet", "em_capsnet"):
        assert (f"{model} train step", "zoo-jax") in impls
        if torch:
            assert (f"{model} train step", "torch-eager") in impls
    text = md.read_text()
    assert "# Capsules benchmark" in text and "images/s" in text
    if torch:
        assert "zoo / torch" in text


@pytest.mark.parametrize("bad", [["--routing-shape", "2x3x4"], ["--parts", "bogus"], ["--repeats", "0"]])
def test_bad_flags_are_rejected(bad):
    with pytest.raises(SystemExit):
        bench_capsules.main(bad)
