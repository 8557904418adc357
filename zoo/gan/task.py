"""``zoo train dcgan | mlp_gan``: data, the GAN update as a :class:`zoo.core.train.Task`, and
evaluation (sample grids, classifier FID of the raw and the EMA generator).

Evaluation draws ``eval.num_samples`` images from fixed noise and scores them against the
test split with :mod:`zoo.gan.evaluation` (a classifier trained in the zoo on the same data
set, cached after its first use): ``fid_classifier`` / ``classifier_score`` for the raw
generator, ``*_ema`` for its weight EMA. With ``eval.inception_weights`` (pytorch-fid's
weights file) the real Inception FID and Inception score are added: ``fid_inception``,
``inception_score`` (see :mod:`zoo.gan.inception`). A generator with BatchNorm samples with batch
statistics (train mode, the statistics discarded): its running averages belong to the raw
weights, not to the EMA. Grids ``samples.png`` and ``samples_ema.png`` go to the run dir.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from zoo.core.train import Task
from zoo.data.batching import shuffled_batches
from zoo.data.images import load_images
from zoo.gan import evaluation, inception
from zoo.gan.models import make_encoder, make_models
from zoo.gan.train import init_variables, make_optimizer, make_players, make_spec, make_update


PIXEL_RANGES = ("symmetric", "unit")


def check_pixel_range(pixel_range: str) -> None:
    if pixel_range not in PIXEL_RANGES:
        raise ValueError(f"model.pixel_range must be one of {PIXEL_RANGES}; got {pixel_range!r}")


def to_model_range(images_uint8, pixel_range: str = "symmetric"):
    """uint8 pixels -> float32 on ``[−1, 1]`` (``"symmetric"``) or ``[0, 1]`` (``"unit"``,
    the author's MLP GAN: background pixels are 0, which his ``U(−0.05, 0.05)``-initialised
    ReLU critic relies on)."""
    check_pixel_range(pixel_range)
    x = images_uint8.astype(jnp.float32) / 255.0
    return x if pixel_range == "unit" else 2.0 * x - 1.0


def to_symmetric(samples, pixel_range: str) -> np.ndarray:
    """Generator samples on the model's range -> ``[−1, 1]`` (what evaluation takes)."""
    return np.asarray(samples) * 2.0 - 1.0 if pixel_range == "unit" else np.asarray(samples)


def load_train_images(config) -> tuple[np.ndarray, int]:
    """``(images, native side)``: the training split, resized (bilinear) to
    ``model.image_size`` when it differs from the data set's side."""
    d, m = config.data, config.model
    images, _ = load_images(d.name, "train", data_dir=d.data_dir or None, limit=d.train_limit)
    if images.shape[-1] != m.channels:
        raise ValueError(f"model.channels is {m.channels} but data set {d.name!r} has {images.shape[-1]} channels")
    return resize_uint8(images, m.image_size), images.shape[1]


@functools.lru_cache(maxsize=4)
def _bilinear_resize(side: int):
    # One jitted function per target side, kept across calls (each evaluation of a 64×64 run resizes).
    return jax.jit(lambda x: jax.image.resize(x.astype(jnp.float32), (x.shape[0], side, side, x.shape[3]), "bilinear"))


def resize_uint8(images: np.ndarray, side: int, chunk: int = 2000) -> np.ndarray:
    """uint8 ``[N, H, W, C]`` -> ``[N, side, side, C]`` (bilinear, rounded; the input itself
    when it already has that size), ``chunk`` images per device call."""
    if images.shape[1] == side and images.shape[2] == side:
        return images
    resize = _bilinear_resize(side)
    out = [np.asarray(resize(images[i : i + chunk])) for i in range(0, len(images), chunk)]
    return np.clip(np.rint(np.concatenate(out)), 0, 255).astype(np.uint8)


def build(config):
    """``((generator, discriminator, encoder or None), players, spec, tx)`` for a config."""
    modules = make_models(config.model)
    if config.gan.penalty != "none" and config.model.d_norm == "batch":
        raise ValueError(
            "gradient penalties need per-example discriminator outputs: model.d_norm 'batch' mixes "
            f"examples; use 'none' or 'spectral' with gan.penalty {config.gan.penalty!r}"
        )
    encoder = make_encoder(config.model) if config.gan.encoder_weight else None
    players = make_players(*modules, config.model.z_dim, config.model.z_dist, encoder)
    return (*modules, encoder), players, make_spec(players, config.gan), make_optimizer(config.optim)


