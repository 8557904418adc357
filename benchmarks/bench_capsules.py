"""Capsule networks: this zoo's JAX routing kernels and training steps against plain PyTorch.

Three sections, every input float32 from one numpy seed:

* ``routing``: ``kernels.routing.dynamic_routing`` (both variants, 3 iterations) and
  ``em_routing`` (3 iterations, λ = 0.01, as EMCapsNet) against their ``*_reference``
  loop twins, both under ``jax.jit``, forward + backward (the value and gradient of
  ``Σ out · probe`` w.r.t. every input). The references unroll into one scalar op per
  (sample, child, parent), so XLA's compile time grows faster than their size (about 40 s
  for dynamic routing at 2×8×4×8 on 2 cores): their shapes (``--routing-shape``,
  ``--em-shape``) are small. The kernels are also timed alone at the shapes the two models
  route (CapsNet's class capsules, EMCapsNet's first conv-capsule layer). Check: kernel vs
  reference, outputs and gradients.
* ``layers``: CapsNet's two hot layers at the model's shapes, forward + backward, the zoo's
  path against the one it replaced: the primary-capsule convolution as
  ``kernels.fourier_conv.fourier_conv`` vs ``zoo.core.layers.im2col_conv``, and the class
  capsules as ``kernels.routing.capsule_routing`` vs ``dynamic_routing(capsule_votes(...))``.
  Check: outputs and gradients agree.
* ``train_step``: one full training step (forward, loss, backward, gradient clipping at
  global norm 5, Adam update) of CapsNet (``zoo/capsules/configs/capsnet.py`` sizes,
  margin + 0.0005 × reconstruction loss) and EMCapsNet (``configs/em_capsnet.py`` sizes,
  spread loss, margin 0.2) on random images in [0, 1] and random labels. The zoo's step is
  the one ``zoo train`` runs (``zoo.core.train.make_train_step`` on the capsule task's loss
  and optimizer, one device, with the config's ``train.cpu_compiler_options``); the peer is
  ``benchmarks/peers/capsules_torch.py``, plain PyTorch eager, starting from the same
  weights (the JAX init copied in). The two steps are timed in blocks, in turn, over three
  rounds (``harness.time_interleaved``), because this project's CPU drifts by ±20% over
  minutes; each block starts with an untimed step, as a step right after the other
  program's is far off (the zoo's CapsNet step by 30–50%, PyTorch's EM step about 2×).
  Check: both steps' first loss (at those weights, same batch) agree.

Run: ``python -m benchmarks.run capsules [--capsnet-batch 100] [--em-batch 64] [--warmup 1]
[--repeats 6] [--parts routing,layers,capsnet,em_capsnet] [--quick] [--out DIR]``.
Writes ``benchmarks/results/capsules-<platform>.jsonl`` and ``.md`` (overwritten each run);
``--quick`` (tiny shapes, a smoke test) writes to a temporary folder unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from kernels import routing

RESULTS_DIR = harness.RESULTS_DIR
PARTS = ("routing", "layers", "capsnet", "em_capsnet")
NUM_ITERS = 3
EM_INVERSE_TEMPERATURE = 0.01
VALUE_RTOL = 1e-4  # kernel vs reference outputs (max-abs relative error)
GRAD_RTOL = 2e-3  # and gradients (as tests/kernels/test_routing.py)
LOSS_RTOL = 1e-3  # first training loss, zoo vs torch, same weights and batch
BUSY_CORES = 0.2  # cores used by other processes above which a block's timings are flagged
DEFAULT_ROUTING_SHAPE = (2, 8, 4, 8)  # B×I×J×D, dynamic routing (each reference compiles ~40 s on 2 cores)
DEFAULT_EM_SHAPE = (2, 4, 3, 16)  # B×I×J×P, EM routing (the reference compiles ~30 s)
QUICK_ROUTING_SHAPE = (1, 2, 2, 2)
QUICK_EM_SHAPE = (1, 2, 2, 2)
QUICK_NUM_ITERS = 2  # routing iterations of the --quick models (the configs' 3 compile slower)


# --------------------------------------------------------------------------- #
# Routing kernels vs their references
# --------------------------------------------------------------------------- #


def _rel(x, ref) -> float:
    """max |x - ref| / max(max |ref|, 1e-12): one relative error for a whole array."""
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(x - ref)) / max(float(np.max(np.abs(ref))), 1e-12))


def routing_problem(task: str, shape: tuple[int, ...], seed: int = 0):
    """(args, probe): the routing inputs and a fixed random cotangent for the outputs, on device."""
    rng = np.random.default_rng(seed)
    b, i, j, d = shape
    if task.startswith("dynamic"):
        return jax.device_put(((rng.normal(size=shape).astype(np.float32),), rng.normal(size=(b, j, d)).astype(np.float32)))
    args = (
        rng.normal(size=shape).astype(np.float32),  # votes
        rng.uniform(size=(b, i)).astype(np.float32),  # child activations
        (0.5 * rng.normal(size=(j,))).astype(np.float32),  # beta_u
        (0.5 * rng.normal(size=(j,))).astype(np.float32),  # beta_a
    )
    probe = (rng.normal(size=(b, j, d)).astype(np.float32), rng.normal(size=(b, j)).astype(np.float32))
    return jax.device_put((args, probe))


def routing_fwd_bwd(task: str, fn):
    """``(*args, probe) -> ((Σ out · probe, outputs), gradients w.r.t. every arg)`` for one
    routing function. The outputs ride along for the check (returning them costs nothing);
    the probe is an argument, not a constant baked into the compiled program."""
    if task.startswith("dynamic"):
        variant = task.split("[")[1].rstrip("]")

        def loss(u_hat, probe):
            v = fn(u_hat, num_iters=NUM_ITERS, variant=variant)
            return jnp.sum(v * probe), v

        return jax.value_and_grad(loss, has_aux=True)

    def loss(votes, a_in, beta_u, beta_a, probe):
        mean, act = fn(votes, a_in, beta_u, beta_a, num_iters=NUM_ITERS, inverse_temperature=EM_INVERSE_TEMPERATURE)
        return jnp.sum(mean * probe[0]) + jnp.sum(act * probe[1]), (mean, act)

    return jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)


def _finite(tree) -> bool:
    return all(bool(np.all(np.isfinite(x))) for x in jax.tree.leaves(tree))


ROUTING_TASKS = {
    "dynamic_routing[sabour]": (routing.dynamic_routing, routing.dynamic_routing_reference),
    "dynamic_routing[su]": (routing.dynamic_routing, routing.dynamic_routing_reference),
    "em_routing": (routing.em_routing, routing.em_routing_reference),
}


def bench_routing(args) -> list[dict]:
    """Kernel and reference at the small shapes, then the kernel alone at the models' shapes."""
    rows = []
    for task, (kernel, reference) in ROUTING_TASKS.items():
        shape = args.em_shape if task == "em_routing" else args.routing_shape
        inputs, probe = routing_problem(task, shape)
        outputs = {}
        for impl, fn in (("zoo-kernel", kernel), ("reference", reference)):
            with harness.OtherCpuLoad() as others:
                r = harness.time_jax(routing_fwd_bwd(task, fn), *inputs, probe,
                                     warmup=args.routing_warmup, repeats=args.routing_repeats)  # fmt: skip
            outputs[impl] = r.pop("output")
            rows.append({"section": "routing", "task": task, "impl": impl, "shape": _fmt(shape), **r,
                         "other_cpu_cores": others.cores})  # fmt: skip
        ((_, out_k), g_k), ((_, out_r), g_r) = outputs["zoo-kernel"], outputs["reference"]
        value_err = max(_rel(a, b) for a, b in zip(jax.tree.leaves(out_k), jax.tree.leaves(out_r)))
        grad_err = max(_rel(a, b) for a, b in zip(jax.tree.leaves(g_k), jax.tree.leaves(g_r)))
        ok = value_err <= VALUE_RTOL and grad_err <= GRAD_RTOL and _finite(outputs["zoo-kernel"])
        kernel_ms = rows[-2]["median_ms"]
        for r in rows[-2:]:
            r.update(value_rel_err=value_err, grad_rel_err=grad_err, check_ok=ok, zoo_speedup=r["median_ms"] / kernel_ms)
        _print_routing(rows[-2:])
    for task, shape in model_routing_shapes(args).items():
        kernel = ROUTING_TASKS[task][0]
        inputs, probe = routing_problem(task, shape)
        with harness.OtherCpuLoad() as others:  # ~0.4 s and ~1.6 s a call: the train steps' protocol
            r = harness.time_jax(routing_fwd_bwd(task, kernel), *inputs, probe,
                                 warmup=args.warmup, repeats=args.repeats)  # fmt: skip
        ok = _finite(r.pop("output"))
        rows.append({"section": "routing", "task": task, "impl": "zoo-kernel (model shape)", "shape": _fmt(shape),
                     **r, "check_ok": ok, "other_cpu_cores": others.cores, "warmup": args.warmup})  # fmt: skip
        _print_routing(rows[-1:])
    return rows


