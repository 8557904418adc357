"""What a VAE checkpoint's numbers look like inside: the figures used to trace a long
Gaussian-VAE run that diverged (README, "VAEs and EM").

    python -m zoo.vae.diagnose RUN_DIR [--steps 200000 225000] [--examples 500]

For each checkpoint (default: every one the run kept) it prints, as one JSON line:

* ``param_norms``: the Frobenius norm of every parameter array;
* on the first ``--examples`` training images (dequantised / binarised as in training):
  the encoder's *raw* log-variance (before the clamp) and the clamped one, the largest
  ``|posterior mean|``, and for a Gaussian decoder with ``scale="decoder"`` its log-scales;
* on the whole test set, the per-image reconstruction term ``−log p(x|z)`` (one posterior
  sample): mean, median, the five largest, and the mean without the ten largest, which
  shows whether a handful of images dominate the test bound.

Quantiles are ``[min, 1%, 50%, 99%, max]``.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

QUANTILES = (0, 1, 50, 99, 100)


def _quantiles(a) -> list[float]:
    return [round(float(q), 3) for q in np.percentile(np.asarray(a), QUANTILES)]


@functools.lru_cache(maxsize=4)
def _recon_nll(model):
    """``(variables, x, key) -> −log p(x|z) [B]`` for one posterior sample, jitted once per model
    (the parameters are an argument, so checkpoints after the first reuse the compiled program)."""

    def fn(variables, x, key):
        recon, *_ = model.apply(variables, x, key)
        return -model.log_likelihood(recon, x)

    return jax.jit(fn)


def checkpoint_stats(model, params, train_x, test_images, binarize: str, batch_size: int = 500, seed: int = 0) -> dict:
    """The statistics listed in the module docstring for one set of ``params``.

    Args:
      model: the run's :class:`zoo.vae.models.VAE` (``make_model(config)``).
      train_x: float model inputs ``[N, H, W, C]`` (already dequantised or binarised).
      test_images: the test split as the task holds it (uint8, or {0, 1} when binarised once).
      binarize: the run's ``data.binarize``; the test split is scored as the task's evaluation
        scores it (dequantised, or its fixed binarisation).
    """
    from zoo.vae.models import LOCATION_SCALE
    from zoo.vae.task import model_input

    variables = {"params": params}
    mean, raw = model.apply(variables, train_x, method=lambda m, x: m.encoder(x))
    _, logvar = model.apply(variables, train_x, method="encode")
    out = {
        "param_norms": {
            jax.tree_util.keystr(path): round(float(jnp.linalg.norm(p)), 3)
            for path, p in jax.tree_util.tree_flatten_with_path(params)[0]
        },
        "encoder_raw_logvar": _quantiles(raw),
        "encoder_logvar": _quantiles(logvar),
        "max_abs_posterior_mean": round(float(jnp.max(jnp.abs(mean))), 3),
    }
    if model.likelihood in LOCATION_SCALE and model.scale == "decoder":
        recon, *_ = model.apply(variables, train_x, jax.random.key(seed))
        out["decoder_log_scale"] = _quantiles(model.gaussian_params(recon)[1])

    test_mode = "fixed" if binarize != "none" else "none"
    nll = []
    for i in range(0, len(test_images), batch_size):
        key = jax.random.fold_in(jax.random.key(seed), i)
        x = model_input(test_images[i : i + batch_size], jax.random.fold_in(key, 0), test_mode)
        nll.append(np.asarray(_recon_nll(model)(variables, x, jax.random.fold_in(key, 1)), np.float64))
    nll = np.sort(np.concatenate(nll))[::-1]
    out["test_recon_nll"] = {
        "mean": round(float(nll.mean()), 1),
        "median": round(float(np.median(nll)), 1),
        "top5": [round(float(v), 1) for v in nll[:5]],
        "mean_without_top10": round(float(nll[10:].mean()), 1),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zoo.vae.diagnose", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--steps", type=int, nargs="*", default=None, help="checkpoint steps (default: all kept)")
    p.add_argument("--examples", type=int, default=500, help="training images for the encoder/decoder statistics")
    args = p.parse_args(argv)

    from zoo import registry
    from zoo.core import parallel
    from zoo.core.checkpoint import Checkpointer, saved_steps
    from zoo.core.config import read_config
    from zoo.core.train import init_state
    from zoo.vae.task import load_data, make_model, model_input

    config = read_config(args.run_dir / "config.json")
    if config.model_name != "vae":
        raise ValueError(f"zoo.vae.diagnose: `run_dir` must hold a `zoo train vae` run; got model {config.model_name!r}")
    checkpoints = args.run_dir / "checkpoints"
    kept = saved_steps(checkpoints)
    if not kept:
        raise FileNotFoundError(f"{args.run_dir} holds no checkpoint")
    steps = args.steps or kept
    missing = sorted(set(steps) - set(kept))
    if missing:
        raise ValueError(f"zoo.vae.diagnose: `--steps` must be checkpoints the run kept, {kept}; got {missing}")
    task = registry.get_task(config, None)
    (train_images, _), (test_images, _) = load_data(config)
    model = make_model(config, train_images.shape[1:])
    train_x = model_input(train_images[: args.examples], jax.random.key(config.seed), config.data.binarize)
    checkpointer = Checkpointer(checkpoints)
    like = init_state(task, jax.random.key(0), parallel.data_mesh(1))
    for step in steps:
        state = checkpointer.restore(like, step=step)
        stats = checkpoint_stats(model, state.params, train_x, test_images, config.data.binarize, seed=config.seed)
        print(json.dumps({"step": step, **stats}), flush=True)
    checkpointer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