@functools.lru_cache(maxsize=4)
def _jitted_sampler(generator, players):
    def sample(params_g, state_g, key, n):
        z = players.sample_z(key, n)
        return players.generate(params_g, state_g, z, True)[0]

    return jax.jit(sample, static_argnums=3)


def generate_samples(generator, players, params_g, state_g, key, num: int, batch_size: int) -> np.ndarray:
    """``num`` images ``[num, S, S, C]`` on the model's pixel range, in batches of ``batch_size``
    (G in train mode: BatchNorm uses each batch's statistics, which are discarded)."""
    sample = _jitted_sampler(generator, players)
    chunks = [sample(params_g, state_g, jax.random.fold_in(key, i), batch_size) for i in range(-(-num // batch_size))]
    return np.concatenate([np.asarray(c) for c in chunks])[:num]


def get_task(config: ml_collections.ConfigDict, workdir: Path | None) -> Task:
    d, m = config.data, config.model
    train_images, native_side = load_train_images(config)
    (generator, discriminator, encoder), players, spec, tx = build(config)
    per_step = d.batch_size * (spec.n_critic if spec.update == "alternating" else 1)
    steps_per_epoch = len(train_images) // per_step
    if steps_per_epoch == 0:
        raise ValueError(f"data.batch_size {d.batch_size} × {spec.n_critic} critic steps exceeds the {len(train_images)} training images")
    image_shape = (m.image_size, m.image_size, m.channels)
    check_pixel_range(m.pixel_range)
    update = make_update(spec, tx)

    init_all = jax.jit(lambda key: init_variables((generator, discriminator), key, image_shape, m.z_dim, encoder))
    pending = {}  # init(key) and init_model_state(key) get the same key: initialise once

    def init(key):
        pending["variables"] = init_all(key)
        return pending["variables"][0]

    def init_model_state(key):
        return (pending.pop("variables", None) or init_all(key))[1]

    def train_batches(start_step):
        for _, idx in shuffled_batches(len(train_images), per_step, config.seed, start_step):
            yield {"images": train_images[idx]}

    def task_update(state, batch, key):
        return update(state, {"images": to_model_range(batch["images"], m.pixel_range)}, key)

    @functools.cache
    def inception_reference():
        e = config.eval
        return inception.get_inception_reference(
            e.inception_weights, d.name, d.data_dir or None, test_limit=e.reference_test_limit, side=e.inception_side
        )

    def evaluate(variables_):
        e = config.eval
        params, model_state = variables_["params"], variables_["model_state"]
        reference = evaluation.get_reference(
            d.name, d.data_dir or None, steps=e.reference_steps or None,
            train_limit=e.reference_train_limit, test_limit=e.reference_test_limit,
        )  # fmt: skip
        key = jax.random.key(e.noise_seed)
        metrics = {}
        for suffix, params_g in (("", params["g"]), ("_ema", model_state["ema_g"])):
            samples = generate_samples(generator, players, params_g, model_state["g"], key, e.num_samples, e.batch_size)
            samples = to_symmetric(samples, m.pixel_range)
            if workdir is not None:
                evaluation.save_sample_grid(samples[: e.grid], Path(workdir) / f"samples{suffix}.png")
            if m.image_size != native_side:  # the reference classifier sees the data set's own size
                samples = np.asarray(to_model_range(resize_uint8(evaluation.to_uint8(samples), native_side)))
            scores = evaluation.evaluate_samples(reference, samples, e.batch_size)
            if e.inception_weights:
                scores.update(inception.inception_fid(inception_reference(), samples, e.inception_batch_size, e.inception_side))
            metrics.update({f"{k}{suffix}": v for k, v in scores.items()})
        return metrics

    return Task(
        init, tx, None, train_batches, evaluate,
        init_model_state=init_model_state, update=task_update,
        eval_variables=lambda s: {"params": s.params, "model_state": s.model_state},
    )  # fmt: skip
