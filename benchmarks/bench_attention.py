"""Masked attention: ``kernels.attention.masked_attention`` per implementation × mask kind.

For each ``impl`` in ``("reference", "xla")`` (:data:`kernels.attention.IMPLEMENTATIONS`; on a GPU
also ``"cudnn"`` and ``"pallas"``), each mask kind and each shape ``(B, H, T, D)`` (float32,
``q, k, v`` laid out ``[B, T, H, D]``):

* ``fwd``: ``jax.jit(lambda q, k, v, m: masked_attention(q, k, v, mask=m, impl=impl))``;
* ``fwd+bwd``: ``jax.jit(jax.grad(lambda q, k, v, m: masked_attention(...).sum(), (0, 1, 2)))``
  (value not returned, the three gradients are).

The mask is an *argument* of the jitted function (not a constant XLA could fold). Mask kinds:

* ``none``: no mask;
* ``causal``: :func:`causal_mask` ``[1, 1, T, T]``;
* ``prefix_lm``: :func:`unilm_mask` with segment ids ``0`` for the first ``T // 2`` positions
  (the source) and ``1`` after (the target), per example;
* ``permutation``: :func:`permutation_mask` of a random permutation per example
  (``include_self=True``);
* ``padding``: :func:`padding_mask` of random lengths in ``[T // 2, T]`` per example (keys only).

GPU implementations (rows by default when the platform is GPU):

* ``cudnn``: ``masked_attention(impl="cudnn")`` with the same dense mask, on **bfloat16** inputs
  (cuDNN's fused attention takes no float32), checked against the reference on the same bfloat16
  inputs with tolerance ``max(--tol, 2e-2)``;
* ``pallas``: :func:`kernels.flash_attention.flash_attention` with the *structured* form of the
  mask (``causal=True``; ``prefix_lm``: ``prefix_lengths = T // 2``; ``padding``: ``key_lengths``;
  the lengths are jit arguments) — it skips fully masked key blocks. ``permutation`` has no
  structured form: no pallas row. Off GPU, ``--impls pallas`` runs in Pallas interpret mode and
  only with ``--quick`` (a correctness smoke run; its timings mean nothing).

Before timing, every implementation is compared with the reference on the same inputs (the
reference is computed for the check even when it is not among ``--impls``): max abs difference
of the outputs and of the three gradients must be ``< --tol`` (1e-4); ``check_ok`` is recorded
on every float32 row of the case (one failing implementation fails them all); cudnn rows have
their own check. Timing: :func:`benchmarks.harness.time_jax` (trace+lower and compile reported on their
own, then ``--warmup`` untimed and ``--repeats`` timed calls; median and p90 in ms).

"Useful" FLOPs count only allowed (query, key) pairs: forward = ``4 · D · Σ_{b,h} allowed(b, h)``
(2·D for the ``q·k`` dot product and 2·D for the ``p·v`` accumulation per allowed pair; softmax,
masking and scaling not counted); forward+backward = 3 × forward (backward = 2 × forward:
``dq, dk, dv, dp`` are four such products against the forward's two). A dense implementation
does the full ``T²`` work whatever the mask, so its useful GFLOP/s drops with sparser masks;
that gap is what a block-sparse (Pallas / cuDNN) kernel would recover.

``xla/ref`` is the time ratio ``median(xla) / median(reference)`` for the same shape, mask and
pass (below 1: xla is faster).

Run: ``python -m benchmarks.bench_attention [--shapes 4x4x256x64,2x4x1024x64] [--masks ...]
[--impls ...] [--repeats N] [--warmup N] [--quick] [--out DIR]`` (e.g. ``--quick --impls
reference,pallas`` on CPU).
Writes ``benchmarks/results/attention-<platform>.{jsonl,md}`` (``--quick``: tiny shapes, 2
repeats, a temporary folder unless ``--out``).
"""

from __future__ import annotations

import argparse
import pathlib
import shlex
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from kernels import attention as attn
from kernels import flash_attention as flash

RESULTS_DIR = harness.RESULTS_DIR
MASKS = ("none", "causal", "prefix_lm", "permutation", "padding")
DEFAULT_SHAPES = ((4, 4, 256, 64), (2, 4, 1024, 64))
QUICK_SHAPES = ((1, 2, 32, 8),)
PASSES = ("fwd", "fwd+bwd")
GPU_IMPLS = ("cudnn", "pallas")
CUDNN_DTYPE, CUDNN_TOL = jnp.bfloat16, 2e-2
BWD_FACTOR = 3.0  # forward + backward useful FLOPs = (1 + 2) × forward


