"""Density estimation with flows as a :class:`zoo.core.Task`.

The loss is the mean bits per dimension of the batch: each step dequantises the uint8
images with fresh uniform noise, ``y = (x + u)/256 − 0.5``, and
``bpd = −(log p(y) − D·log 256)/(D·log 2)``. Evaluation reports the test bpd with a
fixed noise draw (``eval.noise_seed``) and writes sample grids, one PNG per temperature,
to ``<workdir>/samples_T<t>.png``.

Glow's data-dependent actnorm is initialised in ``init``, from the dequantised first
``data.init_batch_size`` images of the first epoch.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from kernels.flows import bits_per_dim, dequantize
from zoo.core.images import image_grid, save_grid  # noqa: F401  (re-exported: notebooks use task.image_grid)
from zoo.core.train import Task
from zoo.data.batching import epoch_permutation, shuffled_batches
from zoo.data.images import load_images
from zoo.flows.model import NICE, MultiScaleFlow

KINDS = ("nice", "multiscale")


def make_model(config: ml_collections.ConfigDict, image_shape):
    m = config.model
    image_shape = tuple(int(s) for s in image_shape)
    if m.kind == "nice":
        return NICE(image_shape, m.num_couplings, m.hidden, m.num_hidden_layers, m.output_relu, m.sign)
    if m.kind == "multiscale":
        return MultiScaleFlow(
            image_shape, m.levels, m.depth, m.width, m.actnorm, m.permutation, m.coupling, m.learn_top, m.final_actnorm,
            m.scan,
            # run directories from before these options lack them
            m.get("remat", "auto"), m.get("coupling_init", "lecun"), m.get("logscale_factor", 0.0), m.get("priors", "split2d"),
        )  # fmt: skip
    raise ValueError(f"config.model.kind must be one of {KINDS}; got {m.kind!r}")


def make_optimizer(config) -> optax.GradientTransformation:
    o = config.optim
    schedule = optax.linear_schedule(0.0, o.learning_rate, max(1, o.warmup_steps))
    return optax.chain(optax.clip_by_global_norm(o.grad_clip), optax.adam(schedule))


def batch_bpd(model, params, images_uint8, key):
    """Bits per dimension of each image, ``[B]``, under one dequantisation draw."""
    y = dequantize(key, images_uint8)
    log_prob = model.apply({"params": params}, y, method="log_prob")
    return bits_per_dim(log_prob, math.prod(images_uint8.shape[1:]))


@functools.lru_cache(maxsize=8)
def _jitted_bpd(model):
    return jax.jit(functools.partial(batch_bpd, model))


@functools.lru_cache(maxsize=8)
def _jitted_sample(model):
    return jax.jit(
        lambda params, key, n, t: model.apply({"params": params}, key, n, t, method="sample"), static_argnums=(2,)
    )


def test_bpd(model, params, images: np.ndarray, batch_size: int, noise_seed: int) -> float:
    """Mean bpd over ``images`` (uint8), fixed-size batches, one noise key per batch."""
    fn = _jitted_bpd(model)
    total, key = 0.0, jax.random.key(noise_seed)
    for i in range(0, len(images), batch_size):
        chunk = images[i : i + batch_size]
        n = len(chunk)
        if n < batch_size:  # pad so only one shape is compiled
            chunk = np.concatenate([chunk, np.zeros((batch_size - n, *chunk.shape[1:]), chunk.dtype)])
        total += float(jnp.sum(fn(params, chunk, jax.random.fold_in(key, i))[:n]))
    return total / len(images)


def to_uint8(x) -> np.ndarray:
    """Model space ``[−0.5, 0.5)`` back to pixels. A sample can leave the data range far
    enough to overflow on the way back (the inverse divides by coupling scales < 1, most
    often at T = 1 early in training); such pixels are drawn black (NaN) or saturated."""
    x = np.clip(np.nan_to_num(np.asarray(x, np.float32), nan=-0.5), -0.5, 0.5)  # clip first: no overflow in * 256
    return np.clip(np.floor((x + 0.5) * 256), 0, 255).astype(np.uint8)


def save_samples(model, params, key, workdir: Path, temperatures, num_samples: int) -> list[Path]:
    """One PNG grid per temperature; the same latent noise at every temperature."""
    sample = _jitted_sample(model)
    paths = []
    for t in temperatures:
        x = sample(params, key, num_samples, float(t))
        path = Path(workdir) / f"samples_T{t:g}.png"
        save_grid(to_uint8(x), path)
        paths.append(path)
    return paths


def load_split(config, split):
    d = config.data
    limit = d.train_limit if split == "train" else d.test_limit
    images, _ = load_images(d.name, split, data_dir=d.data_dir or None, limit=limit)
    return images


def get_task(config: ml_collections.ConfigDict, workdir: Path) -> Task:
    d = config.data
    train_images = load_split(config, "train")
    test_images = load_split(config, "test")
    model = make_model(config, train_images.shape[1:])
    steps_per_epoch = len(train_images) // d.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"data.batch_size {d.batch_size} exceeds the {len(train_images)} training images")

    def init(key):
        init_key, noise_key = jax.random.split(key)
        first = train_images[epoch_permutation(len(train_images), config.seed, 0)[: d.init_batch_size]]
        return jax.jit(model.init)(init_key, dequantize(noise_key, first))["params"]

    def loss_fn(params, batch, key):
        bpd = batch_bpd(model, params, batch["images"], key)
        loss = jnp.mean(bpd)
        return loss, {"bpd": loss}

    def train_batches(start_step):
        for _, idx in shuffled_batches(len(train_images), d.batch_size, config.seed, start_step):
            yield {"images": train_images[idx]}

    def evaluate(params):
        e = config.eval
        bpd = test_bpd(model, params, test_images, d.eval_batch_size, e.noise_seed)
        if workdir is not None:
            save_samples(model, params, jax.random.key(e.noise_seed), workdir, e.temperatures, e.num_samples)
        return {"test_bpd": bpd}

    return Task(init, make_optimizer(config), loss_fn, train_batches, evaluate)

