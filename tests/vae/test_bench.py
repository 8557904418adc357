"""The VAE benchmark suite (zoo vs pythae) runs end to end at tiny sizes and writes its results."""

import json

import numpy as np

import pytest


def test_quick_run_writes_results(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("pythae")
    from benchmarks import bench_vae

    assert bench_vae.main(["--quick", "--out", str(tmp_path)]) == 0
    records = [json.loads(line) for line in (tmp_path / "vae-cpu.jsonl").read_text().splitlines()]
    assert records[0]["record"] == "environment" and records[0]["torch_threads"] == 1
    results = records[1:]
    assert {r["impl"] for r in results} == {"zoo-jax", "zoo-jax (device_put)", "pythae-torch"}
    # How the batch reaches the step changes its time, not what it computes.
    losses = {impl: [(r["final_train_loss"], r["test_nelbo"]) for r in results if r["section"] == "train" and r["impl"] == impl]
              for impl in ("zoo-jax", "zoo-jax (device_put)")}  # fmt: skip
    assert losses["zoo-jax"] == losses["zoo-jax (device_put)"]
    assert {r["section"] for r in results} == {"train", "summary"}
    assert all(r["check_ok"] and r["median_ms"] > 0 for r in results)
    assert all(r["num_params"] == results[0]["num_params"] for r in results if r["section"] == "train")
    md = (tmp_path / "vae-cpu.md").read_text()
    assert "## Summary" in md and "target (zoo test loss" in md and "placed by jax.device_put" in md


def test_table_quick_run_writes_a_row_per_model_and_data_set(tmp_path):
    from benchmarks import bench_vae_table, run

    assert run.SUITES["vae_table"] == "benchmarks.bench_vae_table"
    assert bench_vae_table.main(["--quick", "--models", "iwae5", "--datasets", "fashion", "--out", str(tmp_path)]) == 0
    records = [json.loads(line) for line in (tmp_path / "vae-table-cpu.jsonl").read_text().splitlines()][1:]
    assert [(r["model"], r["dataset"], r["check_ok"]) for r in records] == [("iwae5", "fashion", True)]
    assert np.isfinite(records[0]["test_iwae2"]) and records[0]["steps"] == 3
    assert (tmp_path / "grids" / "iwae5-fashion-samples.png").exists()
    assert "## Test bounds after a fixed budget" in (tmp_path / "vae-table-cpu.md").read_text()
    with pytest.raises(SystemExit, match="unknown \\['gan'\\]"):
        bench_vae_table.main(["--models", "gan"])