def make_mask(kind: str, B: int, T: int, rng: np.random.Generator):
    """The bool mask of ``kind`` for batch ``B`` and length ``T`` (``None`` for ``"none"``)."""
    if kind == "none":
        return None
    if kind == "causal":
        return attn.causal_mask(T)
    if kind == "prefix_lm":
        seg = np.broadcast_to((np.arange(T) >= T // 2).astype(np.int32), (B, T))
        return attn.unilm_mask(jnp.asarray(seg))
    if kind == "permutation":
        perm = np.stack([rng.permutation(T) for _ in range(B)]).astype(np.int32)
        return attn.permutation_mask(jnp.asarray(perm))
    if kind == "padding":
        return attn.padding_mask(jnp.asarray(rng.integers(T // 2, T + 1, B), jnp.int32), T)
    raise ValueError(f"unknown mask kind {kind!r}; expected one of {MASKS}")


def allowed_pairs(mask, B: int, H: int, T: int) -> int:
    """``Σ_{b,h}`` of allowed (query, key) pairs (``B·H·T²`` without a mask)."""
    if mask is None:
        return B * H * T * T
    m = np.asarray(mask)
    per = np.broadcast_to(m, (m.shape[0] if m.shape[0] > 1 else B, 1, T, T)).sum(axis=(1, 2, 3))
    per = np.broadcast_to(per, (B,))
    return int(per.sum()) * H


def make_fns(impl: str, with_mask: bool):
    """Jittable ``fwd(q, k, v[, m])`` and ``fwd+bwd(q, k, v[, m]) -> (dq, dk, dv)``."""
    if with_mask:
        def fwd(q, k, v, m):
            return attn.masked_attention(q, k, v, mask=m, impl=impl)
    else:
        def fwd(q, k, v):
            return attn.masked_attention(q, k, v, mask=None, impl=impl)

    grad = jax.grad(lambda *a: fwd(*a).sum(), argnums=(0, 1, 2))
    return {"fwd": fwd, "fwd+bwd": grad}


def pallas_structure(kind: str, mask, B: int, T: int):
    """``(causal, {name: lengths [B]})``: the structured form of mask ``kind`` for
    :func:`flash_attention`, or ``None`` when it has none (``permutation``)."""
    if kind == "none":
        return False, {}
    if kind == "causal":
        return True, {}
    if kind == "prefix_lm":  # make_mask's source is the first T // 2 positions of every example
        return True, {"prefix_lengths": jnp.full((B,), T // 2, jnp.int32)}
    if kind == "padding":
        return False, {"key_lengths": jnp.asarray(np.asarray(mask)[:, 0, 0, :].sum(-1), jnp.int32)}
    return None


def make_pallas_fns(causal: bool, names: tuple[str, ...]):
    """Jittable ``fwd(q, k, v, *lengths)`` and its ``fwd+bwd`` for the Pallas kernel."""
    def fwd(q, k, v, *lengths):
        return flash.flash_attention(q, k, v, causal=causal, **dict(zip(names, lengths)))

    grad = jax.grad(lambda *a: fwd(*a).sum(), argnums=(0, 1, 2))
    return {"fwd": fwd, "fwd+bwd": grad}


def _max_abs_diff(a, b) -> float:
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def run_case(args, shape, kind, rng) -> list[dict]:
    B, H, T, D = shape
    kq, kk, kv = jax.random.split(jax.random.PRNGKey(sum(shape)), 3)
    q, k, v = (jax.random.normal(key, (B, T, H, D), jnp.float32) for key in (kq, kk, kv))
    mask = make_mask(kind, B, T, rng)
    inputs = (q, k, v) if mask is None else (q, k, v, mask)
    pairs = allowed_pairs(mask, B, H, T)
    fwd_gflop = 4.0 * D * pairs / 1e9
    # Per impl: its functions, its inputs, and the inputs of the reference it is checked against.
    fns, impl_inputs, ref_inputs = {}, {}, {}
    for impl in args.impls:
        if impl == "pallas":
            structure = pallas_structure(kind, mask, B, T)
            if structure is None:
                print(f"skipped  pallas    {kind:11s} (no structured form of this mask)", flush=True)
                continue
            causal, lengths = structure
            fns[impl] = make_pallas_fns(causal, tuple(lengths))
            impl_inputs[impl], ref_inputs[impl] = (q, k, v, *lengths.values()), inputs
        elif impl == "cudnn":
            low = tuple(x.astype(CUDNN_DTYPE) for x in (q, k, v))
            fns[impl] = make_fns(impl, mask is not None)
            impl_inputs[impl] = ref_inputs[impl] = low if mask is None else (*low, mask)
        else:
            fns[impl] = make_fns(impl, mask is not None)
            impl_inputs[impl], ref_inputs[impl] = inputs, inputs
    reference = make_fns("reference", mask is not None)

    # Correctness first: every impl against the reference, outputs and gradients. The check runs
    # through fresh wrappers so that time_jax's compile below is not a cache hit (0 ms).
    def _check(f, xs):
        return jax.jit(lambda *a: f(*a))(*xs)

    def _as_f32(tree):
        return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)

    diffs, finite, wants = {}, {}, {}
    for impl in fns:
        key = id(ref_inputs[impl])
        if key not in wants:
            wants[key] = {p: _as_f32(_check(reference[p], ref_inputs[impl])) for p in PASSES}
        want = wants[key]
        got = want if impl == "reference" else {p: _as_f32(_check(fns[impl][p], impl_inputs[impl])) for p in PASSES}
        diffs[impl] = {p: _max_abs_diff(got[p], want[p]) for p in PASSES}
        finite[impl] = bool(all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves((want, got))))
    dense = [i for i in fns if i != "cudnn"]  # float32 rows share one check, as before
    check_diff = max((d for i in dense for d in diffs[i].values()), default=None)
    check_ok = check_diff is not None and check_diff < args.tol and all(finite[i] for i in dense)

    rows = []
    for impl in fns:
        own_diff, own_ok = check_diff, check_ok
        if impl == "cudnn":
            own_diff = max(diffs[impl].values())
            own_ok = own_diff < max(args.tol, CUDNN_TOL) and finite[impl]
        for p in PASSES:
            with harness.OtherCpuLoad() as load:
                t = harness.time_jax(fns[impl][p], *impl_inputs[impl], warmup=args.warmup, repeats=args.repeats)
            t.pop("output")
            gflop = fwd_gflop * (1.0 if p == "fwd" else BWD_FACTOR)
            rows.append({
                "section": p, "impl": impl, "mask": kind, "B": B, "H": H, "T": T, "D": D,
                "dtype": "bfloat16" if impl == "cudnn" else "float32",
                "density": pairs / (B * H * T * T), "useful_gflop": gflop, **t,
                "useful_gflops_per_s": gflop / (t["median_ms"] / 1e3),
                "max_abs_diff": diffs.get(impl, {}).get(p), "check_max_abs_diff": own_diff,
                "check_ok": own_ok, "other_cpu_cores": load.cores,
            })
            print(f"{p:8s} {impl:9s} {kind:11s} B{B} H{H} T{T} D{D}  median {t['median_ms']:9.2f} ms  "
                  f"compile {t['compile_ms']:7.0f} ms  {rows[-1]['useful_gflops_per_s']:7.2f} useful GFLOP/s  "
                  f"check {'ok' if own_ok else 'FAILED'}", flush=True)
    ref = {r["section"]: r["median_ms"] for r in rows if r["impl"] == "reference"}
    xla = {r["section"]: r["median_ms"] for r in rows if r["impl"] == "xla"}
    for r in rows:
        s = r["section"]
        r["xla_over_reference"] = xla[s] / ref[s] if s in ref and s in xla else None
    return rows


def _shape(text: str) -> tuple[int, int, int, int]:
    try:
        shape = tuple(int(x) for x in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"a shape is BxHxTxD with positive ints, e.g. 2x4x1024x64; got {text!r}")
    return shape


def _choices(allowed):
    def parse(text):
        items = [s for s in text.split(",") if s]
        bad = sorted(set(items) - set(allowed))
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {','.join(allowed)}; got {text!r}")
        return tuple(dict.fromkeys(items))
    return parse


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_attention", description=__doc__.splitlines()[0])
    p.add_argument("--shapes", type=lambda s: tuple(_shape(x) for x in s.split(",") if x), default=DEFAULT_SHAPES,
                   help="comma-separated BxHxTxD (default 4x4x256x64,2x4x1024x64)")
    p.add_argument("--masks", type=_choices(MASKS), default=MASKS, help=f"comma-separated subset of {','.join(MASKS)}")
    p.add_argument("--impls", type=_choices(attn.ALL_IMPLEMENTATIONS), default=None,
                   help=f"comma-separated subset of {','.join(attn.ALL_IMPLEMENTATIONS)} (default: "
                        f"{','.join(attn.IMPLEMENTATIONS)}, plus {','.join(GPU_IMPLS)} on a GPU; off GPU cudnn is "
                        "refused and pallas runs in interpret mode, with --quick only)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--tol", type=float, default=1e-4, help="max abs diff xla vs reference (outputs and grads)")
    p.add_argument("--seed", type=int, default=0, help="for the random permutations and padding lengths")
    p.add_argument("--quick", action="store_true", help="tiny shapes (1x2x32x8), 2 repeats; a temporary folder unless --out")
    p.add_argument("--out", type=pathlib.Path, default=None, help=f"results folder (default {RESULTS_DIR})")
    return p


NOTES = [
    "useful GFLOP/s counts only allowed (query, key) pairs: forward 4·D·Σ_{b,h} allowed pairs "
    "(q·k and p·v, 2·D each); fwd+bwd = 3 × forward (backward = 2 × forward). Softmax, mask and scale "
    "are not counted. reference and xla are dense (full T² work whatever the mask), so a "
    "sparser mask (lower density) lowers their useful GFLOP/s.",
    "xla/ref = median(xla) / median(reference) for the same shape, mask and pass; < 1 means xla is faster.",
    "check: outputs and dq, dk, dv of every impl against reference on the same inputs, max abs diff < tol "
    "(float32); recorded on every float32 row of the case (cudnn rows: their own check, see below).",
    "masks: causal [1,1,T,T]; prefix_lm = unilm_mask with source length T//2 per example; permutation = "
    "permutation_mask of a random permutation per example (include_self); padding = padding_mask of random "
    "lengths in [T//2, T] per example (keys only). The mask is a jit argument, not a folded constant.",
    "cudnn and pallas rows are GPU rows (default there): cudnn = masked_attention(impl='cudnn') on bfloat16 "
    "inputs, checked against the reference on the same inputs with tol max(tol, 2e-2); pallas = "
    "kernels.flash_attention.flash_attention with the structured mask (causal / prefix_lengths = T//2 / "
    "key_lengths; no permutation row), which skips fully masked key blocks, so its useful GFLOP/s need "
    "not drop with the density. Off GPU pallas runs only in Pallas interpret mode (--quick): timings "
    "meaningless.",
    "other CPU = cores kept busy by other processes during the timing (harness.OtherCpuLoad); "
    "well above 0 means the timings competed for the CPUs.",
]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser()
    args = parser.parse_args(argv)
    on_gpu = jax.default_backend() == "gpu"
    if args.impls is None:
        args.impls = attn.IMPLEMENTATIONS + (GPU_IMPLS if on_gpu else ())
    if not on_gpu and "cudnn" in args.impls:
        parser.error(f"--impls cudnn needs a GPU; the backend is {jax.default_backend()!r}")
    if not on_gpu and "pallas" in args.impls and not args.quick:
        parser.error("--impls pallas off GPU runs the kernel in Pallas interpret mode (very slow): add --quick")
    if args.quick:
        args.shapes, args.repeats, args.warmup = QUICK_SHAPES, 2, 1
    out_dir = harness.output_dir(args.out, args.quick, "attention-bench-")
    env = harness.environment()
    rng = np.random.default_rng(args.seed)
    records = []
    for shape in args.shapes:
        for kind in args.masks:
            records += run_case(args, shape, kind, rng)
    env["load_avg_1m_end"] = harness.load_average()

    stem = pathlib.Path(out_dir) / f"attention-{env['platform']}"
    harness.write_jsonl(stem.with_suffix(".jsonl"), [{**r, "env": env} for r in records])
    cols = ["impl", "mask", "B", "H", "T", "D", ("density", "density"), ("median_ms", "median ms"),
            ("p90_ms", "p90 ms"), ("compile_ms", "compile ms"), ("useful_gflops_per_s", "useful GFLOP/s"),
            ("xla_over_reference", "xla/ref"), ("max_abs_diff", "max abs diff"), ("check_ok", "check"),
            ("other_cpu_cores", "other CPU")]
    protocol = (f"float32, q/k/v [B, T, H, D] ~ N(0, 1), scale 1/sqrt(D); harness.time_jax: trace+lower and "
                f"compile once, {args.warmup} warm-up calls, median of {args.repeats}; fwd+bwd = "
                f"jax.grad of sum(output) w.r.t. q, k, v; check tol {args.tol:g}")
    md = harness.markdown_report(
        f"Masked attention: {' vs '.join(args.impls)}", env,
        ("python -m benchmarks.bench_attention " + shlex.join(argv)).strip(),
        protocol, {"fwd": ("Masked attention: forward", cols), "fwd+bwd": ("Masked attention: forward + backward", cols)},
        records, notes=NOTES)
    stem.with_suffix(".md").write_text(md)
    print(f"wrote {stem}.jsonl and {stem}.md")
    return 0 if records and all(r["check_ok"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