def model_routing_shapes(args) -> dict[str, tuple[int, ...]]:
    """The routing problems inside the two models at the benchmarked sizes: CapsNet's class
    capsules ``[B, H'·W'·types, 10, class_dim]``; EMCapsNet's first conv-capsule layer
    ``[B·H'·W', 9·B_types, C, 16]`` (its biggest)."""
    c = capsnet_sizes(args.quick)
    side = ((28 - 8) - 9) // 2 + 1
    e = em_sizes(args.quick)
    conv = (28 - 5) // 2 + 1
    caps1 = (conv - 3) // 2 + 1
    return {
        "dynamic_routing[sabour]": (args.capsnet_batch, side * side * c["primary_types"], 10, c["class_dim"]),
        "em_routing": (args.em_batch * caps1 * caps1, 9 * e["primary_types"], e["caps1_types"], 16),
    }


def _print_routing(rows):
    for r in rows:
        print(f"{r['task']:<24} {r['impl']:<25} {r['shape']:>14} {r['median_ms']:10.3f} ms  "
              f"compile {r['compile_ms']:9.0f} ms  check {'ok' if r['check_ok'] else 'FAILED'}", flush=True)  # fmt: skip


# --------------------------------------------------------------------------- #
# CapsNet's hot layers: the zoo's path vs the one it replaced
# --------------------------------------------------------------------------- #


