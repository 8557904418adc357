"""XLA:CPU options A/B: one model's train step under several YNNPACK settings, one process.

Which operations XLA:CPU hands to YNNPACK (``xla_cpu_experimental_ynn_fusion_type``) moves a
step's time by up to 1.3x either way, and by model, so the zoo sets it per config
(``train.cpu_compiler_options``). This suite is how those choices were measured:

* the model's train step, as ``zoo train MODEL`` builds it (registry config and task, one
  device, its first batch), compiled once per setting with that setting as the jit's
  ``compiler_options`` (it replaces the config's own options);
* settings: ``default`` (jaxlib's: individual dots and convolutions, and reductions),
  ``no_reduce`` (:data:`zoo.core.config.YNNPACK_NO_REDUCE`) and ``dots_only``
  (:data:`zoo.core.config.YNNPACK_DOTS_ONLY`);
* timing: ``--rounds`` rounds, each running every setting's step ``--block`` times in turn
  (the first two calls of a block dropped), so that drifts in the machine's speed reach every
  setting alike; the block shrinks so the whole run takes about ``--budget`` seconds. Median
  per setting, and ``default`` / that median as the speed-up.

Run: ``python -m benchmarks.run xla_options MODEL [--variant V] [--set config.a.b=value ...]``,
e.g. ``xla_options vae --set config.data.binarize=fixed`` (the ``zoo bench vae`` data). Prints
one markdown row; ``--out FILE`` appends it to ``FILE`` (e.g. ``benchmarks/results/xla-options-cpu.md``)
with the revision and load. ``--quick`` (tests): the smoke variant, a few steps.
"""

from __future__ import annotations

import argparse
import importlib
import pathlib
import tempfile
import time

import jax

from benchmarks import harness
from zoo.core.config import YNNPACK_DOTS_ONLY, YNNPACK_NO_REDUCE, apply_overrides

SETTINGS = {"default": None, "no_reduce": YNNPACK_NO_REDUCE, "dots_only": YNNPACK_DOTS_ONLY}


def _parser():
    p = argparse.ArgumentParser(prog="python -m benchmarks.run xla_options", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a name of `zoo list`")
    p.add_argument("--variant", default="", help="the config variant (`zoo train MODEL --config VARIANT`)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="config.a.b=value",
                   help="a config override, as `zoo train` takes them (repeatable)")  # fmt: skip
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--block", type=int, default=30, help="steps per setting per round (at most)")
    p.add_argument("--budget", type=float, default=60.0, help="about how many seconds the timed part takes")
    p.add_argument("--quick", action="store_true", help="smoke variant, 2 rounds of 3 steps")
    p.add_argument("--out", default="", help="also append the row to this markdown file (header if new)")
    return p


def build_steps(model: str, variant: str, overrides: list[str]) -> dict:
    """``{setting: call}``: each call runs one compiled train step and waits for it."""
    from zoo import registry
    from zoo.core import parallel
    from zoo.core.train import init_state, make_train_step

    if model not in registry.MODELS:
        raise ValueError(f"xla_options: unknown model {model!r}; valid: {sorted(registry.MODELS)}")
    spec = registry.MODELS[model]
    config = apply_overrides(importlib.import_module(spec.config).get_config(variant), overrides)
    task = registry.get_task(config, tempfile.mkdtemp(prefix="xla_options_"))
    mesh = parallel.data_mesh(1)
    batch = parallel.shard_batch(next(task.train_batches(0)), mesh)
    loop_key = jax.random.key(1)
    calls = {}
    for name, options in SETTINGS.items():
        state = init_state(task, jax.random.key(config.seed), mesh)
        compiled = make_train_step(task, mesh, compiler_options=options).lower(state, batch, loop_key).compile()
        holder = [state]

        def call(compiled=compiled, holder=holder):
            holder[0], metrics = compiled(holder[0], batch, loop_key)
            return jax.block_until_ready(metrics)

        call()  # first-call costs (allocation, YNNPACK's plan) out of the timings
        calls[name] = call
    return calls


def interleaved_medians(calls: dict, rounds: int, block: int, budget_s: float) -> dict[str, float]:
    """Median seconds per call of each of ``calls``, timed in interleaved blocks."""
    t0 = time.perf_counter()
    calls["default"]()
    per_call = time.perf_counter() - t0
    block = max(3, min(block, int(budget_s / max(rounds * len(calls) * per_call, 1e-9))))
    # the first two calls of each block settle caches and the allocator after the other variants
    timings = harness.time_interleaved(calls, rounds=rounds, per_round=block - 2, settle=2)
    return {name: r["median_ms"] / 1e3 for name, r in timings.items()}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    variant = "smoke" if args.quick and not args.variant else args.variant
    rounds, block = (2, 3) if args.quick else (args.rounds, args.block)
    if jax.devices()[0].platform != "cpu":
        raise ValueError(f"xla_options: compares XLA:CPU settings; the default device is {jax.devices()[0].platform}")
    if rounds < 1 or block < 3:
        raise ValueError(f"xla_options: --rounds must be >= 1 and --block >= 3; got {rounds} and {block}")
    load0 = harness.load_average() or 0.0
    medians = interleaved_medians(build_steps(args.model, variant, args.overrides), rounds, block, args.budget)
    base = medians["default"]
    flags = [*(["--variant", variant] if variant else []), *(f"--set {o}" for o in args.overrides)]
    label = " ".join([args.model, *flags])
    cells = [f"{m * 1e3:.2f} ms ({base / m:.2f}x)" for m in medians.values()]
    header = f"| model | {' | '.join(medians)} | revision | load at start |\n|---|{'---|' * (len(medians) + 2)}\n"
    row = f"| {label} | {' | '.join(cells)} | {harness.git_revision()} | {load0:.1f} |\n"
    print(header + row, end="")
    if args.out:
        out = pathlib.Path(args.out)
        if not out.exists():
            env = harness.environment()
            out.write_text(
                "# XLA:CPU YNNPACK settings, train step A/B\n\n"
                f"- command: `python -m benchmarks.run xla_options MODEL [...] --out {args.out}` "
                "(the first column gives MODEL and the flags)\n"
                + "\n".join(harness.machine_lines(env)) + f"\n- jax {env['versions'].get('jax')}\n"
                "- protocol: see `benchmarks/bench_xla_options.py`; median ms per step, `default` / median in brackets\n\n"
                + header
            )
        with out.open("a") as f:
            f.write(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
