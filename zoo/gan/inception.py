"""Real Inception FID from a weights file the user supplies: pytorch-fid's FID Inception v3 in Flax.

The FID of the literature is the Fréchet distance between the 2,048-d pool features of
TensorFlow's 2015 Inception v3 (``inception-2015-12-05``). pytorch-fid ported that network
and its weights to PyTorch (``pt_inception-2015-12-05-6726825d.pth``); this module is the
same network in Flax, reading that file directly (no torch needed, see
:mod:`zoo.core.torch_weights`) or an ``.npz`` of the same keys. The network is
torchvision's Inception v3 with pytorch-fid's patches, which make it match TF's graph:

* ``Mixed_5b..5d`` (A), ``Mixed_6b..6e`` (C) and ``Mixed_7b`` (E): the pool branch's
  3×3 average pooling leaves the padding out of the count (TF's ``avg_pool`` with SAME);
* ``Mixed_7c`` (E): the pool branch is a 3×3 *max* pooling (a quirk of TF's graph);
* a 1,008-way ``fc`` (TF's classes; used only by :func:`inception_score`).

Every convolution is conv (no bias) → BatchNorm (running statistics, ε = 1e-3) → ReLU.

Input handling follows pytorch-fid: images in ``[0, 1]`` are resized to 299×299 bilinearly
(half-pixel centres, no antialiasing, like ``F.interpolate(align_corners=False)``), then
mapped to ``[−1, 1]``. Grey images are repeated to three channels (pytorch-fid's loader
converts files to RGB). Samples are first rounded to 8-bit pixels, as they would be when
saved to PNG for pytorch-fid, so the numbers are those of the saved images.

The network is ~5.7 G multiply-adds per image: on a 2-core CPU, 10,000 images take about
17 minutes (a GAN evaluation scores the raw and the EMA generator, so twice that).

API:

* :func:`load_inception` — ``path`` → ``variables`` for :class:`FIDInceptionV3` (checks every
  key and shape, naming what is missing or wrong).
* :func:`inception_outputs` — images ``[N, H, W, C]`` in ``[−1, 1]`` → ``(pool [N, 2048],
  logits [N, 1008])``.
* :func:`get_inception_reference` — the data set's test-split statistics, cached on disk
  under the weights file's hash; :func:`inception_fid` — samples → FID against them.
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
from flax import traverse_util
from jax import lax

from kernels.checks import argument_error as _error
from zoo.core.layers import cpu_conv
from zoo.core.torch_weights import load_torch_state_dict
from zoo.data.batching import fixed_size_chunks

INPUT_SIDE = 299
NUM_FEATURES = 2048
NUM_CLASSES = 1008
# sha256 prefix of pytorch-fid's file, part of its name: pt_inception-2015-12-05-6726825d.pth
PYTORCH_FID_SHA256_PREFIX = "6726825d"
# Bump when the network, the preprocessing or the statistics change: part of the cache key of
# get_inception_reference, so statistics computed by older code are never reused.
INCEPTION_REFERENCE_VERSION = 1
PYTORCH_FID_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"

Variables = Any


# --------------------------------------------------------------------------- #
# The network
# --------------------------------------------------------------------------- #


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv2d(nn.Module):
    """conv (no bias) → BatchNorm (running statistics, ε 1e-3) → ReLU; torch padding (symmetric)."""

    features: int
    kernel_size: int | tuple[int, int]
    stride: int = 1
    padding: int | tuple[int, int] = 0

    @nn.compact
    def __call__(self, x):
        x = _Conv(self.features, _pair(self.kernel_size), self.stride, _pair(self.padding), name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


class _Conv(nn.Module):
    """A bias-free convolution with ``kernel [kh, kw, C, F]`` (``nn.Conv``'s layout). On CPU
    it runs as im2col matmuls (:func:`zoo.core.layers.cpu_conv`): XLA:CPU's native
    convolutions made the whole network 0.73× pytorch-fid's speed, its matmuls are faster."""

    features: int
    kernel_size: tuple[int, int]
    stride: int
    padding: tuple[int, int]

    @nn.compact
    def __call__(self, x):
        kh, kw = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (kh, kw, x.shape[-1], self.features))
        ph, pw = self.padding
        if jax.default_backend() == "cpu":
            if ph or pw:
                x = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
            return cpu_conv(x, kernel, self.stride)
        return lax.conv_general_dilated(
            x, kernel, (self.stride,) * 2, ((ph, ph), (pw, pw)), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )


def max_pool(x, window: int, stride: int, padding: int = 0):
    """Max pooling over ``window×window``; padding cells never win (−∞)."""
    pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1), pad)


def avg_pool_exclude_pad(x):
    """3×3 average pooling, stride 1, padding 1, the padding left out of the count
    (``F.avg_pool2d(count_include_pad=False)``, TF's SAME ``avg_pool``)."""
    pad = ((0, 0), (1, 1), (1, 1), (0, 0))
    total = lax.reduce_window(x, 0.0, lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pad)
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    count = lax.reduce_window(ones, 0.0, lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pad)
    return total / count


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv2d(64, 1, name="branch1x1")(x)
        b5 = BasicConv2d(48, 1, name="branch5x5_1")(x)
        b5 = BasicConv2d(64, 5, padding=2, name="branch5x5_2")(b5)
        b3 = BasicConv2d(64, 1, name="branch3x3dbl_1")(x)
        b3 = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_2")(b3)
        b3 = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_3")(b3)
        bp = BasicConv2d(self.pool_features, 1, name="branch_pool")(avg_pool_exclude_pad(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv2d(384, 3, stride=2, name="branch3x3")(x)
        bd = BasicConv2d(64, 1, name="branch3x3dbl_1")(x)
        bd = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_2")(bd)
        bd = BasicConv2d(96, 3, stride=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, max_pool(x, 3, 2)], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        b1 = BasicConv2d(192, 1, name="branch1x1")(x)
        b7 = BasicConv2d(c7, 1, name="branch7x7_1")(x)
        b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv2d(c7, 1, name="branch7x7dbl_1")(x)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv2d(192, 1, name="branch_pool")(avg_pool_exclude_pad(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv2d(192, 1, name="branch3x3_1")(x)
        b3 = BasicConv2d(320, 3, stride=2, name="branch3x3_2")(b3)
        b7 = BasicConv2d(192, 1, name="branch7x7x3_1")(x)
        b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv2d(192, 3, stride=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, max_pool(x, 3, 2)], axis=-1)


class InceptionE(nn.Module):
    """``pool="avg"``: pytorch-fid's ``FIDInceptionE_1`` (Mixed_7b); ``"max"``: ``FIDInceptionE_2`` (Mixed_7c)."""

    pool: str = "avg"

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv2d(320, 1, name="branch1x1")(x)
        b3 = BasicConv2d(384, 1, name="branch3x3_1")(x)
        b3 = jnp.concatenate(
            [BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
             BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1,
        )  # fmt: skip
        bd = BasicConv2d(448, 1, name="branch3x3dbl_1")(x)
        bd = BasicConv2d(384, 3, padding=1, name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate(
            [BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
             BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1,
        )  # fmt: skip
        pooled = avg_pool_exclude_pad(x) if self.pool == "avg" else max_pool(x, 3, 1, padding=1)
        bp = BasicConv2d(192, 1, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
    """pytorch-fid's FID Inception v3 (TF's 2015 graph), eval mode.

    ``__call__(x [B, H, W, 3] in [−1, 1]) -> (pool [B, 2048], logits [B, 1008])``; H, W >= 75
    (299 in FID use, see :func:`inception_outputs`). Submodule names are the torch state
    dict's, so weights map by name.
    """

    @nn.compact
    def __call__(self, x):
        x = BasicConv2d(32, 3, stride=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv2d(32, 3, name="Conv2d_2a_3x3")(x)
        x = BasicConv2d(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
        x = max_pool(x, 3, 2)
        x = BasicConv2d(80, 1, name="Conv2d_3b_1x1")(x)
        x = BasicConv2d(192, 3, name="Conv2d_4a_3x3")(x)
        x = max_pool(x, 3, 2)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(c7, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE("avg", name="Mixed_7b")(x)
        x = InceptionE("max", name="Mixed_7c")(x)
        pool = x.mean(axis=(1, 2))
        return pool, nn.Dense(NUM_CLASSES, name="fc")(pool)


# --------------------------------------------------------------------------- #
# Weights: a torch state dict (by name) -> Flax variables
# --------------------------------------------------------------------------- #


@functools.lru_cache(maxsize=1)
def _variable_shapes() -> dict[tuple[str, ...], tuple[int, ...]]:
    shapes = jax.eval_shape(FIDInceptionV3().init, jax.random.key(0), jnp.zeros((1, 75, 75, 3)))
    return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(shapes).items()}


def _flax_path(torch_key: str) -> tuple[tuple[str, ...], str] | None:
    """A torch key -> (Flax variable path, how to convert), or None for keys with no value
    (BatchNorm's ``num_batches_tracked``)."""
    *modules, leaf = torch_key.split(".")
    if leaf == "num_batches_tracked":
        return None
    if modules and modules[-1] == "conv" and leaf == "weight":
        return ("params", *modules, "kernel"), "conv"
    if modules and modules[-1] == "bn":
        table = {"weight": ("params", "scale"), "bias": ("params", "bias"), "running_mean": ("batch_stats", "mean"),
                 "running_var": ("batch_stats", "var")}  # fmt: skip
        if leaf in table:
            collection, name = table[leaf]
            return (collection, *modules, name), "copy"
    if modules == ["fc"] and leaf in ("weight", "bias"):
        return ("params", "fc", "kernel" if leaf == "weight" else "bias"), "dense" if leaf == "weight" else "copy"
    return ("?", torch_key), "unknown"


def variables_from_state_dict(state_dict: dict[str, np.ndarray]) -> Variables:
    """pytorch-fid's state dict (torch names and layouts) -> :class:`FIDInceptionV3` variables.

    Conv weights ``[O, I, kh, kw]`` become kernels ``[kh, kw, I, O]``, the fc weight is
    transposed, BatchNorm's running statistics go to ``batch_stats``. Every expected
    variable must be present with its shape; unknown keys are an error too (a different
    network's file would otherwise half-load).
    """
    fn = "variables_from_state_dict"
    expected = _variable_shapes()
    flat, unknown = {}, []
    for key, value in state_dict.items():
        mapped = _flax_path(key)
        if mapped is None:
            continue
        path, how = mapped
        if how == "unknown" or path not in expected:
            unknown.append(key)
            continue
        value = np.asarray(value, np.float32)
        want = expected[path]  # Flax layout; the torch layout is what the file must hold
        torch_shape = (want[3], want[2], want[0], want[1]) if how == "conv" else want[::-1] if how == "dense" else want
        if value.shape != torch_shape:
            raise _error(fn, f"state_dict[{key!r}]", f"shape {torch_shape}", f"shape {value.shape}")
        flat[path] = jnp.asarray(value.transpose(2, 3, 1, 0) if how == "conv" else value.T if how == "dense" else value)
    missing = [".".join(p) for p in expected if p not in flat]
    if unknown or missing:
        raise _error(
            fn, "state_dict", "pytorch-fid's FID Inception v3 keys",
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unknown)} unknown (e.g. {unknown[:3]})",
        )  # fmt: skip
    return traverse_util.unflatten_dict(flat)


def state_dict_from_variables(variables: Variables) -> dict[str, np.ndarray]:
    """The inverse of :func:`variables_from_state_dict`: Flax variables -> torch names and
    layouts (float32 numpy), e.g. to write an ``.npz`` that :func:`load_inception` reads."""
    out = {}
    for path, value in traverse_util.flatten_dict(variables).items():
        collection, *modules, leaf = path
        value = np.asarray(value, np.float32)
        if modules == ["fc"]:
            out[f"fc.{'weight' if leaf == 'kernel' else 'bias'}"] = value.T if leaf == "kernel" else value
        elif leaf == "kernel":
            out[".".join(modules) + ".weight"] = value.transpose(3, 2, 0, 1)
        else:
            torch_leaf = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}[leaf]
            out[".".join(modules) + "." + torch_leaf] = value
    return out


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_inception(path: str | Path, *, warn_if_not_pytorch_fid: bool = True, sha256: str | None = None) -> Variables:
    """:class:`FIDInceptionV3` variables from a weights file.

    Args:
      path: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (download it from
        :data:`PYTORCH_FID_URL`), any ``torch.save`` of a state dict with its keys, or an
        ``.npz`` with the same keys.
      warn_if_not_pytorch_fid: print a warning when the file's sha256 does not start with
        pytorch-fid's ``6726825d``: FIDs from other weights are not comparable with
        published ones.
      sha256: the file's digest when the caller has it already (it is ~95 MB to hash).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_inception: no weights file at {path} (pytorch-fid's: {PYTORCH_FID_URL})")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            state_dict = {k: z[k] for k in z.files}
    else:
        state_dict = load_torch_state_dict(path)
    variables = variables_from_state_dict(state_dict)
    if warn_if_not_pytorch_fid and not (sha256 or file_sha256(path)).startswith(PYTORCH_FID_SHA256_PREFIX):
        _log(f"{path} is not pytorch-fid's weights file (sha256 does not start with {PYTORCH_FID_SHA256_PREFIX}); "
             "its FIDs are not comparable with published ones")  # fmt: skip
    return variables


# --------------------------------------------------------------------------- #
# Features
# --------------------------------------------------------------------------- #


def preprocess(images, side: int = INPUT_SIDE):
    """Images ``[B, H, W, C]`` in ``[−1, 1]`` (C = 1 or 3) -> the network's input ``[B, side,
    side, 3]`` in ``[−1, 1]``: rounded to 8-bit pixels, grey repeated to RGB, resized as
    pytorch-fid does (bilinear, half-pixel centres, no antialiasing)."""
    x = jnp.round((jnp.clip(images, -1.0, 1.0) + 1.0) * 127.5) / 255.0  # [0, 1] on 256 levels
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    if x.shape[1:3] != (side, side):
        x = jax.image.resize(x, (x.shape[0], side, side, 3), "bilinear", antialias=False)
    return 2.0 * x - 1.0


@functools.lru_cache(maxsize=2)
def _jitted_outputs(side: int):
    model = FIDInceptionV3()
    return jax.jit(lambda variables, x: model.apply(variables, preprocess(x, side)))


def inception_outputs(variables: Variables, images, batch_size: int = 100, side: int = INPUT_SIDE):
    """Pool features and logits of images, in fixed-size batches (the last one padded, so
    one shape compiles).

    Args:
      variables: :func:`load_inception`'s.
      images: ``[N, H, W, C]`` floats in ``[−1, 1]``, C = 1 or 3, N >= 1.
      batch_size: images per call.
      side: the network's input side (299 for FID; smaller only for tests, >= 75).
    Returns:
      ``(pool [N, 2048], logits [N, 1008])`` float32 numpy.
    """
    fn = "inception_outputs"
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or x.shape[0] == 0:
        raise _error(fn, "images", "[N, H, W, C] with N >= 1 and C = 1 or 3", f"shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating) or not np.all(np.isfinite(x)):
        raise _error(fn, "images", "finite floats in [-1, 1]", f"dtype {x.dtype}, {np.sum(~np.isfinite(x)) if np.issubdtype(x.dtype, np.floating) else 'n/a'} non-finite")
    if x.min() < -2 or x.max() > 2:  # 0–255 or [0, 1] pixels would be clipped to white or half the range
        raise _error(fn, "images", "in [-1, 1] (up to ±2 is tolerated and clipped, as in evaluate_samples)",
                     f"range [{x.min():.4g}, {x.max():.4g}]")
    if side < 75:
        raise _error(fn, "side", ">= 75 (the smallest input Inception v3 accepts)", side)
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise _error(fn, "batch_size", "an int >= 1", batch_size)
    apply = _jitted_outputs(int(side))
    pools, logits = [], []
    for _, n, (chunk,) in fixed_size_chunks([x], batch_size):
        p, l = apply(variables, chunk.astype(np.float32))
        pools.append(np.asarray(p[:n]))
        logits.append(np.asarray(l[:n]))
    return np.concatenate(pools), np.concatenate(logits)


def inception_score(logits, num_splits: int = 10) -> float:
    """The Inception Score ``exp(E_x KL(p(y|x) ‖ p(y)))`` over the 1,008-way softmax, averaged over splits."""
    from zoo.gan.evaluation import classifier_score

    logits = np.asarray(logits, np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return classifier_score(probs / probs.sum(axis=1, keepdims=True), num_splits)


# --------------------------------------------------------------------------- #
# Reference statistics of a data set, cached under the weights' hash
# --------------------------------------------------------------------------- #


class InceptionReference(NamedTuple):
    """Inception variables with a data set's test-split pool statistics.

    Attributes: ``dataset``; ``variables``; ``mu [2048]``, ``sigma [2048, 2048]`` (float64);
    ``num_test`` (images behind them); ``weights_sha256``.
    """

    dataset: str
    variables: Variables
    mu: np.ndarray
    sigma: np.ndarray
    num_test: int
    weights_sha256: str


def _log(message: str) -> None:
    print(f"[zoo.gan.inception] {message}", file=sys.stderr, flush=True)


def get_inception_reference(
    weights: str | Path,
    dataset: str,
    data_dir: str | Path | None = None,
    *,
    cache_dir: str | Path | None = None,
    test_limit: int = 0,
    batch_size: int = 100,
    side: int = INPUT_SIDE,
) -> InceptionReference:
    """Inception statistics of ``dataset``'s test split, computed once and cached as
    ``<cache_dir>/inception-<dataset>-<hash>.npz`` (the hash covers the weights file's
    sha256, the data set, ``test_limit`` and ``side``)."""
    from zoo.data.images import IMAGE_DATASETS, load_images
    from zoo.gan.evaluation import default_cache_dir, feature_statistics, to_model_range

    if dataset not in IMAGE_DATASETS:
        raise _error("get_inception_reference", "dataset", f"one of {sorted(IMAGE_DATASETS)}", repr(dataset))
    sha = file_sha256(weights)
    variables = load_inception(weights, sha256=sha)
    settings = {"version": INCEPTION_REFERENCE_VERSION, "weights_sha256": sha, "dataset": dataset,
                "test_limit": int(test_limit), "side": int(side)}  # fmt: skip
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / f"inception-{dataset.replace(':', '_').replace('/', '_')}-{digest}.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            if json.loads(str(z["settings"])) == settings:
                return InceptionReference(dataset, variables, z["mu"], z["sigma"], int(z["num_test"]), sha)
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        _log(f"ignoring unreadable cache file {path}: {err!r}")
    start = time.perf_counter()
    test_x, _ = load_images(dataset, "test", data_dir=data_dir, limit=test_limit)
    pool, _ = inception_outputs(variables, to_model_range(test_x), batch_size, side)
    mu, sigma = feature_statistics(pool)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        np.savez(f, mu=mu, sigma=sigma, num_test=np.int64(len(test_x)), settings=np.str_(json.dumps(settings, sort_keys=True)))
    os.replace(tmp, path)
    _log(f"Inception statistics of {dataset!r} ({len(test_x)} test images): {time.perf_counter() - start:.0f} s; cache {path}")
    return InceptionReference(dataset, variables, mu, sigma, len(test_x), sha)


def inception_fid(reference: InceptionReference, samples, batch_size: int = 100, side: int = INPUT_SIDE, num_splits: int = 10):
    """``{"fid_inception": FD of the samples' pool features to the test statistics,
    "inception_score": IS over the 1,008 classes}`` for samples ``[N, H, W, C]`` in ``[−1, 1]``, N > 1."""
    from zoo.gan.evaluation import feature_statistics, frechet_distance

    if np.shape(samples)[0] < 2:
        raise _error("inception_fid", "samples", "at least 2 images (a covariance needs N > 1)", f"shape {np.shape(samples)}")
    pool, logits = inception_outputs(reference.variables, samples, batch_size, side)
    mu, sigma = feature_statistics(pool)
    return {
        "fid_inception": frechet_distance(mu, sigma, reference.mu, reference.sigma),
        "inception_score": inception_score(logits, min(num_splits, len(logits))),
    }