def layer_problems(args) -> dict:
    """``{task: (shape label, inputs, {impl: fn})}`` at CapsNet's benchmarked sizes; every fn
    maps the inputs to one output array."""
    from zoo.core.layers import im2col_conv
    from kernels.fourier_conv import fourier_conv

    rng = np.random.default_rng(0)
    c = capsnet_sizes(args.quick)
    b, conv, prim = args.capsnet_batch, c["conv_features"], c["primary_types"] * c["primary_dim"]
    x = rng.uniform(size=(b, 20, 20, conv)).astype(np.float32)  # the first conv's ReLU output
    kernel = (rng.normal(size=(9, 9, conv, prim)) / np.sqrt(81 * conv)).astype(np.float32)
    n_in = 6 * 6 * c["primary_types"]
    u = (0.3 * rng.normal(size=(b, n_in, c["primary_dim"]))).astype(np.float32)
    weights = (0.01 * rng.normal(size=(n_in, c["primary_dim"], 10, c["class_dim"]))).astype(np.float32)
    iters = QUICK_NUM_ITERS if args.quick else NUM_ITERS
    return {
        "primary-capsule conv 9x9 s2": (
            f"{b}x20x20x{conv} -> {prim}", (x, kernel),
            {"zoo (fourier_conv)": lambda x, k: fourier_conv(x, k, 2), "im2col": lambda x, k: im2col_conv(x, k, 2)},
        ),
        "class capsules (votes + routing)": (
            f"{b}x{n_in}x{c['primary_dim']} -> 10x{c['class_dim']}", (u, weights),
            {"zoo (capsule_routing)": lambda u, w: routing.capsule_routing(u, w, num_iters=iters),
             "votes, then routing": lambda u, w: routing.dynamic_routing(routing.capsule_votes(u, w), num_iters=iters)},
        ),
    }  # fmt: skip


