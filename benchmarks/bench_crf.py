"""Linear-chain CRF: this zoo's ``kernels.crf`` against pytorch-crf and torch-struct.

Two tasks per shape ``(B, T, K)``, every sequence full length (``lengths = T``), zero
start/end scores in every implementation, identical float32 inputs from one numpy seed:

* ``nll_fwd_bwd``: mean-over-batch negative log-likelihood of gold tags, its gradient
  w.r.t. emissions ``[B, T, K]`` and transitions ``[K, K]`` (one training step's CRF work).
* ``viterbi``: best tag path ``[B, T]`` per sequence.

Before timing, every implementation's output is checked against a float64 numpy oracle
written here independently of ``kernels/crf.py``: the NLL (relative error) and both
gradients for ``nll_fwd_bwd``; for ``viterbi`` the float64 score of the decoded path
against the best score (equal paths give a gap of 0; a tiny gap would be a near-tie).

Run: ``python -m benchmarks.run crf [--repeats N] [--warmup N] [--shapes 32x50x9,...] [--quick]``.
Writes ``benchmarks/results/crf-<platform>.jsonl`` and ``.md`` (overwritten each run).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from kernels.crf import crf_log_likelihood, crf_viterbi

DEFAULT_SHAPES = ((32, 50, 9), (64, 256, 9), (8, 1024, 4))
RESULTS_DIR = harness.RESULTS_DIR
NLL_RTOL = 1e-3  # relative error allowed on the NLL
PATH_RTOL = 1e-5  # relative score gap allowed for a decoded path (float32 near-ties)
GRAD_RTOL = 1e-2  # gradients: pytorch-crf's unshifted float32 forward-backward reaches ~1e-3 at T=1024
BUSY_CORES = 0.2  # cores used by other processes above which a shape's timings are flagged
# Speed-ups of the zoo's scan kernel over pytorch-crf that the zoo promises (README).
TARGETS = {"nll_fwd_bwd": 10.0, "viterbi": 20.0}


# --------------------------------------------------------------------------- #
# Inputs and the float64 oracle
# --------------------------------------------------------------------------- #


def make_inputs(b: int, t: int, k: int, seed: int = 0) -> dict:
    """Random float32 problem: emissions [B,T,K] ~ N(0,1), transitions [K,K] ~ N(0,0.5²),
    gold tags [B,T] uniform in 0..K-1, lengths [B] = T (no padding)."""
    rng = np.random.default_rng(seed)
    return {
        "emissions": rng.standard_normal((b, t, k)).astype(np.float32),
        "transitions": (0.5 * rng.standard_normal((k, k))).astype(np.float32),
        "tags": rng.integers(0, k, (b, t)).astype(np.int64),
        "lengths": np.full((b,), t, np.int64),
    }


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def path_scores(emissions: np.ndarray, transitions: np.ndarray, tags: np.ndarray) -> np.ndarray:
    """float64 score [B] of full-length paths tags [B,T] (zero start/end)."""
    e = emissions.astype(np.float64)
    tr = transitions.astype(np.float64)
    emit = np.take_along_axis(e, tags[..., None], axis=-1)[..., 0].sum(axis=1)
    return emit + tr[tags[:, :-1], tags[:, 1:]].sum(axis=1)


def oracle(emissions: np.ndarray, transitions: np.ndarray, tags: np.ndarray) -> dict:
    """float64 forward algorithm and Viterbi, vectorised over the batch.

    Returns dict with ``nll`` (mean over batch), ``grad_emissions`` [B,T,K] (marginals
    minus gold one-hots, / B), ``grad_transitions`` [K,K] and ``best_score`` [B].
    """
    e = emissions.astype(np.float64)
    tr = transitions.astype(np.float64)
    b, t, k = e.shape
    alpha = np.empty((b, t, k))
    beta = np.zeros((b, t, k))
    delta = e[:, 0]
    alpha[:, 0] = e[:, 0]
    for i in range(1, t):
        alpha[:, i] = _logsumexp(alpha[:, i - 1, :, None] + tr, axis=1) + e[:, i]
        delta = np.max(delta[:, :, None] + tr, axis=1) + e[:, i]
    for i in range(t - 2, -1, -1):
        beta[:, i] = _logsumexp(tr + (e[:, i + 1] + beta[:, i + 1])[:, None, :], axis=2)
    log_z = _logsumexp(alpha[:, -1], axis=1)  # [B]
    marg = np.exp(alpha + beta - log_z[:, None, None])  # [B,T,K]
    # Pair marginals P(y_i = p, y_{i+1} = q), summed over positions and batch.
    pair = np.exp(
        alpha[:, :-1, :, None] + tr + (e[:, 1:] + beta[:, 1:])[:, :, None, :] - log_z[:, None, None, None]
    ).sum(axis=(0, 1))
    gold = np.eye(k)[tags]  # [B,T,K]
    gold_pairs = np.zeros((k, k))
    np.add.at(gold_pairs, (tags[:, :-1], tags[:, 1:]), 1.0)
    return {
        "nll": float(np.mean(log_z - path_scores(emissions, transitions, tags))),
        "grad_emissions": (marg - gold) / b,
        "grad_transitions": (pair - gold_pairs) / b,
        "best_score": np.max(delta, axis=1),
    }


def _rel(x, ref) -> float:
    """max |x - ref| / max(max |ref|, 1e-12): one relative error for a whole array."""
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(x - ref)) / max(float(np.max(np.abs(ref))), 1e-12))


def check_nll(output, ref: dict) -> dict:
    """Compares (nll, grad_emissions, grad_transitions) with the oracle."""
    nll, g_em, g_tr = (np.asarray(o, np.float64) for o in output)
    errs = {
        "nll": float(nll),
        "nll_rel_err": abs(float(nll) - ref["nll"]) / abs(ref["nll"]),
        "grad_em_rel_err": _rel(g_em, ref["grad_emissions"]),
        "grad_tr_rel_err": _rel(g_tr, ref["grad_transitions"]),
    }
    errs["check_ok"] = errs["nll_rel_err"] <= NLL_RTOL and max(errs["grad_em_rel_err"], errs["grad_tr_rel_err"]) <= GRAD_RTOL
    return errs


def check_paths(paths, inputs: dict, ref: dict) -> dict:
    """Scores decoded paths [B,T] in float64 and compares with the best score."""
    paths = np.asarray(paths, np.int64)
    scores = path_scores(inputs["emissions"], inputs["transitions"], paths)
    gap = float(np.max((ref["best_score"] - scores) / np.abs(ref["best_score"])))
    return {"score_rel_gap": gap, "check_ok": gap <= PATH_RTOL}


# --------------------------------------------------------------------------- #
# This zoo (JAX)
# --------------------------------------------------------------------------- #


def zoo_nll_step(method: str):
    """(emissions, transitions, lengths, tags) -> (nll, (d/d emissions, d/d transitions))."""

    def loss(emissions, transitions, lengths, tags):
        return -jnp.mean(crf_log_likelihood(emissions, transitions, lengths, tags, method=method))

    return jax.value_and_grad(loss, argnums=(0, 1))


def zoo_viterbi(emissions, transitions, lengths):
    """Best paths [B,T] int32 and their scores [B]."""
    return crf_viterbi(emissions, transitions, lengths)


def bench_zoo(inputs: dict, ref: dict, warmup: int, repeats: int) -> list[dict]:
    """Times the scan and associative NLL steps and Viterbi; one record each."""
    em, tr = jnp.asarray(inputs["emissions"]), jnp.asarray(inputs["transitions"])
    lengths = jnp.asarray(inputs["lengths"], jnp.int32)
    tags = jnp.asarray(inputs["tags"], jnp.int32)
    records = []
    for method in ("scan", "associative"):
        r = harness.time_jax(zoo_nll_step(method), em, tr, lengths, tags, warmup=warmup, repeats=repeats)
        nll, (g_em, g_tr) = r.pop("output")
        records.append({"task": "nll_fwd_bwd", "impl": f"zoo-{method}", **r, **check_nll((nll, g_em, g_tr), ref)})
    r = harness.time_jax(zoo_viterbi, em, tr, lengths, warmup=warmup, repeats=repeats)
    paths, _ = r.pop("output")
    records.append({"task": "viterbi", "impl": "zoo-scan", **r, **check_paths(paths, inputs, ref), "_paths": paths})
    return records


# --------------------------------------------------------------------------- #
# Peers (PyTorch)
# --------------------------------------------------------------------------- #


def struct_potentials(torch, emissions, transitions):
    """torch-struct log-potentials [B, T-1, K_to, K_from] of our CRF.

    ``pot[b, n, j, i] = transitions[i, j] + emissions[b, n+1, j]``, and the first
    position's emissions ``emissions[b, 0, i]`` are folded into step 0.
    """
    pot = emissions[:, 1:, :, None] + transitions.t()[None, None]
    first = pot[:, :1] + emissions[:, :1, None, :]
    return torch.cat([first, pot[:, 1:]], dim=1).contiguous()


def struct_tags(parts):
    """Edge one-hots [B, T-1, K_to, K_from] -> tags [B, T] (vectorised from_parts)."""
    first = parts[:, 0].sum(dim=1).argmax(dim=-1)  # the "from" tag of step 0
    rest = parts.sum(dim=3).argmax(dim=-1)  # the "to" tag of every step
    return np.concatenate([first[:, None].numpy(), rest.numpy()], axis=1)


def bench_peers(inputs: dict, ref: dict, warmup: int, repeats: int) -> list[dict]:
    """Times pytorch-crf and torch-struct on the same problem; one record per task and peer."""
    import torch
    import torch_struct
    import torchcrf

    b, t, k = inputs["emissions"].shape
    em = torch.tensor(inputs["emissions"], requires_grad=True)
    tags = torch.tensor(inputs["tags"])
    lengths = torch.tensor(inputs["lengths"])
    # A bool mask, as a padded batch would pass; mask=None makes pytorch-crf build a
    # deprecated uint8 mask on every call.
    mask = torch.arange(t)[None, :] < lengths[:, None]
    crf = torchcrf.CRF(k, batch_first=True)
    with torch.no_grad():
        crf.transitions.copy_(torch.tensor(inputs["transitions"]))
        crf.start_transitions.zero_()
        crf.end_transitions.zero_()
    tr = torch.tensor(inputs["transitions"], requires_grad=True)
    parts = torch_struct.LinearChainCRF.struct.to_parts(tags, k, lengths=lengths)  # once, outside timing

    def torchcrf_nll():
        em.grad = None
        crf.zero_grad()
        loss = -crf(em, tags, mask=mask, reduction="mean")
        loss.backward()
        return loss.item(), em.grad, crf.transitions.grad

    def struct_nll():
        em.grad = tr.grad = None
        dist = torch_struct.LinearChainCRF(struct_potentials(torch, em, tr), lengths=lengths)
        loss = -dist.log_prob(parts).mean()
        loss.backward()
        return loss.item(), em.grad, tr.grad

    def torchcrf_decode():
        with torch.no_grad():
            return crf.decode(em, mask=mask)

    def struct_decode():
        # argmax differentiates a max-semiring pass internally, so it needs autograd on.
        dist = torch_struct.LinearChainCRF(struct_potentials(torch, em.detach(), tr.detach()), lengths=lengths)
        return struct_tags(dist.argmax.detach())

    records = []
    for task, impl, fn, check in (
        ("nll_fwd_bwd", "pytorch-crf", torchcrf_nll, lambda o: check_nll(_np(o), ref)),
        ("nll_fwd_bwd", "torch-struct", struct_nll, lambda o: check_nll(_np(o), ref)),
        ("viterbi", "pytorch-crf", torchcrf_decode, lambda o: check_paths(o, inputs, ref)),
        ("viterbi", "torch-struct", struct_decode, lambda o: check_paths(o, inputs, ref)),
    ):
        # Checked on an extra, untimed call: the timed loop stays free of conversions.
        output = fn()
        verdict = check(output)
        if task == "viterbi":
            verdict["_paths"] = output  # compared with the zoo's in add_ratios, then dropped
        r = harness.time_callable(fn, warmup=warmup, repeats=repeats)
        r.pop("output")
        records.append({"task": task, "impl": impl, **r, **verdict})
    return records


def _np(output):
    return tuple(o.detach().numpy() if hasattr(o, "detach") else o for o in output)


def _torch_available() -> str | None:
    """None if the peers import, else the reason they do not."""
    try:
        import torch  # noqa: F401
        import torch_struct  # noqa: F401
        import torchcrf  # noqa: F401
    except ImportError as exc:
        return f"{exc} (pip install torch==2.13.0, then the project's [peers] extra)"
    return None


# --------------------------------------------------------------------------- #
# Driver
# --------------------------------------------------------------------------- #


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    """"32x50x9,8x1024x4" -> [(32, 50, 9), (8, 1024, 4)]."""
    shapes = []
    for item in text.split(","):
        dims = item.strip().lower().split("x")
        if len(dims) != 3 or not all(d.isdigit() and int(d) > 0 for d in dims):
            raise argparse.ArgumentTypeError(f"shape {item!r} is not BxTxK with positive integers")
        if int(dims[1]) < 2:
            raise argparse.ArgumentTypeError(f"shape {item!r}: torch-struct needs T >= 2")
        shapes.append(tuple(int(d) for d in dims))
    return shapes


def add_ratios(records: list[dict]) -> None:
    """Per shape and task: tokens/s, ``zoo_speedup`` = this time / zoo-scan time, and the
    agreement with zoo-scan's output (NLL relative difference, or share of equal paths)."""
    for r in records:
        r["tokens_per_s"] = r["B"] * r["T"] / (r["median_ms"] / 1e3)
        base = next(
            x for x in records if x["impl"] == "zoo-scan" and x["task"] == r["task"] and x["shape"] == r["shape"]
        )
        r["zoo_speedup"] = r["median_ms"] / base["median_ms"]
        if r["task"] == "nll_fwd_bwd":
            r["nll_diff_vs_zoo"] = abs(r["nll"] - base["nll"]) / abs(base["nll"])
            r["check_ok"] = r["check_ok"] and r["nll_diff_vs_zoo"] <= NLL_RTOL
        else:
            same = np.all(np.asarray(r["_paths"]) == np.asarray(base["_paths"]), axis=1)
            r["paths_equal_zoo"] = float(np.mean(same))
    for r in records:
        r.pop("_paths", None)


