"""VAEs on 28×28 images as a :class:`zoo.core.Task` (posts 5253, 5343, 5383).

Data (``config.data.binarize``):

* ``"dynamic"``: every step draws ``x ~ Bernoulli(pixel/255)`` afresh (the step key); the
  test split is binarised once (seed ``data.binarize_seed + 1``). Bernoulli likelihood.
* ``"fixed"``: both splits binarised once (train: ``data.binarize_seed``, test: the seed + 1).
  Bernoulli likelihood.
* ``"none"``: continuous pixels, uniformly dequantised ``y = (x + u)/256 ∈ [0, 1)`` with fresh
  noise each step (fixed noise, ``eval.noise_seed``, at evaluation). Gaussian likelihood,
  so that ``log p(y)`` is a density and bits/dim bound the 8-bit data's.

Loss: the batch mean negative ELBO (analytic KL, one reparameterised sample), or with
``loss.iwae_k = k > 1`` the negative IWAE bound ``−L_k``. The CVAE (``model.conditional``)
uses the labels only for its prior mean, as the author's cvae_keras.py; its nats are
``−log p(x | y)`` bounds.

Evaluation on the test split, per image: ``test_nelbo`` (nats) and ``test_nelbo_bpd``,
then ``test_iwae{k}`` / ``test_iwae{k}_bpd`` for each ``k`` in ``eval.iwae_k`` (−L_k, a
tighter bound on −log p(x)); ``samples.png`` (prior samples; a CVAE draws column ``c``
from class ``c``) and ``reconstructions.png`` (rows of test images, each followed by a row
of their reconstructions from the posterior mean) in the workdir.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from kernels.checks import argument_error as _error
from zoo.core.images import save_grid
from zoo.core.train import Task
from zoo.data.batching import fixed_size_chunks, shuffled_batches
from zoo.data.images import load_images
from zoo.vae import losses
from zoo.vae.models import CVAE, LOCATION_SCALE, VAE, ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder

KINDS = ("mlp", "conv")
BINARIZE = ("dynamic", "fixed", "none")


def make_model(config: ml_collections.ConfigDict, image_shape=(28, 28, 1)) -> VAE:
    m = config.model
    image_shape = tuple(int(s) for s in image_shape)
    h, w, c = image_shape
    out_shape = (h, w, 2 * c) if m.likelihood in LOCATION_SCALE and m.scale == "decoder" else image_shape
    if m.kind == "mlp":
        encoder = MLPEncoder(m.latent_dim, tuple(m.hidden))
        decoder = MLPDecoder(out_shape, tuple(m.hidden))
    elif m.kind == "conv":
        encoder = ConvEncoder(m.latent_dim, m.conv_filters, m.conv_levels)
        decoder = ConvDecoder(out_shape, m.conv_filters, m.conv_levels)
    else:
        raise _error("make_model", "config.model.kind", f"one of {KINDS}", repr(m.kind))
    kwargs = dict(encoder=encoder, decoder=decoder, image_shape=image_shape, latent_dim=m.latent_dim,
                  likelihood=m.likelihood, scale=m.scale, log_scale=m.log_scale, logvar_bound=m.logvar_bound,
                  log_scale_bound=m.log_scale_bound,
                  clamp=m.get("clamp", "soft"))  # fmt: skip  (configs without the key were trained soft)
    return CVAE(**kwargs, num_classes=m.num_classes) if m.conditional else VAE(**kwargs)


SCHEDULES = ("constant", "cosine")


def make_optimizer(config) -> optax.GradientTransformation:
    """``config.optim.name`` at ``learning_rate``, constant or (``schedule="cosine"``) decayed to 0
    over ``config.train.num_steps``, after an optional global-norm clip (``grad_clip > 0``)."""
    o = config.optim
    opt = {"adam": optax.adam, "rmsprop": optax.rmsprop}
    if o.name not in opt:
        raise _error("make_optimizer", "config.optim.name", f"one of {tuple(opt)}", repr(o.name))
    schedule = o.get("schedule", "constant")
    if schedule not in SCHEDULES:
        raise _error("make_optimizer", "config.optim.schedule", f"one of {SCHEDULES}", repr(schedule))
    lr = o.learning_rate
    if schedule == "cosine":
        lr = optax.cosine_decay_schedule(o.learning_rate, max(int(config.train.num_steps), 1))
    parts = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip > 0 else []
    return optax.chain(*parts, opt[o.name](lr))


def check_data_and_likelihood(config, fn: str = "vae task", continuous=LOCATION_SCALE) -> None:
    """``data.binarize`` is known and ``model.likelihood`` fits it: ``"bernoulli"`` for binarised
    pixels, one of ``continuous`` for dequantised ones (also the NVAE task's check)."""
    d, m = config.data, config.model
    if d.binarize not in BINARIZE:
        raise _error(fn, "config.data.binarize", f"one of {BINARIZE}", repr(d.binarize))
    want = tuple(continuous) if d.binarize == "none" else ("bernoulli",)
    if m.likelihood not in want:
        expected = repr(want[0]) if len(want) == 1 else f"one of {want}"
        raise _error(fn, "config.model.likelihood",
                     f"{expected} with data.binarize={d.binarize!r} (binarised pixels take a Bernoulli decoder, "
                     f"dequantised ones a density: {', '.join(continuous)})", repr(m.likelihood))  # fmt: skip


def check_config(config) -> None:
    check_data_and_likelihood(config)
    if config.loss.iwae_k < 1:
        raise _error("vae task", "config.loss.iwae_k", "an integer >= 1", config.loss.iwae_k)
    if any(int(k) < 1 for k in config.eval.iwae_k):
        raise _error("vae task", "config.eval.iwae_k", "integers >= 1", tuple(config.eval.iwae_k))


def model_input(images, key, binarize: str):
    """uint8 images (or {0, 1} for ``"fixed"``) -> the float32 ``x`` the model scores."""
    if binarize == "dynamic":
        return jax.random.bernoulli(key, jnp.asarray(images, jnp.float32) / 255.0).astype(jnp.float32)
    if binarize == "fixed":
        return jnp.asarray(images, jnp.float32)
    u = jnp.minimum(jax.random.uniform(key, jnp.shape(images)), 1.0 - 2.0**-8)
    return (jnp.asarray(images, jnp.float32) + u) / 256.0


def binarize_once(images: np.ndarray, seed: int) -> np.ndarray:
    """A fixed binarisation ``x ~ Bernoulli(pixel/255)`` as uint8 {0, 1}."""
    rng = np.random.default_rng(seed)
    return (rng.random(images.shape, dtype=np.float32) < images.astype(np.float32) / 255.0).astype(np.uint8)


def per_example_loss(model, params, images, labels, key, binarize: str, iwae_k: int):
    """``[B]`` training objective: negative ELBO, or ``−L_k`` for ``iwae_k > 1``."""
    data_key, sample_key = jax.random.split(key)
    x = model_input(images, data_key, binarize)
    variables = {"params": params}
    if iwae_k > 1:
        return model.apply(variables, x, sample_key, iwae_k, labels, method="negative_iwae")
    return model.apply(variables, x, sample_key, labels, method="negative_elbo")


@functools.lru_cache(maxsize=16)
def _jitted_eval(model, binarize, ks):
    """``(params, images, labels, key) -> [1 + len(ks), B]``: −ELBO, then −L_k for each ``k``
    (one compiled function for the whole evaluation; ``ks`` a tuple of ints)."""

    def fn(params, images, labels, key):
        x = model_input(images, jax.random.fold_in(key, 0), "fixed" if binarize != "none" else "none")
        sample_key = jax.random.fold_in(key, 1)
        v = {"params": params}
        rows = [model.apply(v, x, sample_key, labels, method="negative_elbo")]
        rows += [model.apply(v, x, sample_key, k, labels, method="negative_iwae") for k in ks]
        return jnp.stack(rows)

    return jax.jit(fn)


def padded_batch_means(fn, arrays, batch_size: int, seed: int) -> np.ndarray:
    """Per-example means of ``fn(*chunks, key) -> [R, B]`` over equal-length ``arrays``, in
    fixed-size batches (the last padded with zeros, so one shape is compiled; padded columns
    are dropped), batch starting at ``i`` with key ``fold_in(key(seed), i)``. Returns ``[R]``."""
    total, key = 0.0, jax.random.key(seed)
    for i, n, chunks in fixed_size_chunks(arrays, batch_size):
        total = total + np.asarray(jnp.sum(fn(*chunks, jax.random.fold_in(key, i))[:, :n], axis=1), np.float64)
    return total / len(arrays[0])


def test_nats(model, params, images, labels, binarize, ks, batch_size, seed) -> np.ndarray:
    """Per-image means over ``images``: ``[−ELBO, −L_k for k in ks]`` (nats), via
    :func:`padded_batch_means`."""
    fn = _jitted_eval(model, binarize, tuple(int(k) for k in ks))
    return padded_batch_means(lambda x, y, key: fn(params, x, y, key), (images, labels), batch_size, seed)


@functools.lru_cache(maxsize=16)
def _jitted_init(model):
    return jax.jit(model.init)


@functools.lru_cache(maxsize=16)
def _jitted_images(model, num_samples):
    """``(params, key, labels, x) -> (prior samples, reconstructions)`` in [0, 1], one compile."""

    def fn(params, key, labels, x, x_labels):
        v = {"params": params}
        return (model.apply(v, key, num_samples, labels, method="sample"),
                model.apply(v, x, x_labels, method="reconstruct"))  # fmt: skip

    return jax.jit(fn)


def to_uint8(images01) -> np.ndarray:
    return np.clip(np.round(np.asarray(images01, np.float32) * 255.0), 0, 255).astype(np.uint8)


def save_images(model, params, test_x, test_labels, workdir: Path, num_samples: int, num_recon: int, seed: int,
                conditional: bool, num_classes: int):  # fmt: skip
    """``samples.png`` (prior; a CVAE's column c is class c) and ``reconstructions.png``."""
    columns = num_classes if conditional else 8
    labels = jnp.arange(num_samples) % num_classes if conditional else None
    samples, recon = _jitted_images(model, num_samples)(params, jax.random.key(seed), labels, test_x[:num_recon],
                                                        test_labels[:num_recon])  # fmt: skip
    save_grid(to_uint8(samples), Path(workdir) / "samples.png", columns=columns)
    save_reconstruction_grid(test_x[:num_recon], recon, Path(workdir) / "reconstructions.png")


def save_reconstruction_grid(x, recon, path: Path, columns: int = 8):
    """Rows of ``columns`` images in [0, 1], each followed by the row of their reconstructions."""
    x, recon = np.asarray(x), np.asarray(recon)
    rows = []
    for i in range(0, len(x), columns):
        rows += [x[i : i + columns], recon[i : i + columns]]
    save_grid(to_uint8(np.concatenate(rows)), path, columns=columns)


def load_split(config, split):
    d = config.data
    limit = d.train_limit if split == "train" else d.test_limit
    return load_images(d.name, split, data_dir=d.data_dir or None, limit=limit)


def load_data(config):
    """``((train_images, train_labels), (test_images, test_labels))`` as the task uses them:
    uint8 pixels, or {0, 1} where binarised once (``"fixed"``: both splits; ``"dynamic"``:
    the test split, with ``binarize_seed + 1``)."""
    d = config.data
    train, test = load_split(config, "train"), load_split(config, "test")
    if d.binarize == "fixed":
        train = (binarize_once(train[0], d.binarize_seed), train[1])
    if d.binarize in ("fixed", "dynamic"):
        test = (binarize_once(test[0], d.binarize_seed + 1), test[1])
    return train, test


def get_task(config: ml_collections.ConfigDict, workdir: Path | None) -> Task:
    check_config(config)
    d, e = config.data, config.eval
    (train_images, train_labels), (test_images, test_labels) = load_data(config)
    model = make_model(config, train_images.shape[1:])
    num_dims = int(np.prod(train_images.shape[1:]))
    num_bins = 256 if d.binarize == "none" else 0
    steps_per_epoch = len(train_images) // d.batch_size
    if steps_per_epoch == 0:
        expected = f"at most the {len(train_images)} training images"
        raise _error("vae task", "config.data.batch_size", expected, d.batch_size)
    conditional = bool(config.model.conditional)

    def init(key):
        x = jnp.zeros((2, *train_images.shape[1:]), jnp.float32)
        labels = jnp.zeros((2,), jnp.int32)
        return _jitted_init(model)(key, x, jax.random.key(0), labels)["params"]

    def loss_fn(params, batch, key):
        labels = batch["labels"] if conditional else None
        nats = per_example_loss(model, params, batch["images"], labels, key, d.binarize, config.loss.iwae_k)
        loss = jnp.mean(nats)
        return loss, {"nats": loss, "bpd": losses.bits_per_dim(loss, num_dims, num_bins=num_bins)}

    def train_batches(start_step):
        for _, idx in shuffled_batches(len(train_images), d.batch_size, config.seed, start_step):
            yield {"images": train_images[idx], "labels": train_labels[idx]}

    def evaluate(params):
        ks = tuple(int(k) for k in e.iwae_k)
        nats = test_nats(model, params, test_images, test_labels, d.binarize, ks, d.eval_batch_size, e.noise_seed)
        out = {}
        for name, value in zip(["test_nelbo"] + [f"test_iwae{k}" for k in ks], nats):
            out[name] = float(value)
            out[f"{name}_bpd"] = float(losses.bits_per_dim(value, num_dims, num_bins=num_bins))
        if workdir is not None:
            x = model_input(test_images[: e.num_reconstructions], jax.random.key(e.noise_seed),
                            "fixed" if d.binarize != "none" else "none")  # fmt: skip
            save_images(model, params, x, test_labels[: e.num_reconstructions], workdir, e.num_samples,
                        e.num_reconstructions, e.noise_seed, conditional, config.model.num_classes)  # fmt: skip
        return out

    return Task(init, make_optimizer(config), loss_fn, train_batches, evaluate)