def bench_layers(args) -> list[dict]:
    """Each layer's forward + backward (value and gradients of ``Σ out · probe``), zoo first."""
    rows = []
    for task, (shape, inputs, impls) in layer_problems(args).items():
        inputs = jax.device_put(inputs)
        outputs = {}
        for impl, fn in impls.items():
            out_shape = jax.eval_shape(fn, *inputs).shape
            probe = jax.device_put(np.random.default_rng(1).normal(size=out_shape).astype(np.float32))

            def loss(*a, fn=fn):
                y = fn(*a[:-1])
                return jnp.sum(y * a[-1]), y

            step = jax.value_and_grad(loss, argnums=tuple(range(len(inputs))), has_aux=True)
            with harness.OtherCpuLoad() as others:
                r = harness.time_jax(step, *inputs, probe, warmup=args.warmup, repeats=args.repeats)
            outputs[impl] = r.pop("output")
            rows.append({"section": "layers", "task": task, "impl": impl, "shape": shape, **r,
                         "other_cpu_cores": others.cores})  # fmt: skip
        (zoo_impl, ((_, y_z), g_z)), (_, ((_, y_o), g_o)) = outputs.items()
        value_err = _rel(y_z, y_o)
        grad_err = max(_rel(a, b) for a, b in zip(g_z, g_o))
        ok = value_err <= VALUE_RTOL and grad_err <= GRAD_RTOL and _finite(outputs[zoo_impl])
        zoo_ms = rows[-2]["median_ms"]
        for r in rows[-2:]:
            r.update(value_rel_err=value_err, grad_rel_err=grad_err, check_ok=ok, zoo_speedup=r["median_ms"] / zoo_ms)
        _print_routing(rows[-2:])
    return rows


# --------------------------------------------------------------------------- #
# Training steps
# --------------------------------------------------------------------------- #


def capsnet_sizes(quick: bool) -> dict:
    """Model sizes of ``configs/capsnet.py`` (see :func:`_config` for ``quick``)."""
    m = _config("capsnet", quick).model
    return dict(conv_features=m.conv_features, primary_types=m.primary_types, primary_dim=m.primary_dim,
                class_dim=m.class_dim, num_iters=m.num_iters, decoder_features=tuple(m.decoder_features))  # fmt: skip


def em_sizes(quick: bool) -> dict:
    """Model sizes of ``configs/em_capsnet.py`` (see :func:`_config` for ``quick``)."""
    m = _config("em_capsnet", quick).model
    return dict(conv_features=m.conv_features, primary_types=m.primary_types, caps1_types=m.caps1_types,
                caps2_types=m.caps2_types, num_iters=m.num_iters, inverse_temperature=m.inverse_temperature)  # fmt: skip


def make_batch(model: str, batch_size: int, seed: int = 0) -> dict:
    """Random images in [0, 1] ``[B, 28, 28, 1]``, labels in 0..9 (EM: spread margin 0.2)."""
    rng = np.random.default_rng(seed)
    batch = {
        "images": rng.uniform(size=(batch_size, 28, 28, 1)).astype(np.float32),
        "labels": rng.integers(0, 10, size=(batch_size,)).astype(np.int32),
    }
    if model == "em_capsnet":
        batch["margin"] = np.full((batch_size,), 0.2, np.float32)
    return batch


def _config(model: str, quick: bool):
    """The model's training config; with ``quick`` its smoke variant with
    ``QUICK_NUM_ITERS`` routing iterations (XLA's compile time grows with them)."""
    from zoo.capsules.configs import capsnet, em_capsnet

    config = (capsnet if model == "capsnet" else em_capsnet).get_config("smoke" if quick else "")
    if quick:
        config.model.num_iters = QUICK_NUM_ITERS
    return config


# Rounds of the interleaved train-step timing (fewer when --repeats is smaller).
TRAIN_ROUNDS = 3


