"""GANs: the single-loss step against the alternating 1:1 step, the DCGAN train step
against a plain PyTorch DCGAN, and (long) the loss × update table of classifier FIDs.

Parts (``--parts``, default ``step,peer``):

* ``step``: one DCGAN 28×28 train step (batch 64, ``--loss``, default hinge as in post
  33) in both update modes, the step ``zoo train dcgan`` runs (``make_train_step`` on
  :func:`zoo.gan.train.make_update`): median time, and XLA's buffer sizes of the compiled
  step (``memory_analysis``: temporaries + arguments + outputs, the static peak).
* ``peer``: the same DCGAN, non-saturating loss, alternating 1:1, Adam(2e-4, β₁ 0.5), as
  images/s against ``benchmarks/peers/gan_torch.py`` (PyTorch eager, same architecture
  and parameter count) in the same process, at each of ``--peer-batches`` (16 and 64).
* ``inception`` (not in the default set; needs the peers): Inception feature extraction,
  ``zoo.gan.inception`` against pytorch-fid's own network (PyTorch eager, ``torch.no_grad``)
  on the same random weights and the same 28×28 images resized to 299: images/s at
  ``--inception-batch``, and the largest pool-feature difference between the two.
* ``table`` (long; not in the default set): ``zoo train dcgan`` for ``--train-steps`` steps
  per loss in ``--losses`` × {alternating, single}, then classifier FID
  (:mod:`zoo.gan.evaluation`) of the raw and the EMA generator on ``--fid-samples``
  samples, plus the real-data floor; the EMA generator's sample grids go to ``docs/gan/table/``.

Run: ``python -m benchmarks.run gan [--parts step,peer,table] [--quick] [--out DIR]``.
Writes ``benchmarks/results/gan-<platform>.{jsonl,md}``; ``--parts table`` or ``--parts
inception`` alone writes ``gan-table-<platform>.*`` / ``gan-inception-<platform>.*``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys
import tempfile
import time

import jax
import numpy as np

from benchmarks import harness

RESULTS_DIR = harness.RESULTS_DIR
DOCS_DIR = pathlib.Path(__file__).parent.parent / "docs" / "gan" / "table"
PARTS = ("step", "peer", "inception", "table")
DEFAULT_PARTS = ("step", "peer")
TABLE_LOSSES = (
    "gan", "gan_saturating", "hinge", "lsgan", "wgan", "f_kl", "f_reverse_kl", "f_pearson", "f_neyman",
    "f_hellinger", "f_js", "f_tv", "rsgan", "rasgan",
)  # fmt: skip


def _config(args, loss: str, mode: str):
    from zoo.gan.configs import dcgan

    c = dcgan.get_config("")
    c.data.batch_size = args.batch
    c.gan.update(loss=loss, update_mode=mode)
    if loss == "wgan":  # WGAN needs its Lipschitz constraint: the paper's gradient penalty
        c.gan.penalty = "wgan_gp"
    if args.quick:
        c.model.update(g_width=8, d_width=8)
    return c


def zoo_gan_step(config, images_uint8: np.ndarray):
    """``(compiled step, state, device batch, loop key, num_params)`` of ``zoo train``."""
    from zoo.core import parallel
    from zoo.core.train import Task, init_state, make_train_step
    from zoo.gan import task as gan_task
    from zoo.gan.train import init_variables, make_update

    (generator, discriminator, encoder), players, spec, tx = gan_task.build(config)
    m = config.model
    shape = (m.image_size, m.image_size, m.channels)
    params, model_state = init_variables((generator, discriminator), jax.random.key(0), shape, m.z_dim, encoder)
    update = make_update(spec, tx)
    task = Task(
        lambda key: params, tx, None, None, None, init_model_state=lambda key: model_state,
        update=lambda state, batch, key: update(state, {"images": gan_task.to_model_range(batch["images"])}, key),
    )  # fmt: skip
    mesh = parallel.data_mesh(1)
    state = init_state(task, jax.random.key(0), mesh)
    batch = parallel.shard_batch({"images": images_uint8}, mesh)
    step = make_train_step(task, mesh)
    n_params = sum(int(np.size(x)) for x in jax.tree.leaves(state.params))
    return step, state, batch, jax.random.key(1), n_params


def _time_step(config, images, args) -> dict:
    step, state, batch, key, n_params = zoo_gan_step(config, images)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch, key).compile()
    compile_ms = (time.perf_counter() - t0) * 1e3
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost  # older jax returns one dict per device
    holder = {"state": state}

    def call():
        holder["state"], metrics = compiled(holder["state"], batch, key)
        return jax.block_until_ready(metrics)

    with harness.OtherCpuLoad() as load:
        r = harness.time_callable(call, warmup=args.warmup, repeats=args.repeats)
    loss = float(r.pop("output")["loss"])
    gflop = cost.get("flops", 0.0) / 1e9 if cost else None  # exact here: no loops at n_critic = 1
    return {**r, "compile_ms": compile_ms, "num_params": n_params, "check_ok": bool(np.isfinite(loss)),
            "gflop": gflop, "gflop_per_s": gflop / (r["median_ms"] / 1e3) if gflop else None,
            "temp_mb": mem.temp_size_in_bytes / 2**20 if mem else None,
            "peak_mb": (mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes) / 2**20 if mem else None,
            "other_cpu_cores": load.cores}  # fmt: skip


def _images(args, n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(n, 28, 28, 1), dtype=np.uint8)


def bench_step(args) -> list[dict]:
    records = []
    for mode in ("alternating", "single"):
        r = _time_step(_config(args, args.loss, mode), _images(args, args.batch), args)
        records.append({"section": "step", "task": f"dcgan 28x28 {args.loss} step", "impl": f"zoo-jax {mode}",
                        "batch": args.batch, **r})  # fmt: skip
    base = records[0]["median_ms"]
    for rec in records:
        rec["time_vs_alternating"] = rec["median_ms"] / base
    print("step: " + "; ".join(f"{r['impl']} {r['median_ms']:.1f} ms" for r in records), flush=True)
    return records


def matmul_roofline(args) -> dict:
    """The f32 matmul rate this machine reaches on a large, well-shaped product (the DCGAN
    discriminator's widest im2col matmul, ``[3136, 1024] @ [1024, 128]``): the ceiling for
    any implementation of a step made of such products."""
    a = jax.random.normal(jax.random.key(0), (3136, 1024))
    b = jax.random.normal(jax.random.key(1), (1024, 128))
    r = harness.time_jax(jax.jit(lambda a, b: a @ b), a, b, warmup=args.warmup, repeats=max(args.repeats, 20))
    r.pop("output", None)
    gflop = 2 * 3136 * 1024 * 128 / 1e9
    return {"section": "peer", "task": "f32 matmul [3136,1024]@[1024,128] (roofline)", "impl": "zoo-jax (XLA)",
            "batch": None, **r, "gflop": gflop, "gflop_per_s": gflop / (r["median_ms"] / 1e3), "check_ok": True}  # fmt: skip


def bench_peer(args, torch_ok: bool) -> list[dict]:
    records = [matmul_roofline(args)]
    for batch in args.peer_batches:
        config = _config(args, "gan", "alternating")
        config.data.batch_size = batch
        task = f"dcgan 28x28 gan alternating 1:1, batch {batch}"
        zoo = {"section": "peer", "task": task, "impl": "zoo-jax", "batch": batch,
               **_time_step(config, _images(args, batch), args)}  # fmt: skip
        rows = [zoo]
        if torch_ok and not args.quick:
            from benchmarks.peers import gan_torch

            with harness.OtherCpuLoad() as load:
                times = gan_torch.time_train_step(28, 1, batch_size=batch, repeats=args.repeats, warmup=args.warmup)
            g, d = gan_torch.build_dcgan(28, 1)
            rows.append({"section": "peer", "task": task, "impl": "pytorch-eager", "batch": batch,
                         **harness.summarize(times), "num_params": gan_torch.num_params(g) + gan_torch.num_params(d),
                         "check_ok": True, "other_cpu_cores": load.cores})  # fmt: skip
        for rec in rows:
            if rec.get("gflop") is None and zoo.get("gflop"):  # same architecture, same arithmetic
                rec["gflop"] = zoo["gflop"]
                rec["gflop_per_s"] = zoo["gflop"] / (rec["median_ms"] / 1e3)
            rec["images_per_s"] = batch / (rec["median_ms"] / 1e3)
            rec["speedup_vs_peer"] = rows[-1]["median_ms"] / rec["median_ms"] if len(rows) > 1 else None
        print(f"peer batch {batch}: " + "; ".join(f"{r['impl']} {r['images_per_s']:.0f} images/s" for r in rows), flush=True)
        records += rows
    return records


def bench_inception(args, torch_ok: bool) -> list[dict]:
    """Pool features of ``--inception-batch`` images per call: zoo (jitted, XLA) vs pytorch-fid."""
    from zoo.gan import inception

    if not torch_ok or args.quick:
        print("inception: needs torch and pytorch-fid (bash scripts/setup.sh peers); skipped", flush=True)
        return []
    import torch

    from benchmarks.peers.fid_inception_torch import make_pytorch_fid_inception

    try:
        model, _, state_dict = make_pytorch_fid_inception(seed=0)
    except ImportError as err:
        print(f"inception: pytorch-fid unavailable ({err}); skipped (bash scripts/setup.sh peers)", flush=True)
        return []
    variables = inception.variables_from_state_dict({k: v.numpy() for k, v in state_dict.items()})
    batch = args.inception_batch
    images = np.random.default_rng(0).uniform(-1, 1, (batch, 28, 28, 1)).astype(np.float32)
    unit = np.round((images + 1) * 127.5) / 255.0
    x = torch.tensor(np.repeat(unit, 3, axis=-1).transpose(0, 3, 1, 2).copy())
    apply = inception._jitted_outputs(inception.INPUT_SIDE)
    t0 = time.perf_counter()
    compiled = apply.lower(variables, images).compile()
    compile_ms = (time.perf_counter() - t0) * 1e3
    with harness.OtherCpuLoad() as load:
        zoo = harness.time_callable(lambda: jax.block_until_ready(compiled(variables, images)),
                                    warmup=1, repeats=args.inception_repeats)  # fmt: skip
    zoo_cores = load.cores

    def torch_call():
        with torch.no_grad():
            return model(x)[0]

    with harness.OtherCpuLoad() as load:
        peer = harness.time_callable(torch_call, warmup=1, repeats=args.inception_repeats)
    pool_zoo = np.asarray(zoo.pop("output")[0])
    pool_peer = peer.pop("output").flatten(1).numpy()
    diff = float(np.abs(pool_zoo - pool_peer).max() / np.abs(pool_peer).max())
    task = f"FID Inception v3 pool features, 28x28 grey -> 299, batch {batch}"
    rows = [{"section": "inception", "task": task, "impl": "zoo-jax", "batch": batch, **zoo, "compile_ms": compile_ms,
             "other_cpu_cores": zoo_cores},
            {"section": "inception", "task": task, "impl": "pytorch-fid (torch eager)", "batch": batch, **peer,
             "other_cpu_cores": load.cores}]  # fmt: skip
    for rec in rows:
        rec.update(images_per_s=batch / (rec["median_ms"] / 1e3), speedup_vs_peer=rows[1]["median_ms"] / rec["median_ms"],
                   max_rel_diff=diff, check_ok=diff < 1e-5)  # fmt: skip
    print("inception: " + "; ".join(f"{r['impl']} {r['images_per_s']:.1f} images/s" for r in rows) + f"; diff {diff:.2e}",
          flush=True)  # fmt: skip
    return rows


def bench_table(args) -> list[dict]:
    from zoo.core.train import train_and_evaluate
    from zoo.gan import evaluation
    from zoo.gan.task import load_train_images

    records = []
    losses = [s for s in args.losses.split(",") if s]
    grids = args.out_grids
    grids.mkdir(parents=True, exist_ok=True)
    floor = None
    for loss in losses:
        for mode in ("alternating", "single"):
            config = _config(args, loss, mode)
            config.train.update(num_steps=args.train_steps, progress=False, log_every=100, ckpt_every=args.train_steps)
            config.eval.update(num_samples=args.fid_samples)
            if args.quick:
                config.data.train_limit, config.eval.reference_steps = 256, 20
                config.eval.update(reference_train_limit=500, reference_test_limit=200, batch_size=50)
            workdir = pathlib.Path(tempfile.mkdtemp(prefix="gan-bench-table-"))
            t0 = time.perf_counter()
            try:
                _, ev = train_and_evaluate(config, workdir)
                ok = all(np.isfinite(v) for v in ev.values())
            except Exception as err:  # a diverged loss is a result, not a crash of the table
                ev, ok = {"error": f"{type(err).__name__}: {err}"[:200]}, False
            wall = time.perf_counter() - t0
            if (workdir / "samples_ema.png").exists():  # the EMA generator's grid (the raw one stays in workdir)
                shutil.copy(workdir / "samples_ema.png", grids / f"{loss}-{mode}_ema.png")
            lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()] if (workdir / "metrics.jsonl").exists() else []
            rates = [x["steps_per_sec"] for x in lines if x["split"] == "train" and "steps_per_sec" in x][1:]
            records.append({"section": "table", "loss": loss, "update": mode, **ev, "wall_s": wall,
                            "ms_per_step": 1e3 / float(np.median(rates)) if rates else None, "check_ok": ok})  # fmt: skip
            print(f"table: {loss} {mode}: {ev}", flush=True)
            if floor is None:
                reference = evaluation.get_reference(config.data.name, steps=config.eval.reference_steps or None,
                                                     train_limit=config.eval.reference_train_limit,
                                                     test_limit=config.eval.reference_test_limit)  # fmt: skip
                images, _ = load_train_images(config)
                pick = np.random.default_rng(0).permutation(len(images))[: args.fid_samples]
                floor = evaluation.real_data_fid(reference, images[pick])
                records.append({"section": "table", "loss": "real train images", "update": "-", "fid_classifier": floor,
                                "test_accuracy": reference.test_accuracy, "check_ok": True})  # fmt: skip
    return records


def markdown(env: dict, command: str, records: list[dict], notes: list[str], args) -> str:
    from zoo.gan.evaluation import metric_names

    fid_name = metric_names("fashion_mnist")["fid_classifier"]
    sections = {
        "step": ("Single-loss step vs alternating 1:1 step (DCGAN 28x28)", [
            "task", "impl", "batch", "median_ms", "p90_ms", "compile_ms", ("time_vs_alternating", "time / alternating"),
            ("peak_mb", "XLA peak MB"), ("temp_mb", "XLA temp MB"), ("gflop", "GFLOP"), ("gflop_per_s", "GFLOP/s"), "num_params",
            "check_ok", ("other_cpu_cores", "other cores")]),
        "peer": ("DCGAN train step vs PyTorch eager", [
            "task", "impl", "batch", "median_ms", "p90_ms", ("images_per_s", "images/s"),
            ("speedup_vs_peer", "speed-up vs peer"), ("gflop", "GFLOP"), ("gflop_per_s", "GFLOP/s"), "num_params", "check_ok",
            ("other_cpu_cores", "other cores")]),
        "inception": ("Inception feature extraction vs pytorch-fid (same random weights)", [
            "task", "impl", "batch", "median_ms", "p90_ms", "compile_ms", ("images_per_s", "images/s"),
            ("speedup_vs_peer", "speed-up vs peer"), ("max_rel_diff", "max |Δ pool| / max |pool|"), "check_ok",
            ("other_cpu_cores", "other cores")]),
        "table": (f"Loss x update: {fid_name} after {args.train_steps} steps ({args.fid_samples} samples)", [
            "loss", "update", ("fid_classifier", "FID"), ("fid_classifier_ema", "FID (EMA G)"),
            ("classifier_score", "score"), ("classifier_score_ema", "score (EMA G)"), ("ms_per_step", "ms/step"), "check_ok"]),
    }  # fmt: skip
    protocol = ("median and p90 of timed calls after warm-up; JAX calls end in block_until_ready; compile "
                "time measured separately; 'speed-up vs peer' > 1 means the zoo is that many times faster.")
    return harness.markdown_report("GAN benchmark", env, command, protocol, sections, records, notes)


def _parser():
    p = argparse.ArgumentParser(prog="python -m benchmarks.run gan", description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default=",".join(DEFAULT_PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--loss", default="hinge", help="the loss of the step part")
    p.add_argument("--peer-batches", default="16,64", help="batch sizes of the peer part")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--inception-batch", type=int, default=50)
    p.add_argument("--inception-repeats", type=int, default=5)
    p.add_argument("--losses", default=",".join(TABLE_LOSSES), help="the table part's losses")
    p.add_argument("--train-steps", type=int, default=1000)
    p.add_argument("--fid-samples", type=int, default=5000)
    p.add_argument("--quick", action="store_true", help="tiny widths, 2 repeats, no peer; a temporary folder unless --out")
    p.add_argument("--out", type=pathlib.Path, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    parts = harness.parse_subset("--parts", args.parts, PARTS)
    args.peer_batches = [int(b) for b in args.peer_batches.split(",") if b]
    if args.quick:
        args.batch, args.repeats, args.warmup, args.peer_batches = 8, 2, 1, [8]
        args.train_steps, args.fid_samples = min(args.train_steps, 3), 64
    out_dir = harness.output_dir(args.out, args.quick, "gan-bench-")
    args.out_grids = out_dir / "grids" if args.quick else DOCS_DIR
    torch_ok, env_threads = harness.torch_peer("benchmarks.peers.gan_torch")
    env = harness.environment()
    env["torch_threads"] = env_threads
    command = harness.command_line()
    records = []
    if "step" in parts:
        records += bench_step(args)
    if "peer" in parts:
        records += bench_peer(args, torch_ok)
    if "inception" in parts:
        records += bench_inception(args, torch_ok)
    if "table" in parts:
        records += bench_table(args)
    records = [{"record": "result", "suite": "gan", **r} for r in records]
    env["load_avg_1m_end"] = harness.load_average()
    notes = [] if torch_ok else ["torch not importable: zoo rows only"]
    notes += harness.timing_notes(records)
    failed = [f"{r.get('task', r.get('loss'))} {r.get('impl', r.get('update'))}" for r in records if not r["check_ok"]]
    if failed:
        notes.append("CHECK FAILED (non-finite loss or metric): " + "; ".join(failed))
    alone = parts[0] if len(parts) == 1 and parts[0] in ("table", "inception") else None
    stem = out_dir / (f"gan-{alone}-{env['platform']}" if alone else f"gan-{env['platform']}")
    print("\n".join(notes))
    harness.write_results(stem, env, command, records, markdown(env, command, records, notes, args))
    return 1 if failed and parts != ["table"] else 0


if __name__ == "__main__":
    sys.exit(main())
