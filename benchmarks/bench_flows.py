"""Normalizing flows: the LU log-det, the Glow train step against normflows, compile time
against depth, and an equal-budget training run against normflows.

Parts (``--parts``, default all but ``train``):

* ``logdet``: the 1×1 convolution's log-det term and its gradient, LU
  (``H·W·Σ log_s``, grad w.r.t. ``log_s``) against ``jnp.linalg.slogdet`` of the weight
  (grad w.r.t. ``W``), for C ∈ {16, 64, 256, 512}; and the whole layer (weight build,
  1×1 conv over ``[16, 8, 8, C]``, log-det; forward + backward) both ways. Check: each
  log-det within rel 1e-4 of a float64 ``slogdet`` of the same weight.
* ``step``: one full training step (dequantise, forward, bits/dim, backward, clip, Adam)
  of the zoo's Glow (``zoo/flows/configs/glow.py``: 2 levels × depth 8, width 128,
  batch 64, 28×28×1) — the step function ``zoo train glow`` runs (``make_train_step`` on
  the flow task's loss and optimizer; init from this random batch) — against normflows' Glow of
  the same levels, depth and width (``benchmarks/peers/flows_torch.py``). Both get the
  same random uint8 batch. Check: both losses finite; parameter counts reported. Model FLOPs per
  step (XLA's cost analysis of the unrolled step, no recomputation; the same architecture for both)
  give each a GFLOP/s rate, beside the rate of the step's dominant matmul alone.
* ``compile``: lower + compile time of the Glow train-step gradient for one level of
  depth K ∈ {1, 2, 4, 8, 16, 32}, steps under ``nn.scan`` (the default) and unrolled.
* ``train`` (long; not in the default set): the zoo's Glow and normflows' Glow trained
  side by side on Fashion-MNIST for ``--train-steps`` steps each (same data, batch,
  levels, depth, width and optimiser: Adam at the config's learning rate with its linear
  warm-up and global-norm clipping); test bits/dim and median step time.

Run: ``python -m benchmarks.run flows [--parts logdet,step,compile,train] [--train-steps
1500] [--seeds 0,1] [--priors split2d|per_channel] [--quick] [--out DIR]``. ``--priors
per_channel`` gives the zoo's Glow normflows' priors (``model.priors``), for a like-for-like
comparison. Writes ``benchmarks/results/flows-<platform>.jsonl`` and ``.md``; a run of
``--parts train`` alone writes ``flows-train-<platform>.*`` instead, so the long training
comparison and the quick parts keep separate tables.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from kernels import flows as F
from zoo.flows.model import PRIORS

RESULTS_DIR = harness.RESULTS_DIR
PARTS = ("logdet", "step", "compile", "train")
DEFAULT_PARTS = ("logdet", "step", "compile")
CHANNELS = (16, 64, 256, 512)
DEPTHS = (1, 2, 4, 8, 16, 32)
LOGDET_RTOL = 1e-4


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-12))


# --------------------------------------------------------------------------- #
# LU log-det vs slogdet
# --------------------------------------------------------------------------- #


def bench_logdet(args) -> list[dict]:
    records = []
    for c in args.channels:
        p = F.lu_init(jax.random.key(c), c)
        rng = np.random.default_rng(c)
        # Off the rotation it starts from (log|det| = 0 there, which makes a relative check
        # vacuous), with L's off-diagonal noise scaled by 1/sqrt(C) so W stays as well
        # conditioned as a trained Glow's (O(1) noise at C = 512 makes float32 slogdet itself
        # lose two digits).
        p = dict(p, lower=p["lower"] + (0.5 / np.sqrt(c)) * rng.normal(size=(c, c)).astype(np.float32),
                 log_s=p["log_s"] + 0.2 * rng.normal(size=c).astype(np.float32))  # fmt: skip
        weight = F.lu_weight(**p)
        hw = 64.0  # an 8×8 feature map
        lu_fn = jax.value_and_grad(lambda log_s: hw * jnp.sum(log_s))
        sd_fn = jax.value_and_grad(lambda w: hw * jnp.linalg.slogdet(w)[1])
        x = jnp.asarray(rng.normal(size=(16, 8, 8, c)).astype(np.float32))
        free = (p["lower"], p["upper"], p["log_s"])

        def layer_lu(lower, upper, log_s):
            y, ld = F.invertible_conv1x1(x, p["perm"], lower, upper, log_s, p["sign_s"])
            return jnp.sum(y * y) + jnp.sum(ld)

        def layer_sd(w):
            y, ld = F.invertible_conv1x1_slogdet(x, w)
            return jnp.sum(y * y) + jnp.sum(ld)

        with harness.OtherCpuLoad() as load:
            r_lu = harness.time_jax(lu_fn, p["log_s"], warmup=args.warmup, repeats=args.repeats)
            r_sd = harness.time_jax(sd_fn, weight, warmup=args.warmup, repeats=args.repeats)
            r_llu = harness.time_jax(jax.value_and_grad(layer_lu, argnums=(0, 1, 2)), *free, warmup=args.warmup, repeats=args.repeats)
            r_lsd = harness.time_jax(jax.value_and_grad(layer_sd), weight, warmup=args.warmup, repeats=args.repeats)
        # Oracle: float64 slogdet of the same float32 weight.
        oracle = hw * np.linalg.slogdet(np.asarray(weight, np.float64))[1]
        errors = {"lu": _rel(r_lu["output"][0], oracle), "slogdet": _rel(r_sd["output"][0], oracle)}
        for task, impl, r, ref in (("log-det + grad", "lu", r_lu, r_lu), ("log-det + grad", "slogdet", r_sd, r_lu),
                                   ("1x1 conv layer fwd+bwd", "lu", r_llu, r_llu),
                                   ("1x1 conv layer fwd+bwd", "slogdet", r_lsd, r_llu)):  # fmt: skip
            r = dict(r)
            r.pop("output")
            records.append({"section": "logdet", "task": task, "impl": impl, "channels": c, **r,
                            "time_vs_lu": r["median_ms"] / ref["median_ms"], "check_ok": errors[impl] <= LOGDET_RTOL,
                            "logdet_rel_err": errors[impl], "other_cpu_cores": load.cores})  # fmt: skip
        print(f"logdet C={c}: slogdet/lu {records[-3]['time_vs_lu']:.1f}x (log-det), "
              f"{records[-1]['time_vs_lu']:.2f}x (layer)", flush=True)  # fmt: skip
    return records


# --------------------------------------------------------------------------- #
# Glow train step vs normflows
# --------------------------------------------------------------------------- #


def _glow_config(args):
    from zoo.flows.configs import glow

    c = glow.get_config("")
    c.model.update(levels=args.levels, depth=args.depth, width=args.width, priors=args.priors)
    c.data.batch_size = args.batch
    return c


def _zoo_impl(args) -> str:
    """The zoo's row name: ``zoo-jax``, or ``zoo-jax (per_channel priors)`` when ``--priors``
    is not the default, so tables from both settings cannot be confused."""
    return "zoo-jax" if args.priors == "split2d" else f"zoo-jax ({args.priors} priors)"


def zoo_glow_step(config, images: np.ndarray):
    """(step, state, device_batch, loop_key, num_params): ``zoo train``'s jitted step."""
    from zoo.core import parallel
    from zoo.core.train import Task, init_state, make_train_step
    from zoo.flows import task as flow_task

    model = flow_task.make_model(config, images.shape[1:])

    def init(key):
        return jax.jit(model.init)(key, F.dequantize(key, images))["params"]

    def loss_fn(params, batch, key):
        loss = jnp.mean(flow_task.batch_bpd(model, params, batch["images"], key))
        return loss, {"bpd": loss}

    task = Task(init, flow_task.make_optimizer(config), loss_fn, None, None)
    mesh = parallel.data_mesh(1)
    state = init_state(task, jax.random.key(config.seed), mesh)
    n_params = sum(int(np.size(x)) for x in jax.tree.leaves(state.params))
    return make_train_step(task, mesh), state, parallel.shard_batch({"images": images}, mesh), jax.random.key(1), n_params