def train_timing(args) -> tuple[int, int, int]:
    """``(rounds, per_round, settle)`` of the train steps' :func:`harness.time_interleaved`:
    ``--repeats`` timed steps (rounded up to whole rounds), ``--warmup`` (at least 1) untimed
    steps at the start of every block."""
    rounds = min(TRAIN_ROUNDS, args.repeats)
    return rounds, -(-args.repeats // rounds), max(args.warmup, 1)


def build_zoo_step(model: str, batch: dict, args) -> tuple[Callable[[], dict], dict, dict]:
    """The zoo's jitted train step (as ``zoo train`` builds it), compiled and called once.

    Returns ``(call, row, params0)``: ``call()`` runs one step and returns its metrics; ``row``
    has the lower and compile times, the first step's loss (at the initial weights, compared
    with torch's) and the parameter count; ``params0`` are the initial weights."""
    from zoo.capsules import task as capsule_task
    from zoo.core import parallel
    from zoo.core.train import Task, cpu_compiler_options, init_state, make_train_step

    config = _config(model, args.quick)
    config.data.batch_size = len(batch["labels"])
    flax_model = capsule_task.make_model(config)

    @jax.jit  # one compilation instead of one per initializer op (EMCapsNet: 3x faster)
    def init(key):
        dummy = jnp.zeros((1, 28, 28, 1), jnp.float32)
        extra = (jnp.zeros((1,), jnp.int32),) if model == "capsnet" else ()
        return flax_model.init(key, dummy, *extra)["params"]

    def loss_fn(params, b, key):
        del key
        return capsule_task.loss_and_metrics(flax_model, config, params, b)

    # 600 steps per epoch: Fashion-MNIST's 60k images at batch 100 (only the decay schedule uses it).
    task = Task(init, capsule_task.make_optimizer(config, 600), loss_fn, None, None)
    mesh = parallel.data_mesh(1)
    init_key, loop_key = jax.random.split(jax.random.key(config.seed))
    state = init_state(task, init_key, mesh)
    params0 = jax.device_get(state.params)  # before the first step donates the state
    device_batch = parallel.shard_batch(batch, mesh)
    step = make_train_step(task, mesh, compiler_options=cpu_compiler_options(config.train, mesh))  # as `zoo train`

    t0 = time.perf_counter()
    lowered = step.lower(state, device_batch, loop_key)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    holder = {"state": state}

    def call():
        holder["state"], metrics = compiled(holder["state"], device_batch, loop_key)
        return jax.block_until_ready(metrics)

    first_loss = float(call()["loss"])  # at the initial weights: compared with torch's
    n_params = sum(int(np.size(x)) for x in jax.tree.leaves(params0))
    row = {"lower_ms": (t1 - t0) * 1e3, "compile_ms": (t2 - t1) * 1e3, "first_loss": first_loss,
           "num_params": n_params}  # fmt: skip
    return call, row, params0


def build_torch_step(model: str, batch: dict, params0, args) -> tuple[Callable[[], Any], dict]:
    """The PyTorch peer's eager train step, from the same initial weights, called once.
    Returns ``(step, row)``: ``step()`` runs one step and returns its loss; ``row`` has the
    first step's loss and the parameter count."""
    import torch

    from benchmarks.peers import capsules_torch as peer

    config = _config(model, args.quick)
    if model == "capsnet":
        net = peer.load_capsnet_params(peer.CapsNet(**capsnet_sizes(args.quick)), params0)
    else:
        net = peer.load_em_capsnet_params(peer.EMCapsNet(**em_sizes(args.quick)), params0)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.optim.learning_rate)
    images = torch.from_numpy(np.ascontiguousarray(batch["images"].transpose(0, 3, 1, 2)))
    labels = torch.from_numpy(batch["labels"].astype(np.int64))
    step = peer.train_step_fn(net, optimizer, images, labels, grad_clip=config.optim.grad_clip)
    first_loss = float(step())
    n_params = sum(p.numel() for p in net.parameters())
    return step, {"first_loss": first_loss, "num_params": n_params}


