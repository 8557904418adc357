"""The flows benchmark suite runs end to end at tiny shapes and writes its results."""

import json

import numpy as np

import pytest

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


def test_seeds_option_parses_and_rejects_bad_lists():
    parse = bench_flows._parser().parse_args
    assert parse(["--seeds", "0,1,2"]).seeds == (0, 1, 2)
    assert parse([]).seeds == (0,)
    for bad in ("0,a", "1,1"):
        with pytest.raises(SystemExit):
            parse(["--seeds", bad])


def test_training_comparison_adds_a_mean_row_per_impl(monkeypatch):
    """One row per impl and seed, then per impl the mean and sample std of the seeds' test bpd."""
    bpd = {("zoo-jax", 0): 4.0, ("zoo-jax", 1): 4.2, ("normflows-torch", 0): 4.1, ("normflows-torch", 1): 4.5}

    def fake_run(args, torch_ok, seed):
        return [{"section": "train", "task": "t", "impl": impl, "seed": seed, "test_bpd": bpd[impl, seed],
                 "check_ok": True} for impl in ("zoo-jax", "normflows-torch")]  # fmt: skip

    monkeypatch.setattr(bench_flows, "_train_one_seed", fake_run)
    args = bench_flows._parser().parse_args(["--seeds", "0,1"])
    rows = bench_flows.bench_train(args, torch_ok=True)
    means = {r["impl"]: r for r in rows if r["seed"] == "mean"}
    assert len(rows) == 6 and set(means) == {"zoo-jax", "normflows-torch"}
    assert means["zoo-jax"]["test_bpd"] == pytest.approx(4.1)
    assert means["zoo-jax"]["test_bpd_std"] == pytest.approx(0.2 / 2**0.5)
    assert means["normflows-torch"]["test_bpd"] == pytest.approx(4.3)


def test_priors_option_reaches_the_zoo_config_and_row_name():
    parse = bench_flows._parser().parse_args
    args = parse([])
    assert bench_flows._glow_config(args).model.priors == "split2d" and bench_flows._zoo_impl(args) == "zoo-jax"
    args = parse(["--priors", "per_channel"])
    assert bench_flows._glow_config(args).model.priors == "per_channel"
    assert bench_flows._zoo_impl(args) == "zoo-jax (per_channel priors)"
    with pytest.raises(SystemExit):
        parse(["--priors", "learned"])


def test_step_gflop_counts_every_flow_step():
    """Each flow step adds the same FLOPs, so the count is affine in depth with a positive slope
    (counting a ``scan`` body once would make it flat)."""
    args = bench_flows._parser().parse_args(["--levels", "1", "--width", "8", "--batch", "2"])
    images = np.random.default_rng(0).integers(0, 256, size=(2, 4, 4, 1), dtype=np.uint8)
    flops = []
    for depth in (1, 2, 3):
        args.depth = depth
        flops.append(bench_flows.step_gflop(bench_flows._glow_config(args), images))
    assert flops[1] - flops[0] > 0
    assert flops[2] - flops[1] == pytest.approx(flops[1] - flops[0], rel=1e-6)
