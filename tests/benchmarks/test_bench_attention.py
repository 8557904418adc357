"""`python -m benchmarks.bench_attention --quick`: every impl × mask, checked, written."""

import json

from benchmarks import bench_attention
from kernels.attention import IMPLEMENTATIONS


def test_quick_run_writes_checked_results(tmp_path):
    assert bench_attention.main(["--quick", "--out", str(tmp_path)]) == 0
    records = [json.loads(line) for line in (tmp_path / "attention-cpu.jsonl").read_text().splitlines()]
    assert records and all(r["check_ok"] for r in records)
    assert all(r["median_ms"] > 0 and r["useful_gflops_per_s"] > 0 for r in records)
    for section in bench_attention.PASSES:
        combos = {(r["impl"], r["mask"]) for r in records if r["section"] == section}
        assert combos == {(i, m) for i in IMPLEMENTATIONS for m in bench_attention.MASKS}
    md = (tmp_path / "attention-cpu.md").read_text()
    assert "## Masked attention: forward" in md and "## Masked attention: forward + backward" in md
    assert "GPU" in md


def test_allowed_pairs_counts():
    import numpy as np

    rng = np.random.default_rng(0)
    B, H, T = 2, 3, 8
    assert bench_attention.allowed_pairs(None, B, H, T) == B * H * T * T
    causal = bench_attention.make_mask("causal", B, T, rng)
    assert bench_attention.allowed_pairs(causal, B, H, T) == B * H * T * (T + 1) // 2
    perm = bench_attention.make_mask("permutation", B, T, rng)
    assert bench_attention.allowed_pairs(perm, B, H, T) == B * H * T * (T + 1) // 2
    prefix = bench_attention.make_mask("prefix_lm", B, T, rng)
    s = T // 2
    assert bench_attention.allowed_pairs(prefix, B, H, T) == B * H * (s * s + (T - s) * s + (T - s) * (T - s + 1) // 2)