def bench_train(model: str, batch_size: int, args, with_torch: bool) -> list[dict]:
    """Both train steps, built and called once each, then timed in interleaved rounds
    (:func:`train_timing`, :func:`benchmarks.harness.time_interleaved`), so the ratio does
    not move with the machine's slow spells."""
    batch = make_batch(model, batch_size)
    tag = {"section": "train_step", "task": f"{model} train step", "shape": f"batch {batch_size}", "batch": batch_size}
    zoo_call, zoo_row, params0 = build_zoo_step(model, batch, args)
    calls, rows = {"zoo-jax": zoo_call}, {"zoo-jax": zoo_row}
    if with_torch:
        calls["torch-eager"], rows["torch-eager"] = build_torch_step(model, batch, params0, args)
    rounds, per_round, settle = train_timing(args)
    with harness.OtherCpuLoad() as others:  # one figure for the whole interleaved run
        timings = harness.time_interleaved(calls, rounds=rounds, per_round=per_round, settle=settle)
    for name, row in rows.items():
        out = timings[name].pop("output")  # zoo: the step's metrics; torch: its loss
        row.update(timings[name], last_loss=float(out["loss"] if name == "zoo-jax" else out))
    rows = [{**tag, "impl": name, **row, "other_cpu_cores": others.cores} for name, row in rows.items()]
    base = rows[0]
    for r in rows:
        r["images_per_s"] = batch_size / (r["median_ms"] / 1e3)
        r["zoo_speedup"] = r["median_ms"] / base["median_ms"]
        r["loss_diff_vs_zoo"] = abs(r["first_loss"] - base["first_loss"]) / max(abs(base["first_loss"]), 1e-12)
        r["check_ok"] = (
            bool(np.isfinite(r["first_loss"]) and np.isfinite(r["last_loss"]))
            and r["loss_diff_vs_zoo"] <= LOSS_RTOL
            and r["num_params"] == base["num_params"]
        )
        print(f"{r['task']:<24} {r['impl']:<12} {r['shape']:>10} {r['median_ms']:10.1f} ms  "
              f"{r['images_per_s']:8.1f} images/s  first loss {r['first_loss']:.6g}  "
              f"check {'ok' if r['check_ok'] else 'FAILED'}", flush=True)  # fmt: skip
    return rows


# --------------------------------------------------------------------------- #
# Report
# --------------------------------------------------------------------------- #


ROUTING_COLUMNS = [
    ("task", "task"), ("impl", "implementation"), ("shape", "B×I×J×D"), ("median_ms", "median ms"),
    ("p90_ms", "p90 ms"), ("compile_ms", "compile ms"), ("zoo_speedup", "time / zoo-kernel"),
    ("check_ok", "check"), ("value_rel_err", "value rel err"), ("grad_rel_err", "grad rel err"),
    ("other_cpu_cores", "other cores"),
]
LAYER_COLUMNS = [
    ("task", "layer"), ("impl", "implementation"), ("shape", "shape"), ("median_ms", "median ms"),
    ("p90_ms", "p90 ms"), ("compile_ms", "compile ms"), ("zoo_speedup", "time / zoo"),
    ("check_ok", "check"), ("value_rel_err", "value rel err"), ("grad_rel_err", "grad rel err"),
    ("other_cpu_cores", "other cores"),
]
TRAIN_COLUMNS = [
    ("task", "task"), ("impl", "implementation"), ("batch", "batch"), ("median_ms", "median ms"),
    ("p90_ms", "p90 ms"), ("compile_ms", "compile ms"), ("images_per_s", "images/s"),
    ("zoo_speedup", "time / zoo"), ("check_ok", "check"), ("first_loss", "first loss"),
    ("loss_diff_vs_zoo", "loss diff vs zoo"), ("num_params", "params"), ("other_cpu_cores", "other cores"),
]


def summary_lines(records: list[dict]) -> list[str]:
    lines = []
    for r in records:
        if r["impl"] == "reference":
            lines.append(f"{r['task']} {r['shape']} fwd+bwd: reference / zoo kernel = {r['zoo_speedup']:.1f}x")
        if r["section"] == "layers" and r["zoo_speedup"] != 1.0:
            lines.append(f"{r['task']} ({r['shape']}) fwd+bwd: {r['impl']} / zoo = {r['zoo_speedup']:.2f}x")
        if r["impl"] == "torch-eager":
            zoo = next(x for x in records if x["task"] == r["task"] and x["impl"] == "zoo-jax")
            lines.append(
                f"{r['task']} (batch {r['batch']}): zoo {zoo['images_per_s']:.1f} images/s, torch "
                f"{r['images_per_s']:.1f} images/s; zoo / torch = {r['zoo_speedup']:.2f}x"
            )
    return lines


