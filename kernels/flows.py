"""Flow bijections and their exact log-determinants (NICE, RealNVP, Glow; posts 5776, 5807).

Every bijection is a pure function ``f(x, ...params, inverse=False) -> (y, log_det[B])``:
``log_det`` is ``log|det ∂y/∂x|`` per example, so ``inverse=True`` returns the log-det of
the inverse map, which is minus the forward one at the matching point. Images are NHWC.

* ``actnorm``: ``y = (x + loc)·exp(log_scale)`` per channel; log-det ``H·W·Σ log_scale``.
  :func:`actnorm_data_init` gives the data-dependent initialisation (Glow).
* ``invertible_conv1x1``: ``y = W x`` at every pixel, with ``W`` in the LU
  parametrisation ``W = P·L·(U + diag(sign·exp(log_s)))``; log-det ``H·W·Σ log_s``, O(C),
  and the inverse uses two triangular solves instead of a general inverse.
  :func:`invertible_conv1x1_slogdet` is the plain-weight version (``slogdet`` per call,
  O(C³)), kept for comparison and benchmarks.
* ``affine_coupling``: ``y2 = (x2 + shift)·sigmoid(raw + 2)`` (Glow's bounded scale: the
  forward scale is at most 1, ~0.88 at a zero-initialised network; the inverse multiplies
  by ``1 + exp(−(raw + 2))``, with ``raw`` clipped at −60 so that stays finite);
  ``additive_coupling``: ``y2 = x2 + sign·shift`` (NICE; the author's sign is −1).
* ``conditional_standardize``: ``eps = (z − mean)·exp(−log_std)`` — Glow's split2d prior
  and the author's CondActnorm are this one map with a standard normal after it.
* ``squeeze`` / ``unsqueeze``: ``[B, H, W, C] <-> [B, H/2, W/2, 4C]``; volume preserving.
* ``dequantize`` and ``bits_per_dim``: uniform dequantisation over 256 levels and the
  matching ``D·log 256`` correction.

Each hot function has a ``*_reference`` twin written as loops (or the textbook formula,
e.g. ``slogdet`` of the rebuilt weight); the tests compare them, and compare every
log-det with ``slogdet`` of ``jax.jacfwd`` on small inputs.
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from kernels.checks import argument_error as _error
from kernels.checks import concrete

# --------------------------------------------------------------------------- #
# Argument checks
# --------------------------------------------------------------------------- #


def _check_image(fn, x, name="x"):
    shape = jnp.shape(x)
    if len(shape) != 4:
        raise _error(fn, name, "an image batch of shape [B, H, W, C] (rank 4)", f"shape {tuple(shape)}")
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise _error(fn, name, "floating point", f"dtype {jnp.result_type(x)}")
    return shape


def _check_features(fn, x, name="x"):
    """Rank 2 ``[B, D]`` vectors or rank 4 ``[B, H, W, C]`` images; channels last."""
    shape = jnp.shape(x)
    if len(shape) not in (2, 4):
        raise _error(fn, name, "[B, D] or [B, H, W, C] (rank 2 or 4)", f"shape {tuple(shape)}")
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise _error(fn, name, "floating point", f"dtype {jnp.result_type(x)}")
    return shape


def _check_channel_param(fn, name, p, c):
    if jnp.shape(p) != (c,):
        raise _error(fn, name, f"shape [C] = ({c},)", f"shape {tuple(jnp.shape(p))}")


def _spatial_size(shape) -> int:
    return math.prod(shape[1:-1])  # 1 for [B, D]


def _sum_per_example(x):
    return jnp.sum(x.reshape(x.shape[0], -1), axis=1)


# --------------------------------------------------------------------------- #
# Actnorm
# --------------------------------------------------------------------------- #


def actnorm(x, loc, log_scale, *, inverse=False):
    """Per-channel affine map ``y = (x + loc)·exp(log_scale)`` (Glow's actnorm).

    Args:
      x: ``[B, D]`` or ``[B, H, W, C]``; the last axis is the channel axis.
      loc, log_scale: ``[C]``.
      inverse: apply ``x = y·exp(−log_scale) − loc`` instead.
    Returns:
      ``(y, log_det[B])`` with ``log_det = ±H·W·Σ log_scale``.
    """
    fn = "actnorm"
    shape = _check_features(fn, x)
    _check_channel_param(fn, "loc", loc, shape[-1])
    _check_channel_param(fn, "log_scale", log_scale, shape[-1])
    log_det = _spatial_size(shape) * jnp.sum(log_scale)
    if inverse:
        y, log_det = x * jnp.exp(-log_scale) - loc, -log_det
    else:
        y = (x + loc) * jnp.exp(log_scale)
    return y, jnp.broadcast_to(log_det, shape[:1])


def actnorm_reference(x, loc, log_scale, *, inverse=False):
    """Channel by channel, log-det as the sum of the diagonal Jacobian's logs."""
    outs, log_det = [], jnp.zeros(x.shape[0])
    for c in range(x.shape[-1]):
        xc = x[..., c]
        if inverse:
            outs.append(xc / jnp.exp(log_scale[c]) - loc[c])
            log_det = log_det - _sum_per_example(jnp.full_like(xc, log_scale[c]))
        else:
            outs.append((xc + loc[c]) * jnp.exp(log_scale[c]))
            log_det = log_det + _sum_per_example(jnp.full_like(xc, log_scale[c]))
    return jnp.stack(outs, axis=-1), log_det


def actnorm_data_init(x, *, eps=1e-6):
    """``(loc, log_scale)`` that give ``actnorm(x)`` zero mean and unit variance per channel.

    Args:
      x: ``[B, D]`` or ``[B, H, W, C]``, the initialisation batch.
    Returns:
      ``loc = −mean``, ``log_scale = −log(std + eps)``, each ``[C]``.
    """
    _check_features("actnorm_data_init", x)
    flat = x.reshape(-1, x.shape[-1])
    mean = jnp.mean(flat, axis=0)
    std = jnp.sqrt(jnp.mean(jnp.square(flat - mean), axis=0))
    return -mean, -jnp.log(std + eps)


# --------------------------------------------------------------------------- #
# Invertible 1x1 convolution
# --------------------------------------------------------------------------- #


def lu_init(key, channels):
    """Glow's start: a random rotation ``W = Q``, decomposed as ``W = P·L·U``.

    Returns:
      dict ``perm [C, C]`` (a permutation matrix), ``lower [C, C]`` and ``upper [C, C]``
      (only the strict triangles are used), ``log_s [C]``, ``sign_s [C]``.
    """
    q, _ = jnp.linalg.qr(jax.random.normal(key, (channels, channels)))
    p, lower, upper = jax.scipy.linalg.lu(q)
    s = jnp.diag(upper)
    return dict(perm=p, lower=lower, upper=upper, log_s=jnp.log(jnp.abs(s)), sign_s=jnp.sign(s))


def _lu_factors(lower, upper, log_s, sign_s):
    c = log_s.shape[0]
    eye = jnp.eye(c, dtype=log_s.dtype)
    l_unit = jnp.tril(lower, -1) + eye
    u_diag = jnp.triu(upper, 1) + jnp.diag(sign_s * jnp.exp(log_s))
    return l_unit, u_diag


def lu_weight(perm, lower, upper, log_s, sign_s):
    """``W = P·L·(U + diag(sign·exp(log_s)))``: ``[C, C]``. ``L`` gets a unit diagonal and only
    the strict triangles of ``lower`` / ``upper`` are read, so every ``log_s`` gives an
    invertible ``W``."""
    l_unit, u_diag = _lu_factors(lower, upper, log_s, sign_s)
    return perm @ l_unit @ u_diag


def lu_inverse_weight(perm, lower, upper, log_s, sign_s):
    """``W⁻¹ = U⁻¹·L⁻¹·Pᵀ`` by two triangular solves (no general inverse, no pivoting)."""
    l_unit, u_diag = _lu_factors(lower, upper, log_s, sign_s)
    l_inv_pt = solve_triangular(l_unit, perm.T, lower=True, unit_diagonal=True)
    return solve_triangular(u_diag, l_inv_pt, lower=False)


def _check_lu(fn, x, perm, lower, upper, log_s, sign_s):
    shape = _check_image(fn, x)
    c = shape[-1]
    for name, p in (("perm", perm), ("lower", lower), ("upper", upper)):
        if jnp.shape(p) != (c, c):
            raise _error(fn, name, f"shape [C, C] = ({c}, {c})", f"shape {tuple(jnp.shape(p))}")
    _check_channel_param(fn, "log_s", log_s, c)
    _check_channel_param(fn, "sign_s", sign_s, c)
    return shape


def _pixelwise_matmul(x, weight):
    return jnp.einsum("bhwc,dc->bhwd", x, weight)


def invertible_conv1x1(x, perm, lower, upper, log_s, sign_s, *, inverse=False):
    """Glow's invertible 1×1 convolution in the LU parametrisation.

    Args:
      x: ``[B, H, W, C]``.
      perm, lower, upper: ``[C, C]``; log_s, sign_s: ``[C]`` (see :func:`lu_weight`).
    Returns:
      ``(y[B, H, W, C], log_det[B])``, ``log_det = ±H·W·Σ log_s`` — no determinant is
      ever computed.
    """
    shape = _check_lu("invertible_conv1x1", x, perm, lower, upper, log_s, sign_s)
    log_det = shape[1] * shape[2] * jnp.sum(log_s)
    if inverse:
        y = _pixelwise_matmul(x, lu_inverse_weight(perm, lower, upper, log_s, sign_s))
        log_det = -log_det
    else:
        y = _pixelwise_matmul(x, lu_weight(perm, lower, upper, log_s, sign_s))
    return y, jnp.broadcast_to(log_det, shape[:1])


def invertible_conv1x1_slogdet(x, weight, *, inverse=False):
    """The plain-weight 1×1 convolution: log-det ``H·W·log|det W|`` by ``slogdet`` (O(C³)).

    Args:
      x: ``[B, H, W, C]``; weight: ``[C, C]``.
    """
    shape = _check_image("invertible_conv1x1_slogdet", x)
    c = shape[-1]
    if jnp.shape(weight) != (c, c):
        raise _error("invertible_conv1x1_slogdet", "weight", f"shape [C, C] = ({c}, {c})", f"shape {tuple(jnp.shape(weight))}")
    log_det = shape[1] * shape[2] * jnp.linalg.slogdet(weight)[1]
    if inverse:
        return _pixelwise_matmul(x, jnp.linalg.inv(weight)), jnp.broadcast_to(-log_det, shape[:1])
    return _pixelwise_matmul(x, weight), jnp.broadcast_to(log_det, shape[:1])


def invertible_conv1x1_reference(x, weight, *, inverse=False):
    """Pixel by pixel ``y = W x`` (or ``W⁻¹ x``), log-det ``H·W·log|det W|`` from ``slogdet``."""
    b, h, w, _ = x.shape
    mat = jnp.linalg.inv(weight) if inverse else weight
    rows = [jnp.stack([jnp.stack([mat @ x[n, i, j] for j in range(w)]) for i in range(h)]) for n in range(b)]
    log_det = h * w * jnp.linalg.slogdet(weight)[1]
    return jnp.stack(rows), jnp.full((b,), -log_det if inverse else log_det)


# --------------------------------------------------------------------------- #
# Couplings
# --------------------------------------------------------------------------- #


def _check_pair(fn, x2, name, other):
    if jnp.shape(other) != jnp.shape(x2):
        raise _error(fn, name, f"shape {tuple(jnp.shape(x2))} (that of x2)", f"shape {tuple(jnp.shape(other))}")


_MIN_RAW_SCALE = -60.0


def affine_coupling(x2, raw_scale, shift, *, inverse=False):
    """Glow's affine coupling on the transformed half: ``y2 = (x2 + shift)·sigmoid(raw + 2)``.

    The forward scale lies in (0, 1); ``log_sigmoid`` keeps the log-det finite when it
    underflows. The inverse divides by the scale, so ``raw`` is clipped below at
    ``_MIN_RAW_SCALE`` (−60, a scale of e⁻⁵⁸): ``exp(58)`` is finite in float32, where an
    untrained sampler could otherwise produce ``inf·0 = NaN``.

    Args:
      x2: ``[B, ...]``, the half being transformed; raw_scale, shift: same shape, computed
        by the coupling network from the other half.
    Returns:
      ``(y2, log_det[B])``, ``log_det = ±Σ log sigmoid(raw + 2)``.
    """
    fn = "affine_coupling"
    _check_features(fn, x2, "x2")
    _check_pair(fn, x2, "raw_scale", raw_scale)
    _check_pair(fn, x2, "shift", shift)
    log_scale = jax.nn.log_sigmoid(jnp.maximum(raw_scale, _MIN_RAW_SCALE) + 2.0)
    log_det = _sum_per_example(log_scale)
    if inverse:
        return x2 * jnp.exp(-log_scale) - shift, -log_det
    return (x2 + shift) * jnp.exp(log_scale), log_det


def affine_coupling_reference(x2, raw_scale, shift, *, inverse=False):
    scale = 1.0 / (1.0 + jnp.exp(-(jnp.maximum(raw_scale, _MIN_RAW_SCALE) + 2.0)))
    log_det = jnp.sum(jnp.log(scale).reshape(x2.shape[0], -1), axis=1)
    if inverse:
        return x2 / scale - shift, -log_det
    return (x2 + shift) * scale, log_det


def additive_coupling(x2, shift, *, sign=1.0, inverse=False):
    """NICE's additive coupling ``y2 = x2 + sign·shift``; volume preserving (log-det 0).

    The author's NICE uses ``sign = −1`` in the encoding direction, so that generation
    (``x2 = y2 + m(x1)`` with a ReLU-output ``m``) is pushed towards positive pixels.
    """
    fn = "additive_coupling"
    _check_features(fn, x2, "x2")
    _check_pair(fn, x2, "shift", shift)
    if sign not in (1.0, -1.0, 1, -1):
        raise _error(fn, "sign", "+1 or -1", repr(sign))
    y2 = x2 - sign * shift if inverse else x2 + sign * shift
    return y2, jnp.zeros(x2.shape[:1], x2.dtype)


# --------------------------------------------------------------------------- #
# Multi-scale pieces
# --------------------------------------------------------------------------- #


def conditional_standardize(z, mean, log_std, *, inverse=False):
    """``eps = (z − mean)·exp(−log_std)``: Glow's split2d prior / the author's CondActnorm.

    With ``eps ~ N(0, I)`` after it, ``log N(eps) + log_det = log N(z; mean, exp(log_std)²)``.
    Returns ``(eps, log_det[B])`` with ``log_det = ∓Σ log_std``.
    """
    fn = "conditional_standardize"
    _check_features(fn, z, "z")
    _check_pair(fn, z, "mean", mean)
    _check_pair(fn, z, "log_std", log_std)
    log_det = -_sum_per_example(log_std)
    if inverse:
        return z * jnp.exp(log_std) + mean, -log_det
    return (z - mean) * jnp.exp(-log_std), log_det


def _check_squeezable(fn, x, factor):
    shape = _check_image(fn, x)
    _, h, w, _ = shape
    if h % factor or w % factor:
        raise _error(fn, "x", f"an image with H and W divisible by {factor}", f"H, W = {h}, {w}")
    return shape


def squeeze(x, factor=2):
    """Space to depth: ``[B, H, W, C] -> [B, H/f, W/f, C·f²]``; output channel
    ``c·f² + dy·f + dx`` holds pixel ``(f·i + dy, f·j + dx)`` of channel ``c`` (Glow's order)."""
    b, h, w, c = _check_squeezable("squeeze", x, factor)
    x = x.reshape(b, h // factor, factor, w // factor, factor, c)
    return x.transpose(0, 1, 3, 5, 2, 4).reshape(b, h // factor, w // factor, c * factor * factor)


def unsqueeze(x, factor=2):
    """Depth to space, the inverse of :func:`squeeze`."""
    b, h, w, cf = _check_image("unsqueeze", x)
    if cf % (factor * factor):
        raise _error("unsqueeze", "x", f"a channel count divisible by {factor * factor}", f"C = {cf}")
    c = cf // (factor * factor)
    x = x.reshape(b, h, w, c, factor, factor)
    return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, h * factor, w * factor, c)


def squeeze_reference(x, factor=2):
    b, h, w, c = x.shape
    out = [[[] for _ in range(w // factor)] for _ in range(h // factor)]
    for i in range(h // factor):
        for j in range(w // factor):
            out[i][j] = jnp.stack(
                [x[:, factor * i + dy, factor * j + dx, ch] for ch in range(c) for dy in range(factor) for dx in range(factor)],
                axis=-1,
            )  # fmt: skip
    return jnp.stack([jnp.stack(row, axis=1) for row in out], axis=1)


def split_channels(x):
    """``[..., C] -> ([..., C/2], [..., C/2])``; C must be even."""
    c = jnp.shape(x)[-1]
    if c % 2:
        raise _error("split_channels", "x", "an even channel count", f"C = {c} (shape {tuple(jnp.shape(x))})")
    return x[..., : c // 2], x[..., c // 2 :]


# --------------------------------------------------------------------------- #
# Densities
# --------------------------------------------------------------------------- #

LOG_2PI = math.log(2 * math.pi)


def standard_normal_log_prob(z):
    """``Σ log N(z; 0, 1)`` per example: ``[B, ...] -> [B]``."""
    return -0.5 * _sum_per_example(jnp.square(z) + LOG_2PI)


def _check_num_bins(fn, num_bins):
    if not (isinstance(num_bins, numbers.Integral) and num_bins >= 2):
        raise _error(fn, "num_bins", "a Python int >= 2", repr(num_bins))


def dequantize(key, x_uint8, *, num_bins=256):
    """Uniform dequantisation: ``(x + u)/num_bins − 0.5`` with ``u ~ U[0, 1)``, in ``[−0.5, 0.5)``.

    The −0.5 shift has log-det 0; the ``1/num_bins`` scale is paid by :func:`bits_per_dim`.
    ``u`` is capped at ``1 − 2⁻⁸``: in float32, ``x + u`` would round up to ``x + 1`` for
    ``u`` within 2⁻¹⁷ of 1 at large ``x``, leaving the pixel's bin.
    """
    _check_num_bins("dequantize", num_bins)
    if not jnp.issubdtype(jnp.result_type(x_uint8), jnp.integer):  # [0, 1] floats would collapse into bin 0
        raise _error("dequantize", "x_uint8", f"integer pixel values in [0, {num_bins})", f"dtype {jnp.result_type(x_uint8)}")
    values = concrete(x_uint8)
    if values is not None and values.size and (values.min() < 0 or values.max() >= num_bins):
        raise _error("dequantize", "x_uint8", f"values in [0, {num_bins})", f"values in [{values.min()}, {values.max()}]")
    x = jnp.asarray(x_uint8, jnp.float32)
    u = jnp.minimum(jax.random.uniform(key, x.shape), 1.0 - 2.0**-8)
    return (x + u) / num_bins - 0.5


def bits_per_dim(log_prob, num_dims, *, num_bins=256):
    """``−(log p(y) − D·log num_bins) / (D·log 2)``: a bound on the discrete data's bits per
    dimension, from the continuous log-density ``log p(y)`` (nats) of the dequantised
    ``y = (x + u)/num_bins``."""
    _check_num_bins("bits_per_dim", num_bins)
    if not (isinstance(num_dims, numbers.Integral) and num_dims >= 1):
        raise _error("bits_per_dim", "num_dims", "a Python int >= 1", repr(num_dims))
    return -(log_prob - num_dims * math.log(num_bins)) / (num_dims * math.log(2.0))