def summary_lines(records: list[dict]) -> list[str]:
    """Human-readable ratios per shape and task, with the promised targets."""
    lines = []
    for r in records:
        if r["impl"] in ("pytorch-crf", "torch-struct"):
            line = f"{r['shape']} {r['task']}: {r['impl']} / zoo-scan = {r['zoo_speedup']:.1f}x"
            if r["impl"] == "pytorch-crf" and r["shape"] == "32x50x9":
                target = TARGETS[r["task"]]
                line += f" (target >= {target:g}x: {'met' if r['zoo_speedup'] >= target else 'MISSED'})"
            lines.append(line)
    return lines


COLUMNS = [
    ("shape", "B×T×K"), ("task", "task"), ("impl", "implementation"), ("median_ms", "median ms"),
    ("p90_ms", "p90 ms"), ("compile_ms", "compile ms"), ("tokens_per_s", "tokens/s"),
    ("zoo_speedup", "time / zoo-scan"), ("check_ok", "check"), ("nll_rel_err", "NLL rel err"),
    ("grad_em_rel_err", "∂emis rel err"), ("nll_diff_vs_zoo", "NLL diff vs zoo"), ("score_rel_gap", "path score gap"),
    ("paths_equal_zoo", "paths = zoo's"), ("other_cpu_cores", "other cores"),
]