def step_gflop(config, images: np.ndarray) -> float:
    """Model FLOPs of one train step in GFLOP: XLA's cost analysis of the step with its flow steps
    unrolled and no recomputation (a ``scan`` body would be counted once, not ``depth`` times).
    Both implementations compute this much; the zoo's CPU remat adds about a forward pass more."""
    config = config.copy_and_resolve_references()
    config.model.update(scan=False, remat="off")
    step, state, batch, key, _ = zoo_glow_step(config, images)
    cost = step.lower(state, batch, key).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) / 1e9


def bench_matmul(args) -> dict:
    """The step's dominant product, the 1×1 convolution's ``[B·H·W, width] @ [width, width]``
    at the first level, as a reference rate for what the CPU's matmuls reach at this shape."""
    rows = args.batch * (args.image_shape[0] // 2) * (args.image_shape[1] // 2)
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.normal(size=(rows, args.width)).astype(np.float32))
    b = jnp.asarray(rng.normal(size=(args.width, args.width)).astype(np.float32))
    r = harness.time_jax(jnp.matmul, a, b, warmup=args.warmup, repeats=max(args.repeats, 20))
    r.pop("output")
    gflop = 2.0 * rows * args.width * args.width / 1e9
    return {"section": "step", "task": "dominant matmul", "impl": "xla", "config": f"[{rows}, {args.width}] @ [{args.width}, {args.width}]",
            **r, "model_gflop": gflop, "gflop_per_s": gflop / (r["median_ms"] / 1e3), "check_ok": True}  # fmt: skip


