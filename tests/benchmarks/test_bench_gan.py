"""`zoo bench gan --quick`: the step part runs both update modes and writes its tables."""

import json

from benchmarks import bench_gan


def test_quick_step_run_writes_results(tmp_path):
    assert bench_gan.main(["--quick", "--parts", "step", "--out", str(tmp_path)]) == 0
    records = [json.loads(line) for line in (tmp_path / "gan-cpu.jsonl").read_text().splitlines()]
    steps = {r["impl"]: r for r in records if r.get("section") == "step"}
    assert set(steps) == {"zoo-jax alternating", "zoo-jax single"}
    assert all(r["check_ok"] and r["median_ms"] > 0 and r["peak_mb"] > 0 for r in steps.values())
    assert "Single-loss step vs alternating" in (tmp_path / "gan-cpu.md").read_text()