def write_markdown(path: pathlib.Path, env: dict, command: str, records: list[dict], notes: list[str]) -> None:
    """Results table plus everything needed to reproduce or doubt it."""
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    text = [
        "# CRF benchmark",
        "",
        f"- command: `{command}`",
        *harness.machine_lines(env),
        f"- versions: {versions}",
        f"- git revision: {env['git_rev']}; torch threads: {env['torch_threads']}; "
        f"1-min load average: {env['load_avg_1m']} at start, {env['load_avg_1m_end']} at end "
        "('other cores' below: CPU used by other processes while a shape was timed)",
        f"- memory: {env['huge_pages']}",
        f"- protocol: {records[0]['repeats'] if records else '?'} timed calls after warm-up; median and p90 wall time; "
        "JAX calls end in block_until_ready; compile time measured separately. "
        "'time / zoo-scan' > 1 means the zoo's scan kernel is that many times faster.",
        f"- checks: vs a float64 numpy oracle: NLL rel err <= {NLL_RTOL:g}, gradients' max-abs rel err <= "
        f"{GRAD_RTOL:g}; decoded paths scored in float64 vs the best score (gap <= {PATH_RTOL:g}).",
        "",
        harness.markdown_table(records, COLUMNS),
        "",
        *(f"- {n}" for n in notes),
        "",
    ]
    path.write_text("\n".join(text))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run crf", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per measurement (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls before timing (default 5)")
    parser.add_argument("--shapes", type=parse_shapes, default=list(DEFAULT_SHAPES), help="e.g. 32x50x9,8x1024x4")
    parser.add_argument("--quick", action="store_true", help="smoke test: 3 repeats, 1 warm-up")
    parser.add_argument(
        "--torch-threads", type=int, default=os.cpu_count() or 1,
        help="torch.set_num_threads for the peers (default: all CPUs)",
    )
    parser.add_argument("--out-dir", type=pathlib.Path, default=RESULTS_DIR, help="where results go")
    return parser


