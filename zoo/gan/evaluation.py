"""GAN evaluation without network: Fréchet distance and an inception-style score on the
features of a small classifier trained in the zoo on the same data set.

The Inception network behind the usual FID is a download (and an ImageNet model looking
at 28×28 grey digits); here the feature extractor is :class:`FeatureClassifier`, trained
once per data set by :func:`get_reference` and cached on disk. The reference statistics
are those of the data set's *test* split, so a generator trained on the train split is
compared with images it never saw. The numbers are not comparable with published FIDs,
and :func:`metric_names` names them for what they are, e.g.
``"FID (Fashion-MNIST classifier)"``.

* :func:`feature_statistics`, :func:`frechet_distance`: ``FD = ‖μ1 − μ2‖² + tr(Σ1 + Σ2 −
  2 (Σ1 Σ2)^{1/2})`` in float64 through two symmetric eigen-decompositions (no
  ``scipy.linalg.sqrtm``).
* :func:`classifier_score`: the inception-score formula ``exp(E_x KL(p(y|x) ‖ p(y)))`` on
  the classifier's softmax.
* :func:`evaluate_samples`: both metrics for generator samples in ``[−1, 1]``;
  :func:`real_data_fid`: the same FD for real images (e.g. train images), the floor a
  perfect generator would reach at that sample size.
* :func:`save_sample_grid`: a PNG grid of samples, for each evaluation.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from kernels.checks import argument_error as _error
from zoo.core.images import save_grid
from zoo.core.layers import Conv
from zoo.data.batching import fixed_size_chunks
from zoo.data.images import IMAGE_DATASETS, load_images
from zoo.data.sources import default_data_dir

Params = Any

# Bump when the classifier, its training or the statistics change: part of the cache key,
# so old cache files are never read for new settings.
REFERENCE_VERSION = 1

# Default training budget (see get_reference): at most 1,500 steps of 128 (3.2 epochs of
# Fashion-MNIST), and at most 10 epochs. Why the epoch cap: a classifier that memorises a
# small train set tells train images from test images, which inflates the FID of real
# (and of memorised) images. On mnist_5k (4,500 train images) the FD of all train images to
# the test statistics was 23.1 after 1,500 steps (43 epochs) and 8.1 after the default 351
# (10 epochs), at 96.2 vs 95.8 % test accuracy.
DEFAULT_STEPS = 1500
DEFAULT_MAX_EPOCHS = 10
DEFAULT_BATCH_SIZE = 128
DEFAULT_LEARNING_RATE = 2e-3

# Human names of the data sets, for metric names in tables.
DATASET_TITLES = {
    "mnist_5k": "MNIST-5k",
    "fashion_mnist": "Fashion-MNIST",
    "tfds:mnist": "MNIST",
    "tfds:fashion_mnist": "Fashion-MNIST",
    "tfds:smallnorb": "smallNORB",
}

# --------------------------------------------------------------------------- #
# Argument checks
# --------------------------------------------------------------------------- #


def _as_float64(fn, name, x, ndim, what):
    """``x`` as a float64 array of rank ``ndim`` with finite values, or a ValueError."""
    x = np.asarray(x)
    if x.ndim != ndim:
        raise _error(fn, name, f"{what} (rank {ndim})", f"shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise _error(fn, name, "numeric", f"dtype {x.dtype}")
    x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise _error(fn, name, "finite", f"{np.sum(~np.isfinite(x))} non-finite values")
    return x


def _log(message: str) -> None:
    print(f"[zoo.gan.evaluation] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- #
# Statistics and the two metrics (numpy, float64)
# --------------------------------------------------------------------------- #


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of feature vectors.

    Args:
      features: ``[N, D]`` with ``N > 1``.
    Returns:
      ``(mu [D], sigma [D, D])``, float64; ``sigma`` divides by ``N − 1`` like ``np.cov``.
    """
    fn = "feature_statistics"
    f = _as_float64(fn, "features", features, 2, "feature vectors of shape [N, D]")
    if f.shape[0] < 2:
        raise _error(fn, "features", "at least 2 rows (N > 1) for a covariance", f"shape {f.shape}")
    mu = f.mean(axis=0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def _check_stats(fn, mu, sigma, suffix):
    mu = _as_float64(fn, f"mu{suffix}", mu, 1, "a mean vector of shape [D]")
    sigma = _as_float64(fn, f"sigma{suffix}", sigma, 2, "a covariance of shape [D, D]")
    if sigma.shape != (mu.shape[0],) * 2:
        raise _error(
            fn, f"sigma{suffix}", f"shape [D, D] = {(mu.shape[0],) * 2} to match `mu{suffix}`", f"shape {sigma.shape}"
        )
    return mu, sigma


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """The symmetric square root of a PSD matrix through ``eigh``. Eigenvalues that round
    to tiny negatives (a rank-deficient covariance, e.g. fewer samples than dimensions or
    dead ReLU features) are clipped at 0: the true matrix is PSD, so they are zeros."""
    w, v = np.linalg.eigh((sigma + sigma.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between the Gaussians ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

    ``FD = ‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr (Σ1 Σ2)^{1/2}``, in float64. ``Σ1 Σ2`` is not
    symmetric, but it has the eigenvalues of ``S Σ2 S`` with ``S = Σ1^{1/2}`` (``AB`` and
    ``BA`` share eigenvalues), which is symmetric PSD; so ``tr (Σ1 Σ2)^{1/2} =
    Σ sqrt(eigvalsh(S Σ2 S))``, with no complex parts and no ``sqrtm`` iteration. Tiny
    negative eigenvalues from rounding are clipped at 0 (see :func:`_psd_sqrt`), and so is
    a result that rounds below 0 for (near-)identical statistics.

    Args:
      mu1, mu2: ``[D]``.
      sigma1, sigma2: ``[D, D]``, symmetric PSD (covariances).
    Returns:
      The distance, a Python float >= 0.
    """
    fn = "frechet_distance"
    mu1, sigma1 = _check_stats(fn, mu1, sigma1, "1")
    mu2, sigma2 = _check_stats(fn, mu2, sigma2, "2")
    if mu1.shape != mu2.shape:
        raise _error(fn, "mu2", f"shape {mu1.shape} like `mu1`", f"shape {mu2.shape}")
    s = _psd_sqrt(sigma1)
    m = s @ sigma2 @ s
    trace_sqrt = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)))
    diff = mu1 - mu2
    fd = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt
    return float(max(fd, 0.0))


def classifier_score(probs, num_splits: int = 1) -> float:
    """The inception-score formula ``exp(E_x KL(p(y|x) ‖ p(y)))`` on class probabilities.

    ``p(y)`` is the mean of ``p(y|x)`` over the split. As in Salimans et al. (2016) the
    samples are cut into ``num_splits`` near-equal splits and the scores averaged. The
    score lies in ``[1, K]``: 1 when every sample gets the same prediction, K for confident
    predictions spread evenly over the K classes. ``0·log 0`` counts as 0, so one-hot
    probabilities are fine.

    Args:
      probs: ``[N, K]``, rows non-negative and summing to 1 (a softmax).
      num_splits: 1 <= num_splits <= N.
    Returns:
      The mean score over the splits, a Python float.
    """
    fn = "classifier_score"
    p = _as_float64(fn, "probs", probs, 2, "class probabilities of shape [N, K]")
    if p.shape[0] == 0 or p.shape[1] == 0:
        raise _error(fn, "probs", "non-empty [N, K]", f"shape {p.shape}")
    if np.any(p < 0) or not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
        sums = p.sum(axis=1)
        got = f"row sums in [{sums.min():.4g}, {sums.max():.4g}], smallest value {p.min():.4g}"
        raise _error(fn, "probs", "rows of non-negative values summing to 1", got)
    if not 1 <= int(num_splits) <= p.shape[0]:
        raise _error(fn, "num_splits", f"in [1, N = {p.shape[0]}]", num_splits)
    scores = []
    for part in np.array_split(p, int(num_splits)):
        marginal = part.mean(axis=0)
        # Where p(y|x) > 0 the marginal is > 0 too; elsewhere the term is 0·log 0 = 0.
        positive = part > 0
        log_ratio = np.log(np.where(positive, part, 1.0)) - np.log(np.where(positive, marginal, 1.0))
        kl = np.sum(np.where(positive, part * log_ratio, 0.0), axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores))


# --------------------------------------------------------------------------- #
# The feature classifier
# --------------------------------------------------------------------------- #


def _max_pool2(x):
    """2×2 max pooling, stride 2, as a reshape and a max (odd edges dropped, like 'VALID')."""
    b, h, w, c = x.shape
    x = x[:, : h - h % 2, : w - w % 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class FeatureClassifier(nn.Module):
    """A small CNN: conv 3×3 (32) → ReLU → max-pool 2 → conv 3×3 stride 2 (64) → ReLU →
    dense ``features`` → ReLU (the features) → dense ``num_classes`` (the logits); a 28×28
    image becomes 14×14×32, then 7×7×64.

    No BatchNorm or dropout: the features are a deterministic function of the params and
    the image. Convolutions are :class:`zoo.core.layers.Conv` (a matmul on CPU).

    ``__call__(x [B, H, W, C] in [−1, 1]) -> (logits [B, num_classes], features [B, features])``.
    """

    num_classes: int = 10
    features: int = 128

    @nn.compact
    def __call__(self, x):
        x = _max_pool2(nn.relu(Conv(32, 3, padding="SAME", name="conv1")(x)))
        # Downsample in the second conv itself (one zero each side, stride 2: H -> ceil(H/2)),
        # not conv-then-pool: a quarter of the multiply-adds, the bulk of a training step.
        x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        x = nn.relu(Conv(64, 3, stride=2, name="conv2")(x))
        features = nn.relu(nn.Dense(self.features, name="hidden")(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.num_classes, name="logits")(features), features


def _model_for(params) -> FeatureClassifier:
    """The classifier whose parameters these are (sizes read off the dense layers)."""
    return FeatureClassifier(num_classes=params["logits"]["bias"].shape[0], features=params["hidden"]["bias"].shape[0])


def to_model_range(images_uint8):
    """Pixels ``[0, 255]`` -> ``[−1, 1]`` (the generators' tanh range), float32."""
    return np.asarray(images_uint8, np.float32) / 127.5 - 1.0


def to_uint8(samples) -> np.ndarray:
    """Samples in ``[−1, 1]`` -> uint8 pixels (clipped; NaN drawn black)."""
    x = np.nan_to_num(np.asarray(samples, np.float32), nan=-1.0, posinf=1.0, neginf=-1.0)
    return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def _check_labelled_images(fn, images, labels):
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise _error(fn, "images_uint8", "uint8 images of shape [N, H, W, C]", f"shape {images.shape}, dtype {images.dtype}")
    if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
        expected = f"integer labels of shape [N] = ({images.shape[0]},)"
        raise _error(fn, "labels", expected, f"shape {labels.shape}, dtype {labels.dtype}")
    return images, labels


def train_classifier(
    images_uint8,
    labels,
    *,
    num_classes: int,
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    seed: int = 0,
) -> Params:
    """Trains a :class:`FeatureClassifier` with Adam on softmax cross-entropy.

    Deterministic for a seed: the init key is ``jax.random.key(seed)`` and epoch ``e``
    visits the images in ``default_rng([seed, e]).permutation(N)`` order. The learning rate
    follows a cosine decay to 0 over ``steps`` (a better final model than a constant rate
    for the same budget).

    Args:
      images_uint8: ``[N, H, W, C]`` uint8.
      labels: ``[N]`` integers in ``[0, num_classes)``.
      num_classes, steps, batch_size, learning_rate, seed: as named; ``batch_size <= N``.
    Returns:
      The params (a dict for ``FeatureClassifier(num_classes).apply``).
    """
    fn = "train_classifier"
    images, labels = _check_labelled_images(fn, images_uint8, labels)
    if not 1 <= batch_size <= len(images):
        raise _error(fn, "batch_size", f"in [1, N = {len(images)}]", batch_size)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise _error(fn, "labels", f"in [0, num_classes = {num_classes})", f"range [{labels.min()}, {labels.max()}]")
    model = FeatureClassifier(num_classes=num_classes)
    optimizer, step = _train_step(model, float(learning_rate), int(steps))
    params = _jitted_init(model)(jax.random.key(seed), jnp.zeros((1, *images.shape[1:]), jnp.float32))["params"]
    opt_state = optimizer.init(params)
    # The whole set lives on the device as uint8 and is an argument of the step (a closure
    # would bake it into the compiled program as a constant); a step gathers its batch.
    all_images, all_labels = jnp.asarray(images), jnp.asarray(labels, jnp.int32)
    per_epoch = len(images) // batch_size
    for i in range(steps):
        epoch, offset = divmod(i, per_epoch)
        order = _epoch_order(seed, epoch, len(images))
        idx = order[offset * batch_size : (offset + 1) * batch_size]
        params, opt_state = step(params, opt_state, all_images, all_labels, idx)
    return jax.block_until_ready(params)


@functools.lru_cache(maxsize=4)
def _jitted_init(model: FeatureClassifier):
    return jax.jit(model.init)


@functools.lru_cache(maxsize=4)
def _train_step(model: FeatureClassifier, learning_rate: float, steps: int):
    """``(optimizer, step)``, with ``step(params, opt_state, images uint8 [N, H, W, C],
    labels [N], idx [B]) -> (params, opt_state)`` jitted; cached so repeated trainings with
    the same settings compile once."""
    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, max(1, steps)))

    def step(params, opt_state, images, labels, idx):
        x = images[idx].astype(jnp.float32) / 127.5 - 1.0

        def loss_fn(p):
            logits, _ = model.apply({"params": p}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels[idx]).mean()

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return optimizer, jax.jit(step)


@functools.lru_cache(maxsize=2)
def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


@functools.lru_cache(maxsize=8)
def _jitted_apply(model: FeatureClassifier):
    def outputs(params, x):
        logits, features = model.apply({"params": params}, x)
        return jax.nn.softmax(logits), features

    return jax.jit(outputs)


def classifier_outputs(params, images, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Softmax and features of the classifier over ``images`` in fixed-size batches.

    Args:
      params: :func:`train_classifier`'s.
      images: ``[N, H, W, C]`` float in ``[−1, 1]``.
      batch_size: images per call; the last batch is padded so only one shape compiles.
    Returns:
      ``(probs [N, K], features [N, D])``, float32 numpy.
    """
    fn = _jitted_apply(_model_for(params))
    probs, features = [], []
    for _, n, (chunk,) in fixed_size_chunks([images], batch_size):
        p, f = fn(params, chunk.astype(np.float32))
        probs.append(np.asarray(p[:n]))
        features.append(np.asarray(f[:n]))
    return np.concatenate(probs), np.concatenate(features)


# --------------------------------------------------------------------------- #
# The reference: classifier + test-split statistics, cached on disk
# --------------------------------------------------------------------------- #


class Reference(NamedTuple):
    """A trained feature classifier and the statistics of the test split under it.

    Attributes:
      dataset: the data set name (a key of ``zoo.data.images.IMAGE_DATASETS``).
      params: the :class:`FeatureClassifier` params.
      mu: ``[D]`` float64, mean of the test features.
      sigma: ``[D, D]`` float64, their unbiased covariance.
      test_accuracy: the classifier's accuracy on the test split.
      num_test: how many test images the statistics come from.
    """

    dataset: str
    params: Params
    mu: np.ndarray
    sigma: np.ndarray
    test_accuracy: float
    num_test: int


def default_cache_dir() -> Path:
    """``gan_reference`` next to the prepared data sets: ``~/.cache/zoo/gan_reference``, or
    beside ``$ZOO_DATA_DIR`` where that is set."""
    return default_data_dir().parent / "gan_reference"


def _cache_path(cache_dir: Path, settings: dict) -> Path:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir / f"{settings['dataset'].replace(':', '_').replace('/', '_')}-{digest}.npz"


def _save_reference(path: Path, reference: Reference, settings: dict) -> None:
    """Writes atomically: a temporary file in the same directory, then ``os.replace``, so a
    process racing to build the same reference never reads a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"params.{k}": np.asarray(v) for k, v in traverse_util.flatten_dict(reference.params, sep=".").items()}
    arrays.update(
        mu=reference.mu, sigma=reference.sigma, test_accuracy=np.float64(reference.test_accuracy),
        num_test=np.int64(reference.num_test), settings=np.str_(json.dumps(settings, sort_keys=True)),
    )  # fmt: skip
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_reference(path: Path, settings: dict) -> Reference | None:
    """The cached reference, or None if the file is missing, unreadable or for other settings."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if json.loads(str(z["settings"])) != settings:
                return None
            flat = {k.removeprefix("params."): jnp.asarray(z[k]) for k in z.files if k.startswith("params.")}
            return Reference(
                settings["dataset"], traverse_util.unflatten_dict(flat, sep="."), z["mu"], z["sigma"],
                float(z["test_accuracy"]), int(z["num_test"]),
            )  # fmt: skip
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        _log(f"ignoring unreadable cache file {path}: {e!r}")
        return None


def get_reference(
    dataset: str,
    data_dir: str | Path | None = None,
    *,
    cache_dir: str | Path | None = None,
    steps: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    seed: int = 0,
    train_limit: int = 0,
    test_limit: int = 0,
) -> Reference:
    """The evaluation reference of ``dataset``: from the cache, or trained and cached.

    Trains :func:`train_classifier` on the train split, then computes the test split's
    feature statistics and accuracy. The result is cached under
    ``cache_dir/<dataset>-<hash of the settings>.npz`` (default :func:`default_cache_dir`),
    so later calls with the same settings load it in well under a second.

    The default budget is :data:`DEFAULT_STEPS` steps or :data:`DEFAULT_MAX_EPOCHS`
    epochs, whichever is fewer. Measured on 2 CPU cores shared with other jobs (load ~5):
    Fashion-MNIST, 1,500 steps: 113 s, 91.2 % test accuracy, FD of 10,000 train images to
    the test statistics 0.26 (uniform noise: 575); mnist_5k, 351 steps: 48 s, 95.8 % on its
    500 test images, FD of its 4,500 train images 8.1 (noise: 2,226). With 500 test images
    for a 128-dimensional covariance, mnist_5k figures carry a large small-sample bias.

    Args:
      dataset: a key of ``zoo.data.images.IMAGE_DATASETS``.
      data_dir: where the prepared data sets live (``load_images``'s default if None).
      cache_dir: where references are cached.
      steps: training steps; None for the default budget above.
      batch_size, learning_rate, seed: :func:`train_classifier`'s.
      train_limit, test_limit: > 0 keeps the first images of a split (for tests).
    """
    if dataset not in IMAGE_DATASETS:
        raise _error("get_reference", "dataset", f"one of {sorted(IMAGE_DATASETS)}", repr(dataset))
    # The default budget enters the key as its rule, so the key is known before loading data.
    budget = int(steps) if steps is not None else f"min({DEFAULT_STEPS}, {DEFAULT_MAX_EPOCHS} epochs)"
    settings = {
        "version": REFERENCE_VERSION, "dataset": dataset, "steps": budget, "batch_size": int(batch_size),
        "learning_rate": float(learning_rate), "seed": int(seed), "train_limit": int(train_limit),
        "test_limit": int(test_limit),
    }  # fmt: skip
    path = _cache_path(Path(cache_dir) if cache_dir is not None else default_cache_dir(), settings)
    cached = _load_reference(path, settings)
    if cached is not None:
        return cached
    start = time.perf_counter()
    train_x, train_y = load_images(dataset, "train", data_dir=data_dir, limit=train_limit)
    test_x, test_y = load_images(dataset, "test", data_dir=data_dir, limit=test_limit)
    if steps is None:
        steps = min(DEFAULT_STEPS, DEFAULT_MAX_EPOCHS * len(train_x) // batch_size)
    _log(f"training the reference classifier for {dataset!r} ({steps} steps of {batch_size}); cache: {path}")
    num_classes = IMAGE_DATASETS[dataset].num_classes
    params = train_classifier(
        train_x, train_y, num_classes=num_classes, steps=steps, batch_size=batch_size, learning_rate=learning_rate, seed=seed
    )
    probs, features = classifier_outputs(params, to_model_range(test_x))
    mu, sigma = feature_statistics(features)
    accuracy = float(np.mean(probs.argmax(axis=1) == test_y))
    reference = Reference(dataset, params, mu, sigma, accuracy, len(test_x))
    _save_reference(path, reference, settings)
    _log(
        f"reference for {dataset!r}: test accuracy {accuracy:.4f} on {len(test_x)} images, {time.perf_counter() - start:.0f} s"
    )
    return reference


# --------------------------------------------------------------------------- #
# Metrics against the reference
# --------------------------------------------------------------------------- #


def metric_names(dataset: str) -> dict[str, str]:
    """Human names of :func:`evaluate_samples`' keys, saying which classifier they use."""
    title = DATASET_TITLES.get(dataset, dataset)
    return {
        "fid_classifier": f"FID ({title} classifier)",
        "classifier_score": f"classifier score ({title} classifier)",
        "real_data_fid": f"FID of real train images ({title} classifier)",
        "fid_inception": "FID (Inception v3, pytorch-fid weights)",
        "inception_score": "Inception score (Inception v3, pytorch-fid weights)",
    }


def _flat_size(h: int, w: int) -> int:
    """Length of the classifier's flattened conv output for ``H×W`` images: the pool
    floors (H//2), the padded stride-2 conv rounds up."""
    return -(-(h // 2) // 2) * -(-(w // 2) // 2) * 64


def _check_images_for(fn, name, images, params, *, min_count=2):
    """Rank-4 images whose channels and size fit the classifier's parameters."""
    shape = np.shape(images)
    if len(shape) != 4:
        raise _error(fn, name, "images of shape [N, H, W, C] (rank 4)", f"shape {tuple(shape)}")
    channels = params["conv1"]["kernel"].shape[2]
    flat = params["hidden"]["kernel"].shape[0]  # set by the training images' H, W
    if shape[3] != channels or _flat_size(shape[1], shape[2]) != flat:
        expected = f"images of the reference's size: C = {channels}, H×W giving {flat} conv outputs (28×28: 3136)"
        raise _error(fn, name, expected, f"shape {tuple(shape)}")
    if shape[0] < min_count:
        raise _error(fn, name, f"at least {min_count} images (a covariance needs N > 1)", f"shape {tuple(shape)}")


def evaluate_samples(reference: Reference, samples, batch_size: int = 500, num_splits: int = 1) -> dict[str, float]:
    """Classifier FID and classifier score of generator samples.

    Args:
      reference: :func:`get_reference`'s.
      samples: ``[N, H, W, C]`` float in ``[−1, 1]``, the training images' size, ``N > 1``.
        Values must be finite and within ``[−2, 2]`` (which catches ``[0, 255]`` input);
        they are clipped to ``[−1, 1]``, as when drawn to pixels.
      batch_size: images per classifier call.
      num_splits: :func:`classifier_score`'s.
    Returns:
      ``{"fid_classifier": FD to the test statistics, "classifier_score": score}``. With few
      samples FD is biased upwards; compare numbers at equal N (and see
      :func:`real_data_fid` for the floor at that N).
    """
    fn = "evaluate_samples"
    _check_images_for(fn, "samples", samples, reference.params)
    x = np.asarray(samples)
    if not np.issubdtype(x.dtype, np.floating):
        raise _error(fn, "samples", "floating point in [-1, 1]", f"dtype {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise _error(fn, "samples", "finite", f"{np.sum(~np.isfinite(x))} non-finite values")
    if x.min() < -2 or x.max() > 2:
        raise _error(
            fn, "samples", "in [-1, 1] (up to ±2 is tolerated and clipped)", f"range [{x.min():.4g}, {x.max():.4g}]"
        )
    probs, features = classifier_outputs(reference.params, np.clip(x, -1.0, 1.0), batch_size)
    mu, sigma = feature_statistics(features)
    return {
        "fid_classifier": frechet_distance(mu, sigma, reference.mu, reference.sigma),
        "classifier_score": classifier_score(probs, num_splits),
    }


def real_data_fid(reference: Reference, images_uint8, batch_size: int = 500) -> float:
    """FD of real images (e.g. train images) to the test statistics: what a perfect
    generator would score with that many samples.

    Args:
      reference: :func:`get_reference`'s.
      images_uint8: ``[N, H, W, C]`` uint8, ``N > 1``.
    """
    fn = "real_data_fid"
    _check_images_for(fn, "images_uint8", images_uint8, reference.params)
    if np.asarray(images_uint8).dtype != np.uint8:
        raise _error(fn, "images_uint8", "uint8", f"dtype {np.asarray(images_uint8).dtype}")
    _, features = classifier_outputs(reference.params, to_model_range(images_uint8), batch_size)
    mu, sigma = feature_statistics(features)
    return frechet_distance(mu, sigma, reference.mu, reference.sigma)


def save_sample_grid(samples, path: str | Path, columns: int = 8, scale: int = 2) -> Path:
    """Samples ``[N, H, W, C]`` in ``[−1, 1]`` as one PNG grid (``columns`` wide, each pixel
    ``scale``×``scale``); returns the path."""
    x = np.asarray(samples)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise _error("save_sample_grid", "samples", "[N, H, W, C] with C = 1 or 3", f"shape {x.shape}")
    save_grid(to_uint8(x), Path(path), columns, scale)
    return Path(path)