def bench_step(args, torch_ok: bool) -> list[dict]:
    config = _glow_config(args)
    images = np.random.default_rng(0).integers(0, 256, size=(args.batch, *args.image_shape), dtype=np.uint8)
    gflop = step_gflop(config, images)
    step, state, batch, key, n_params = zoo_glow_step(config, images)
    t0 = time.perf_counter()
    lowered = step.lower(state, batch, key)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    holder = {"state": state}

    def call():
        holder["state"], metrics = compiled(holder["state"], batch, key)
        return jax.block_until_ready(metrics)

    with harness.OtherCpuLoad() as load:
        r = harness.time_callable(call, warmup=args.warmup, repeats=args.repeats)
    loss = float(r.pop("output")["loss"])
    shape = f"L{args.levels} K{args.depth} W{args.width} {'x'.join(map(str, args.image_shape))}"
    zoo = {"section": "step", "task": "glow train step", "impl": _zoo_impl(args), "config": shape, "batch": args.batch,
           "lower_ms": (t1 - t0) * 1e3, "compile_ms": (t2 - t1) * 1e3, **r, "last_loss": loss,
           "num_params": n_params, "check_ok": bool(np.isfinite(loss)), "other_cpu_cores": load.cores}  # fmt: skip
    records = [zoo]
    if torch_ok:
        from benchmarks.peers import flows_torch

        with harness.OtherCpuLoad() as load:
            times = flows_torch.time_train_step(args.image_shape, levels=args.levels, depth=args.depth,
                                                width=args.width, batch_size=args.batch, repeats=args.repeats)  # fmt: skip
        peer_model = flows_torch.build_glow(args.image_shape, args.levels, args.depth, args.width)
        records.append({"section": "step", "task": "glow train step", "impl": "normflows-torch", "config": shape,
                        "batch": args.batch, **harness.summarize(times), "num_params": flows_torch.num_params(peer_model),
                        "check_ok": True, "other_cpu_cores": load.cores})  # fmt: skip
    for rec in records:
        rec["time_vs_zoo"] = rec["median_ms"] / zoo["median_ms"]
        rec["images_per_s"] = args.batch / (rec["median_ms"] / 1e3)
        rec["model_gflop"] = gflop
        rec["gflop_per_s"] = gflop / (rec["median_ms"] / 1e3)
    with harness.OtherCpuLoad() as load:
        matmul = bench_matmul(args)
    records.append({**matmul, "other_cpu_cores": load.cores})
    print("step: " + "; ".join(f"{r['impl']} {r['median_ms']:.1f} ms ({r['gflop_per_s']:.0f} GFLOP/s)" for r in records), flush=True)
    return records


# --------------------------------------------------------------------------- #
# Compile time vs depth
# --------------------------------------------------------------------------- #


