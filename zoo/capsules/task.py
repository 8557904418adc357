"""Capsule image classification as a :class:`zoo.core.Task`.

One task serves the four models (``config.model.kind``):

* ``capsnet``: margin loss (λ 0.5) + 0.0005 × the summed squared reconstruction error;
  evaluation also writes a PNG grid of test images and their reconstructions;
* ``su_capsule`` / ``cnn_baseline``: the author's margin loss (λ 0.25);
* ``em_capsnet``: the spread loss, its margin growing linearly from ``loss.margin_start``
  to ``loss.margin_end`` over ``loss.margin_steps`` (carried in the batch, one value per
  example, so the loss stays a function of ``(params, batch, key)``).

With ``data.two_digit`` the evaluation adds the author's test (post 4819): every test
image stacked vertically on a random test image of another class (56×28), scored by
whether the top-2 classes are the two labels (``two_digit_top2``) and, in addition,
whether the second score exceeds 0.5 (``two_digit_top2_confident``).
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from zoo.capsules import model as capsule_models
from zoo.capsules.losses import margin_loss, spread_loss
from zoo.core.train import Task
from zoo.data.batching import shuffled_batches
from zoo.data.images import IMAGE_DATASETS, load_images

KINDS = ("capsnet", "su_capsule", "cnn_baseline", "em_capsnet")


def make_model(config: ml_collections.ConfigDict):
    m = config.model
    num_classes = IMAGE_DATASETS[config.data.name].num_classes
    if m.kind == "capsnet":
        # older runs' configs lack the CPU settings: the model's defaults then apply
        cpu_settings = {k: m[k] for k in ("routing_chunk", "bias_grad_as_matmul") if k in m}
        return capsule_models.CapsNet(
            num_classes, m.conv_features, m.primary_types, m.primary_dim, m.class_dim, m.num_iters, m.routing,
            tuple(m.decoder_features), **cpu_settings,
        )  # fmt: skip
    if m.kind == "su_capsule":
        return capsule_models.SuCapsNet(num_classes, m.class_dim, m.num_iters, m.routing)
    if m.kind == "cnn_baseline":
        return capsule_models.CNNBaseline(num_classes, m.hidden)
    if m.kind == "em_capsnet":
        return capsule_models.EMCapsNet(
            num_classes, m.conv_features, m.primary_types, m.caps1_types, m.caps2_types, m.num_iters,
            m.inverse_temperature,
        )  # fmt: skip
    raise ValueError(f"config.model.kind must be one of {KINDS}; got {m.kind!r}")


def scores_fn(model):
    """``scores(params, images) -> [B, K]`` class scores in [0, 1], for every kind."""

    def scores(params, images):
        out = model.apply({"params": params}, images)
        return out[0] if isinstance(model, capsule_models.CapsNet) else out

    return scores


# --------------------------------------------------------------------------- #
# Data
# --------------------------------------------------------------------------- #


def to_float(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32) / 255.0


def random_shift(images: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Translates each image by up to ``max_shift`` pixels per axis, zero fill (the paper's
    only augmentation)."""
    if max_shift == 0:
        return images
    b, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))
    dy, dx = rng.integers(0, 2 * max_shift + 1, size=(2, b))
    return np.stack([padded[i, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])


def random_flip(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mirrors each ``[B, H, W, C]`` image left-right with probability 1/2 (``data.flip``: garments
    and shoes are left-right symmetric as a class; digits are not, so it is off by default)."""
    flip = rng.random(len(images)) < 0.5
    return np.where(flip[:, None, None, None], images[:, :, ::-1], images)


def stack_two_digits(images: np.ndarray, labels: np.ndarray, seed: int = 0):
    """Post 4819's test set: image i on top of a random image of a different label.

    Returns ``(images [N, 2H, W, C], label pairs [N, 2])``; fixed by ``seed``.
    """
    rng = np.random.default_rng(seed)
    partners = np.empty(len(labels), np.int64)
    for i, label in enumerate(labels):
        candidates = np.flatnonzero(labels != label)
        partners[i] = candidates[rng.integers(len(candidates))]
    stacked = np.concatenate([images, images[partners]], axis=1)
    return stacked, np.stack([labels, labels[partners]], axis=1)


def two_digit_accuracy(scores: np.ndarray, pairs: np.ndarray) -> dict[str, float]:
    """Both of the author's accuracies: the top-2 classes equal the label pair; and that
    plus the second-highest score above 0.5."""
    top2 = np.argsort(-scores, axis=1)[:, :2]
    hit = np.sort(top2, axis=1) == np.sort(pairs, axis=1)
    hit = hit.all(axis=1)
    second = np.take_along_axis(scores, top2[:, 1:], axis=1)[:, 0]
    return {"two_digit_top2": float(hit.mean()), "two_digit_top2_confident": float((hit & (second > 0.5)).mean())}


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of uint8 ``[N, H, W, C]`` to ``size × size`` (smallNORB: 96 -> 32)."""
    import jax.image

    out = jax.image.resize(images.astype(np.float32), (len(images), size, size, images.shape[-1]), "bilinear")
    return np.clip(np.rint(np.asarray(out)), 0, 255).astype(np.uint8)


def load_split(config, split):
    d = config.data
    limit = d.train_limit if split == "train" else d.test_limit
    images, labels = load_images(d.name, split, data_dir=d.data_dir or None, limit=limit)
    if d.get("resize", 0) and images.shape[1:3] != (d.resize, d.resize):
        images = resize_images(images, d.resize)
    return images, labels


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
    o = config.optim
    schedule = optax.exponential_decay(o.learning_rate, max(1, steps_per_epoch), o.decay_per_epoch)
    return optax.chain(optax.clip_by_global_norm(o.grad_clip), optax.adam(schedule))


# --------------------------------------------------------------------------- #
# Task
# --------------------------------------------------------------------------- #


def loss_and_metrics(model, config, params, batch):
    images, labels = batch["images"], batch["labels"]
    kind = config.model.kind
    if kind == "capsnet":
        scores, recon = model.apply({"params": params}, images, labels)
        classify = margin_loss(scores, labels, down_weight=config.loss.down_weight)
        recon_err = jnp.mean(jnp.sum(jnp.square(recon - images), axis=(1, 2, 3)))
        loss = classify + config.loss.reconstruction_weight * recon_err
        extra = {"margin_loss": classify, "reconstruction_sse": recon_err}
    elif kind == "em_capsnet":
        scores = model.apply({"params": params}, images)
        loss = spread_loss(scores, labels, batch["margin"])
        extra = {"spread_margin": jnp.mean(batch["margin"])}
    else:
        scores = model.apply({"params": params}, images)
        loss = margin_loss(scores, labels, down_weight=config.loss.down_weight)
        extra = {}
    accuracy = jnp.mean((jnp.argmax(scores, -1) == labels).astype(jnp.float32))
    return loss, {"accuracy": accuracy, **extra}


def spread_margin(config, step: int) -> float:
    s = config.loss
    frac = min(1.0, step / max(1, s.margin_steps))
    return s.margin_start + (s.margin_end - s.margin_start) * frac


def get_task(config: ml_collections.ConfigDict, workdir: Path) -> Task:
    d = config.data
    train_images, train_labels = load_split(config, "train")
    test_images, test_labels = load_split(config, "test")
    model = make_model(config)
    steps_per_epoch = len(train_labels) // d.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"data.batch_size {d.batch_size} exceeds the {len(train_labels)} training images")

    def init(key):
        dummy = jnp.zeros((1, *train_images.shape[1:]), jnp.float32)
        args = (dummy, jnp.zeros((1,), jnp.int32)) if config.model.kind == "capsnet" else (dummy,)
        return model.init(key, *args)["params"]

    def loss_fn(params, batch, key):
        del key  # no dropout or sampling in these models
        return loss_and_metrics(model, config, params, batch)

    def train_batches(start_step):
        for step, idx in shuffled_batches(len(train_labels), d.batch_size, config.seed, start_step):
            images = random_shift(train_images[idx], d.shift, np.random.default_rng([config.seed, step, 1]))
            if d.get("flip", False):  # its own stream, so the shifts do not depend on it
                images = random_flip(images, np.random.default_rng([config.seed, step, 2]))
            batch = {"images": to_float(images), "labels": train_labels[idx]}
            if config.model.kind == "em_capsnet":
                batch["margin"] = np.full(len(idx), spread_margin(config, step), np.float32)
            yield batch

    def evaluate(params):
        return evaluate_images(config, model, params, test_images, test_labels, workdir)

    return Task(init, make_optimizer(config, steps_per_epoch), loss_fn, train_batches, evaluate)


@functools.lru_cache(maxsize=8)
def _jitted_scores(model):
    return jax.jit(scores_fn(model))


@functools.lru_cache(maxsize=8)
def _jitted_apply(model):
    return jax.jit(model.apply)


def predict_scores(model, params, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Class scores for uint8 images, in fixed-size batches (the last one padded)."""
    scores = _jitted_scores(model)
    out = []
    for i in range(0, len(images), batch_size):
        chunk = images[i : i + batch_size]
        pad = batch_size - len(chunk)
        x = to_float(np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)]) if pad else chunk)
        out.append(np.asarray(scores(params, x))[: len(chunk)])
    return np.concatenate(out)


def evaluate_images(config, model, params, images, labels, workdir=None) -> dict[str, float]:
    bs = config.data.eval_batch_size
    scores = predict_scores(model, params, images, bs)
    metrics = {"test_accuracy": float(np.mean(np.argmax(scores, -1) == labels))}
    if config.data.two_digit:
        stacked, pairs = stack_two_digits(images, labels, config.data.two_digit_seed)
        metrics.update(two_digit_accuracy(predict_scores(model, params, stacked, bs), pairs))
    if config.model.kind == "capsnet" and workdir is not None:
        save_reconstructions(model, params, images[:32], Path(workdir) / "reconstructions.png")
    return metrics


def save_reconstructions(model, params, images: np.ndarray, path: Path):
    """Top row(s): test images; below: the decoder's output from the predicted capsule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, recon = _jitted_apply(model)({"params": params}, to_float(images))
    recon = np.asarray(recon)
    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(n * 0.5, 1.2))
    for i in range(n):
        for row, img in enumerate((to_float(images[i]), recon[i])):
            axes[row, i].imshow(img[..., 0], cmap="gray", vmin=0, vmax=1)
            axes[row, i].axis("off")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def restore_run(run_dir: Path):
    """``(config, task, params, step)`` of a run directory's latest checkpoint."""
    from zoo import registry

    return registry.restore_run(run_dir)


def classified_correctly(run_dir: Path, *, ema: bool = False) -> tuple[np.ndarray, int]:
    """``(correct [N] bool, step)``: which test images the latest checkpoint of a capsule-family
    run (``capsnet``, ``su_capsule``, ``cnn_baseline``, ``em_capsnet``) classifies correctly, in
    the test split's order; with ``ema=True`` its weight EMA's (a run trained with
    ``train.ema_decay`` > 0). For paired comparisons (:func:`zoo.core.stats.paired_accuracy`).

    Each evaluation is also saved in the run directory (``test_correct.npz``, ``test_correct_ema.npz``:
    the step and the packed bits, 2 kB for 10,000 images), and a directory with no checkpoint
    but such a file (a run's record copied without its checkpoints) is scored from it, so paired
    tests outlive the checkpoints. A directory with checkpoints is always re-evaluated."""
    from zoo import registry
    from zoo.core.checkpoint import saved_steps
    from zoo.core.config import read_config

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise ValueError(f"classified_correctly: `run_dir` must be a run directory (with config.json); got {run_dir}")
    config = read_config(run_dir / "config.json")
    family = registry.spec(config.model_name).family
    if family != "capsules":
        raise ValueError(f"classified_correctly: `run_dir` must be a capsule-family run; got a {family} run ({config.model_name})")
    decay = config.train.get("ema_decay", 0.0)
    if ema and not decay:
        raise ValueError(f"classified_correctly: `ema=True` needs a run trained with train.ema_decay > 0; {run_dir} has {decay}")
    record = run_dir / ("test_correct_ema.npz" if ema else "test_correct.npz")
    if not saved_steps(run_dir / "checkpoints") and record.exists():
        with np.load(record) as saved:
            n = int(saved["n"])
            return np.unpackbits(saved["bits"], count=n).astype(bool), int(saved["step"])
    config, _, variables, step = registry.restore_run(run_dir)
    params = (variables[1] if ema else variables[0]) if decay else variables
    images, labels = load_split(config, "test")
    scores = predict_scores(make_model(config), params, images, config.data.eval_batch_size)
    correct = np.argmax(scores, -1) == labels
    np.savez(record, step=step, n=correct.size, bits=np.packbits(correct))
    return correct, step