def write_markdown(path: pathlib.Path, env: dict, command: str, records: list[dict], notes: list[str], args) -> None:
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    routing_rows = [r for r in records if r["section"] == "routing"]
    layer_rows = [r for r in records if r["section"] == "layers"]
    train_rows = [r for r in records if r["section"] == "train_step"]
    rounds, per_round, settle = train_timing(args)
    text = [
        "# Capsules benchmark",
        "",
        f"- command: `{command}`",
        *harness.machine_lines(env),
        f"- versions: {versions}",
        f"- git revision: {env['git_rev']}; torch threads (torch.get_num_threads()): {env['torch_threads']}; "
        f"1-min load average: {env['load_avg_1m']} at start, {env['load_avg_1m_end']} at end "
        "('other cores' below: CPU used by other processes while a row was timed)",
        f"- memory: {env['huge_pages']}",
        f"- protocol: median and p90 wall time of {args.routing_repeats} timed calls after {args.routing_warmup} "
        f"warm-up (routing comparisons) and {args.repeats} after {args.warmup} (the kernels at the models' shapes "
        f"and the layers). Train steps: {rounds} interleaved rounds; in each, the zoo's step and then torch's run "
        f"{settle} untimed and {per_round} timed steps, so a slow spell of this machine falls on both and no "
        "timed step directly follows the other program's. JAX calls end in "
        "block_until_ready; compile time measured separately. 'time / zoo…' > 1 means the zoo is that many "
        "times faster.",
        f"- checks: routing kernel vs its jitted loop reference, outputs (max-abs rel err <= {VALUE_RTOL:g}) and "
        f"gradients w.r.t. every input (<= {GRAD_RTOL:g}); train steps: same parameter count and the same "
        f"first loss (same initial weights and batch, rel diff <= {LOSS_RTOL:g}).",
        "",
    ]
    if routing_rows:
        text += ["## Routing, forward + backward", "", harness.markdown_table(routing_rows, ROUTING_COLUMNS), ""]
    if layer_rows:
        text += ["## CapsNet's layers at the model's shapes, forward + backward", "",
                 harness.markdown_table(layer_rows, LAYER_COLUMNS), ""]  # fmt: skip
    if train_rows:
        text += [
            "## Training step (forward, loss, backward, clip at global norm 5, Adam)",
            "",
            harness.markdown_table(train_rows, TRAIN_COLUMNS),
            "",
        ]
    text += [*(f"- {n}" for n in notes), ""]
    path.write_text("\n".join(text))


# --------------------------------------------------------------------------- #
# Driver
# --------------------------------------------------------------------------- #


def _fmt(shape) -> str:
    return "x".join(str(d) for d in shape)


def parse_shape(text: str) -> tuple[int, int, int, int]:
    """"2x8x4x8" -> (2, 8, 4, 8)."""
    dims = text.strip().lower().split("x")
    if len(dims) != 4 or not all(d.isdigit() and int(d) > 0 for d in dims):
        raise argparse.ArgumentTypeError(f"shape {text!r} is not BxIxJxD with positive integers")
    return tuple(int(d) for d in dims)