def bench_compile(args) -> list[dict]:
    from zoo.flows.model import MultiScaleFlow

    x = jnp.zeros((args.batch, *args.image_shape), jnp.float32)
    records = []
    for scan in (True, False):
        for depth in args.depths:
            model = MultiScaleFlow(tuple(args.image_shape), levels=1, depth=depth, width=args.width, scan=scan)
            variables = jax.eval_shape(model.init, jax.random.key(0), x)
            grad = jax.jit(jax.grad(lambda v, x: jnp.mean(model.apply(v, x, method="log_prob"))))
            t0 = time.perf_counter()
            lowered = grad.lower(variables, x)
            t1 = time.perf_counter()
            lowered.compile()
            t2 = time.perf_counter()
            records.append({"section": "compile", "task": "one-level Glow gradient", "impl": "nn.scan" if scan else "unrolled",
                            "depth": depth, "lower_ms": (t1 - t0) * 1e3, "compile_ms": (t2 - t1) * 1e3,
                            "hlo_chars": len(lowered.as_text()), "check_ok": True})  # fmt: skip
            print(f"compile {'scan' if scan else 'unrolled'} depth {depth}: {(t2 - t0):.2f} s", flush=True)
    return records


# --------------------------------------------------------------------------- #
# Equal-budget training against normflows
# --------------------------------------------------------------------------- #


def bench_train(args, torch_ok: bool) -> list[dict]:
    """Equal-budget training of both Glows, once per seed in ``--seeds`` (one row per impl and seed),
    then one ``mean`` row per impl: test bpd differences between seeds are the noise floor."""
    records = []
    for seed in args.seeds:
        records += _train_one_seed(args, torch_ok, seed)
    if len(args.seeds) > 1:
        for impl in dict.fromkeys(r["impl"] for r in records):
            bpds = [r["test_bpd"] for r in records if r["impl"] == impl]
            records.append({"section": "train", "task": records[0]["task"], "impl": impl, "seed": "mean",
                            "test_bpd": float(np.mean(bpds)), "test_bpd_std": float(np.std(bpds, ddof=1)),
                            "check_ok": all(r["check_ok"] for r in records if r["impl"] == impl)})  # fmt: skip
    return records


def _train_one_seed(args, torch_ok: bool, seed: int) -> list[dict]:
    from zoo.core.train import train_and_evaluate
    from zoo.flows import task as flow_task

    config = _glow_config(args)
    config.seed = seed
    config.train.update(num_steps=args.train_steps, progress=False, log_every=100, ckpt_every=args.train_steps)
    config.data.name = args.dataset
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="flows-bench-train-"))
    t0 = time.perf_counter()
    _, ev = train_and_evaluate(config, workdir)
    wall = time.perf_counter() - t0
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["steps_per_sec"] for r in lines if r["split"] == "train" and "steps_per_sec" in r][1:]
    zoo = {"section": "train", "task": f"glow {args.dataset} {args.train_steps} steps", "impl": _zoo_impl(args),
           "seed": seed, "test_bpd": ev["test_bpd"], "median_ms": 1e3 / float(np.median(rates)) if rates else None,
           "wall_s": wall, "check_ok": bool(np.isfinite(ev["test_bpd"]))}  # fmt: skip
    records = [zoo]
    if torch_ok:
        from benchmarks.peers import flows_torch

        train_images = flow_task.load_split(config, "train")
        test_images = flow_task.load_split(config, "test")
        t0 = time.perf_counter()
        r = flows_torch.train(train_images, test_images, levels=args.levels, depth=args.depth, width=args.width,
                              batch_size=args.batch, num_steps=args.train_steps, learning_rate=config.optim.learning_rate,
                              warmup_steps=config.optim.warmup_steps, grad_clip=config.optim.grad_clip,
                              seed=seed)  # fmt: skip
        records.append({"section": "train", "task": zoo["task"], "impl": "normflows-torch", "seed": seed,
                        "test_bpd": r["test_bpd"], "median_ms": 1e3 * r["step_time_s_median"],
                        "wall_s": time.perf_counter() - t0, "num_params": r["num_params"],
                        "check_ok": bool(np.isfinite(r["test_bpd"]))})  # fmt: skip
    for rec in records:
        if rec["median_ms"] and zoo["median_ms"]:
            rec["time_vs_zoo"] = rec["median_ms"] / zoo["median_ms"]
    print(f"train, seed {seed}: " + "; ".join(f"{r['impl']} test bpd {r['test_bpd']:.3f}" for r in records), flush=True)
    return records