def _setup_torch(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    # Known harmless chatter of the peers (torch-struct's missing arg_constraints,
    # old torch idioms inside pytorch-crf).
    for module in ("torchcrf", "torch_struct", "torch"):
        warnings.filterwarnings("ignore", category=UserWarning, module=module)


def run_shape(b: int, t: int, k: int, args, with_peers: bool) -> list[dict]:
    """All rows of one shape, each tagged with the shape and the CPU used by other processes."""
    inputs = make_inputs(b, t, k)
    ref = oracle(inputs["emissions"], inputs["transitions"], inputs["tags"])
    with harness.OtherCpuLoad() as others:
        rows = bench_zoo(inputs, ref, args.warmup, args.repeats)
        if with_peers:
            rows += bench_peers(inputs, ref, args.warmup, args.repeats)
    tag = {"record": "result", "suite": "crf", "shape": f"{b}x{t}x{k}", "B": b, "T": t, "K": k}
    rows = [{**tag, **r, "warmup": args.warmup, "other_cpu_cores": others.cores} for r in rows]
    for r in rows:
        print(f"{r['shape']:>10} {r['task']:<12} {r['impl']:<16} {r['median_ms']:9.3f} ms  "
              f"p90 {r['p90_ms']:9.3f}  vs oracle {'ok' if r['check_ok'] else 'FAILED'}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Runs the suite; returns 0, or 1 if any implementation failed its correctness check."""
    args = _parser().parse_args(argv)
    if args.quick:
        args.repeats, args.warmup = 3, 1
    missing = _torch_available()
    if missing is None:
        _setup_torch(args.torch_threads)
    env = harness.environment()
    env["torch_threads"] = args.torch_threads if missing is None else None
    command = harness.command_line()
    notes = [] if missing is None else [f"peers not importable, zoo rows only: {missing}"]
    print(f"# {env['device_kind']} ({env['platform']}), git {env['git_rev']}; {notes[0] if notes else 'with peers'}")

    records = [row for b, t, k in args.shapes for row in run_shape(b, t, k, args, missing is None)]
    add_ratios(records)
    env["load_avg_1m_end"] = harness.load_average()
    notes += summary_lines(records)
    busy = sorted({r["shape"] for r in records if (r["other_cpu_cores"] or 0) > BUSY_CORES})
    if busy:
        notes.append(f"WARNING: other processes kept > {BUSY_CORES} cores busy while timing {', '.join(busy)}: "
                     "those timings (PyTorch's especially) are unreliable; rerun on a quiet machine")
    failed = [f"{r['shape']} {r['task']} {r['impl']}" for r in records if not r["check_ok"]]
    if failed:
        notes.append("CORRECTNESS CHECK FAILED: " + "; ".join(failed))
    print("\n".join(notes))

    stem = args.out_dir / f"crf-{env['platform']}"
    harness.write_jsonl(stem.with_suffix(".jsonl"), [{"record": "environment", "command": command, **env}] + records)
    write_markdown(stem.with_suffix(".md"), env, command, records, notes)
    print(f"wrote {stem}.jsonl and {stem}.md")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