def parse_parts(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        raise argparse.ArgumentTypeError(f"--parts: {bad or text!r} not in {PARTS}")
    return parts


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1; got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0; got {value}")
    return value


DEFAULTS = dict(capsnet_batch=100, em_batch=64, repeats=6, warmup=1, routing_repeats=20, routing_warmup=3,
                routing_shape=DEFAULT_ROUTING_SHAPE, em_shape=DEFAULT_EM_SHAPE)  # fmt: skip
QUICK_DEFAULTS = dict(capsnet_batch=4, em_batch=4, repeats=2, warmup=1, routing_repeats=3, routing_warmup=1,
                      routing_shape=QUICK_ROUTING_SHAPE, em_shape=QUICK_EM_SHAPE)  # fmt: skip


def _resolve_defaults(args) -> None:
    """Fills the flags left unset with the full-size or the --quick defaults."""
    for name, value in (QUICK_DEFAULTS if args.quick else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run capsules", description=__doc__.split("\n\n")[0])
    # None = the default, or the --quick value: see _resolve_defaults.
    parser.add_argument("--capsnet-batch", type=_positive, default=None, help="CapsNet train-step batch (default 100)")
    parser.add_argument("--em-batch", type=_positive, default=None, help="EMCapsNet train-step batch (default 64)")
    parser.add_argument("--repeats", type=_positive, default=None, help="timed train steps and model-shape routing calls (default 6)")
    parser.add_argument("--warmup", type=_non_negative, default=None, help="untimed train steps (and model-shape routing calls) before timing (default 1)")
    parser.add_argument("--routing-repeats", type=_positive, default=None, help="timed routing calls (default 20)")
    parser.add_argument("--routing-warmup", type=_non_negative, default=None, help="untimed routing calls (default 3)")
    parser.add_argument("--routing-shape", type=parse_shape, default=None,
                        help=f"BxIxJxD of the dynamic-routing comparison (default {_fmt(DEFAULT_ROUTING_SHAPE)}; "
                        "the reference's compile time grows fast with it)")  # fmt: skip
    parser.add_argument("--em-shape", type=parse_shape, default=None,
                        help=f"BxIxJxP of the EM-routing comparison (default {_fmt(DEFAULT_EM_SHAPE)})")  # fmt: skip
    parser.add_argument("--parts", type=parse_parts, default=PARTS, help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: tiny models (the configs' smoke sizes, 2 routing iterations), batch 4, tiny routing shapes, "
                        "2 repeats (flags given explicitly still win); writes to a temporary folder unless --out "
                        "is given")  # fmt: skip
    parser.add_argument("--out", type=pathlib.Path, default=None, help=f"results folder (default {RESULTS_DIR})")
    return parser


def _torch_available() -> str | None:
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        return f"{exc} (pip install torch==2.13.0)"
    return None


def main(argv: list[str] | None = None) -> int:
    """Runs the suite; returns 0, or 1 if any check failed."""
    args = _parser().parse_args(argv)
    _resolve_defaults(args)
    out_dir = harness.output_dir(args.out, args.quick, "capsules-bench-")

    missing = _torch_available()
    env = harness.environment()
    if missing is None:
        import torch

        env["torch_threads"] = torch.get_num_threads()
    else:
        env["torch_threads"] = None
    command = harness.command_line()
    notes = [] if missing is None else [f"torch not importable, zoo rows only: {missing}"]
    print(f"# {env['device_kind']} ({env['platform']}), git {env['git_rev']}, torch threads {env['torch_threads']}; "
          f"{notes[0] if notes else 'with the torch peer'}", flush=True)  # fmt: skip

    records = []
    if "routing" in args.parts:
        records += bench_routing(args)
    if "layers" in args.parts:
        records += bench_layers(args)
    if "capsnet" in args.parts:
        records += bench_train("capsnet", args.capsnet_batch, args, missing is None)
    if "em_capsnet" in args.parts:
        records += bench_train("em_capsnet", args.em_batch, args, missing is None)
    for r in records:
        r.setdefault("warmup", args.routing_warmup if r["section"] == "routing" else args.warmup)
    records = [{"record": "result", "suite": "capsules", **r} for r in records]
    env["load_avg_1m_end"] = harness.load_average()

    notes += summary_lines(records)
    busy = [f"{r['task']} {r['impl']}" for r in records if (r["other_cpu_cores"] or 0) > BUSY_CORES]
    if busy:
        notes.append(f"WARNING: other processes kept > {BUSY_CORES} cores busy while timing {'; '.join(busy)}: "
                     "those timings are unreliable; rerun on a quiet machine")  # fmt: skip
    failed = [f"{r['task']} {r['impl']}" for r in records if not r["check_ok"]]
    if failed:
        notes.append("CHECK FAILED: " + "; ".join(failed))
    print("\n".join(notes))

    stem = out_dir / f"capsules-{env['platform']}"
    harness.write_jsonl(stem.with_suffix(".jsonl"), [{"record": "environment", "command": command, **env}] + records)
    write_markdown(stem.with_suffix(".md"), env, command, records, notes, args)
    print(f"wrote {stem}.jsonl and {stem}.md")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