# --------------------------------------------------------------------------- #
# Report
# --------------------------------------------------------------------------- #


def markdown(env: dict, command: str, records: list[dict], notes: list[str]) -> str:
    sections = {
        "logdet": ("LU log-det vs slogdet (forward + gradient)", [
            "task", "impl", "channels", "median_ms", "p90_ms", "compile_ms", ("time_vs_lu", "time / LU"), "check_ok",
            "logdet_rel_err", ("other_cpu_cores", "other cores")]),
        "step": ("Glow training step (dequantise, forward, bits/dim, backward, Adam)", [
            "task", "impl", "config", "batch", "median_ms", "p90_ms", "compile_ms", ("images_per_s", "images/s"),
            ("time_vs_zoo", "time / zoo"), ("model_gflop", "model GFLOP"), ("gflop_per_s", "GFLOP/s"), "num_params",
            "check_ok", ("other_cpu_cores", "other cores")]),
        "compile": ("Compile time of one level's gradient vs depth", [
            "impl", "depth", "lower_ms", "compile_ms", "hlo_chars"]),
        "train": ("Equal-budget training", [
            "task", "impl", "seed", "test_bpd", ("test_bpd_std", "std over seeds"), ("median_ms", "median ms/step"), ("time_vs_zoo", "time / zoo"), "wall_s",
            "num_params", "check_ok"]),
    }  # fmt: skip
    protocol = ("median and p90 of timed calls after warm-up; JAX calls end in block_until_ready; compile "
                "time measured separately; 'time / zoo' > 1 means the zoo is that many times faster.")
    return harness.markdown_report("Flows benchmark", env, command, protocol, sections, records, notes)


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds must be comma-separated integers, e.g. 0,1,2; got {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds must not repeat a seed; got {text!r}")
    return seeds


def _parser():
    p = argparse.ArgumentParser(prog="python -m benchmarks.run flows", description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default=",".join(DEFAULT_PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--levels", type=int, default=2)
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--train-steps", type=int, default=1500)
    p.add_argument("--seeds", type=_seeds, default=(0,), help="comma-separated seeds of the training comparison (default 0)")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--priors", choices=PRIORS, default="split2d",
                   help="the zoo Glow's priors: Glow's conditional split2d (default) or per_channel, as normflows' Glow has")
    p.add_argument("--quick", action="store_true", help="tiny shapes, 2 repeats; writes to a temporary folder unless --out")
    p.add_argument("--out", type=pathlib.Path, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    parts = harness.parse_subset("--parts", args.parts, PARTS)
    args.image_shape = (28, 28, 1)
    args.channels, args.depths = CHANNELS, DEPTHS
    if args.quick:
        args.image_shape, args.levels, args.depth, args.width, args.batch = (8, 8, 1), 2, 2, 8, 4
        args.channels, args.depths, args.repeats, args.warmup = (4, 8), (1, 2), 2, 1
        args.train_steps = min(args.train_steps, 3)
    out_dir = harness.output_dir(args.out, args.quick, "flows-bench-")
    torch_ok, env_threads = harness.torch_peer("benchmarks.peers.flows_torch")
    env = harness.environment()
    env["torch_threads"] = env_threads
    command = harness.command_line()
    records = []
    if "logdet" in parts:
        records += bench_logdet(args)
    if "step" in parts:
        records += bench_step(args, torch_ok)
    if "compile" in parts:
        records += bench_compile(args)
    if "train" in parts:
        records += bench_train(args, torch_ok)
    records = [{"record": "result", "suite": "flows", **r} for r in records]
    env["load_avg_1m_end"] = harness.load_average()
    notes = [] if torch_ok else ["normflows/torch not importable: zoo rows only"]
    notes += harness.timing_notes(records)
    failed = [f"{r['task']} {r['impl']}" for r in records if not r["check_ok"]]
    if failed:
        notes.append("CHECK FAILED: " + "; ".join(failed))
    stem = out_dir / (f"flows-{env['platform']}" if parts != ["train"] else f"flows-train-{env['platform']}")
    print("\n".join(notes))
    harness.write_results(stem, env, command, records, markdown(env, command, records, notes))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
