"""The flows benchmark suite runs end to end at tiny shapes and writes its results."""

import json

from benchmarks import bench_flows, run


def test_suite_is_registered():
    assert run.SUITES["flows"] == "benchmarks.bench_flows"


def test_quick_run_writes_results(tmp_path):
    assert bench_flows.main(["--quick", "--parts", "logdet", "--out", str(tmp_path)]) == 0
    jsonl, md = tmp_path / "flows-cpu.jsonl", tmp_path / "flows-cpu.md"
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert records[0]["record"] == "environment"
    results = records[1:]
    assert {r["section"] for r in results} == {"logdet"}
    assert all(r["check_ok"] for r in results)
    assert {r["impl"] for r in results if r["section"] == "logdet"} == {"lu", "slogdet"}
    assert "## LU log-det vs slogdet" in md.read_text()
