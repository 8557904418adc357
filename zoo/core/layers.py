"""Layers shared by the families."""

from __future__ import annotations

import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from kernels.fourier_conv import fourier_conv, num_products, phase_geometry

_DIMS = ("NHWC", "HWIO", "NHWC")


def im2col_conv(x, kernel, stride: int):
    """A 'VALID' 2-D convolution as one matrix product over explicit patches (im2col).

    Equal to ``lax.conv_general_dilated(x, kernel, (s, s), "VALID")`` up to float rounding.
    Why: on XLA:CPU a large matmul runs near peak (~130 GFLOP/s on the 2-core dev box)
    while convolutions reach ~50, and the input gradient of a *strided* convolution takes
    a slow generic path. For CapsNet's 9×9 stride-2 256→256 conv at batch 100 the
    forward+backward is 35 s natively and 1.4 s here. The patches cost
    ``B·H'·W'·k²·C`` floats of memory (300 MB for that layer), so this is a CPU choice.

    Args:
      x: ``[B, H, W, C]``.
      kernel: ``[kh, kw, C, F]`` (square in most uses; Inception's 1×7 and 7×1 are not).
      stride: s >= 1.
    Returns:
      ``[B, (H - kh)//s + 1, (W - kw)//s + 1, F]``.
    """
    if x.ndim != 4 or kernel.ndim != 4 or kernel.shape[2] != x.shape[3]:
        raise ValueError(f"im2col_conv: `kernel` must be [kh, kw, C, F] with C = x's channels, x [B, H, W, C]; "
                         f"got kernel {kernel.shape}, x {x.shape}")
    b, h, w, c = x.shape
    kh, kw = kernel.shape[:2]
    ho, wo = (h - kh) // stride + 1, (w - kw) // stride + 1
    if kh == kw == 1:  # a 1×1 convolution is a matmul over (strided) pixels
        x = x[:, : stride * (ho - 1) + 1 : stride, : stride * (wo - 1) + 1 : stride]
        return (x.reshape(-1, c) @ kernel.reshape(c, -1)).reshape(b, ho, wo, -1)
    columns = [
        x[:, dy : dy + stride * (ho - 1) + 1 : stride, dx : dx + stride * (wo - 1) + 1 : stride]
        for dy in range(kh)
        for dx in range(kw)
    ]
    patches = jnp.stack(columns, axis=3).reshape(b * ho * wo, kh * kw * c)  # (dy, dx, c) order = HWIO
    return (patches @ kernel.reshape(kh * kw * c, -1)).reshape(b, ho, wo, -1)


def shift_add_conv(x, kernel):
    """A stride-1 'VALID' convolution as one matmul to ``kh·kw·F`` channels, then a sum of
    ``kh·kw`` shifted slices. Cheaper than :func:`im2col_conv` when ``F < C`` (Glow's zero-init
    output convs: 512 → a few channels): the intermediate is ``B·H·W·kh·kw·F`` floats instead
    of ``B·H'·W'·kh·kw·C``.

    Args:
      x: ``[B, H, W, C]``; kernel: ``[kh, kw, C, F]``.
    Returns:
      ``[B, H − kh + 1, W − kw + 1, F]``.
    """
    b, h, w, c = x.shape
    kh, kw, f = kernel.shape[0], kernel.shape[1], kernel.shape[-1]
    ho, wo = h - kh + 1, w - kw + 1
    z = (x.reshape(-1, c) @ kernel.transpose(2, 0, 1, 3).reshape(c, kh * kw * f)).reshape(b, h, w, kh, kw, f)
    return sum(z[:, dy : dy + ho, dx : dx + wo, dy, dx] for dy in range(kh) for dx in range(kw))


def space_to_depth_conv(x, kernel, stride: int):
    """A strided 'VALID' convolution whose kernel sides are multiples of the stride, as a
    stride-1 :func:`im2col_conv` on the space-to-depth input.

    Each ``s×s`` block of pixels becomes one pixel of ``s²·C`` channels and the kernel
    ``[kh, kw, C, F]`` becomes ``[kh/s, kw/s, s²·C, F]``: the same multiply-adds, gathered by
    ``(kh/s)·(kw/s)`` contiguous slices instead of ``kh·kw`` strided ones. Why: the gradient of
    each slice is a pad of the whole input, so the input gradient costs ``s²`` times fewer
    full-size adds. DCGAN's 4×4 stride-2 convolutions, forward+backward on the 2-core CPU:
    0–17% faster at the default optimisation level, about 2× under the test suite's flags.

    Args:
      x: ``[B, H, W, C]``; kernel: ``[kh, kw, C, F]`` with ``kh, kw`` multiples of ``stride``.
    Returns:
      ``[B, (H − kh)//s + 1, (W − kw)//s + 1, F]``, as :func:`im2col_conv`.
    """
    b, h, w, c = x.shape
    kh, kw, _, f = kernel.shape
    s = stride
    if s < 1 or kh % s or kw % s:
        raise ValueError(f"space_to_depth_conv: `kernel` sides must be multiples of `stride` {s} >= 1; got {kh}×{kw}")
    th, tw = kh // s, kw // s
    ho, wo = (h - kh) // s + 1, (w - kw) // s + 1
    hh, ww = s * (ho + th - 1), s * (wo + tw - 1)  # the rows and columns any output reads
    blocks = x[:, :hh, :ww].reshape(b, hh // s, s, ww // s, s, c).transpose(0, 1, 3, 2, 4, 5)
    blocks = blocks.reshape(b, hh // s, ww // s, s * s * c)  # channel order (row phase, column phase, C)
    kernel = kernel.reshape(th, s, tw, s, c, f).transpose(0, 2, 1, 3, 4, 5).reshape(th, tw, s * s * c, f)
    return im2col_conv(blocks, kernel, 1)


def fourier_pays(x_shape, kernel_shape, stride: int) -> bool:
    """Whether :func:`kernels.fourier_conv.fourier_conv` should beat a direct (im2col)
    convolution on XLA:CPU by 1.3× or more, forward and backward, by a two-term cost model.

    Direct: ``B·ho·wo·kh·kw·C·F`` multiply-adds. Fourier: its forward multiply-adds (the
    batched product and the three DFT matmuls) plus 76 per float of the kernel's spectrum
    ``[P, s²C, F]``, which is memory-bound. That spectrum is written and read about five
    times a step: 20 bytes per float, at the 2-core dev box's ~5.7 GB/s, take as long as ~230
    multiply-adds at its ~65 G/s; both multiply-add counts are forward-only (a third of a
    step's), so the spectrum term is 230/3 ≈ 76 per float.

    Calibrated on forward+backward timings there (direct → Fourier): CapsNet's 9×9 stride-2
    256 → 256 on 20×20 at batch 100, 1.39 → 0.74 s (taken); 5×5 128 → 128 on 16×16 at batch
    64, 0.28–0.34 → 0.18–0.23 s (taken); Glow's 3×3 512 → 512 on 18×18 at batch 64, 1.65–1.89
    → 1.67–1.91 s (not taken: the spectrum is 532·512·512 floats). Kernels under 5×5 taps
    stay direct: the one 3×3 timing gained nothing, and Inception's 3×3 and 7×1 layers (FID,
    forward only) were never timed.
    """
    b, h, w, c = x_shape
    kh, kw, _, f = kernel_shape
    if kh * kw < 25:
        return False
    ho, wo, th, tw, n, m = phase_geometry(h, w, kh, kw, stride)
    products = num_products(n, m)
    cc = stride * stride * c
    direct = b * ho * wo * kh * kw * c * f
    fourier = products * (b * cc * f + n * m * b * cc + th * tw * cc * f + ho * wo * b * f)
    return 1.3 * (fourier + 76 * products * cc * f) <= direct


def cpu_conv(x, kernel, stride: int):
    """:func:`kernels.fourier_conv.fourier_conv` where :func:`fourier_pays` (and x and the
    kernel share a dtype), else :func:`im2col_conv`, :func:`space_to_depth_conv` or
    :func:`shift_add_conv`, chosen by shape (the cheapest in the measurements quoted in
    their docstrings). The Fourier path is reverse-mode only: ``jax.jvp``/``jacfwd`` through
    such a layer raise (today only CapsNet's primary capsules at training batch sizes)."""
    if x.dtype == kernel.dtype and fourier_pays(x.shape, kernel.shape, stride):
        return fourier_conv(x, kernel, stride)
    kh, kw, c, f = kernel.shape
    if stride == 1 and kh * kw > 1 and f < c:
        return shift_add_conv(x, kernel)
    if stride > 1 and kh % stride == 0 and kw % stride == 0:
        return space_to_depth_conv(x, kernel, stride)
    return im2col_conv(x, kernel, stride)


class Conv(nn.Module):
    """``nn.Conv(features, (k, k), (s, s), padding)`` with the same parameters (``kernel
    [k, k, C, F]``, ``bias [F]``), computed on CPU by :func:`cpu_conv` (im2col, space-to-depth
    when the stride divides the kernel, or shift-and-add when ``F < C``) and by XLA's native
    convolution on accelerators.

    Besides strided convolutions (see :func:`im2col_conv`), XLA:CPU runs convolutions
    inside a ``lax.scan``/``while`` body on a slow generic path: a Glow step of 3×3 convs
    scanned over depth 8 took 11.8 s per train step natively and 0.8 s unrolled; as one
    matmul each the scanned body runs at matmul speed.

    ``padding``: ``"VALID"``; ``"SAME"`` (stride 1 only: ``(k − 1)/2`` zeros each side,
    odd ``k``); or an int ``p``: ``p`` zeros on each side, any stride (PyTorch's
    ``Conv2d(padding=p)``; DCGAN's 4×4 stride-2 convolutions use ``p = 1``).
    """

    features: int
    kernel_size: int
    stride: int = 1
    padding: str = "VALID"
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros
    bias_grad_as_matmul: bool = False  # see add_bias: for configs that keep reductions out of YNNPACK

    @nn.compact
    def __call__(self, x):
        k, c = self.kernel_size, x.shape[-1]
        is_int = isinstance(self.padding, int) and not isinstance(self.padding, bool)
        if not (self.padding in ("VALID", "SAME") or (is_int and self.padding >= 0)):
            raise ValueError(f"Conv: `padding` must be 'VALID', 'SAME' or an int >= 0; got {self.padding!r}")
        if self.padding == "SAME" and (self.stride != 1 or k % 2 == 0):
            raise ValueError(f"Conv: 'SAME' needs stride 1 and an odd kernel; got stride {self.stride}, kernel {k}")
        kernel = self.param("kernel", self.kernel_init, (k, k, c, self.features))
        pad = self.padding if is_int else (k - 1) // 2 if self.padding == "SAME" else 0
        if pad:
            x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        if jax.default_backend() == "cpu":
            y = cpu_conv(x, kernel, self.stride)
        else:
            y = lax.conv_general_dilated(x, kernel, (self.stride,) * 2, "VALID", dimension_numbers=_DIMS)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,))
            y = add_bias(y, bias) if self.bias_grad_as_matmul else y + bias
        return y


@jax.custom_vjp
def add_bias(y, bias):
    """``y + bias`` (``bias [F]`` over ``y [..., F]``) whose bias gradient is a product with a
    vector of ones, ``1ᵀ · g[N, F]``, instead of a sum over the ``N`` leading positions.

    Why: where a config keeps reductions out of YNNPACK (``zoo.core.config.YNNPACK_NO_REDUCE``
    or ``YNNPACK_DOTS_ONLY``), XLA:CPU rewrites a sum over more than 32 rows into a
    reduce-window that it runs as a scalar loop; a product with ones stays a YNNPACK dot.
    On the 2-core CPU (ad hoc, medians of 15), the ReLU-masked gradient ``[100, 20, 20, 256]``
    (CapsNet's first convolution): 43 ms as a sum, 7.5 ms as the product. Under jaxlib's
    default YNNPACK set the plain sum is as fast or faster (5.9 ms), so ``Conv`` uses this
    only when asked (``bias_grad_as_matmul``). Exact up to float32 summation order.
    """
    _check_bias(y, bias)
    return y + bias


def _check_bias(y, bias):
    if jnp.ndim(bias) != 1 or jnp.shape(y)[-1:] != jnp.shape(bias):
        raise ValueError(f"add_bias: `bias` must be [F] with F = y's last axis ({jnp.shape(y)[-1:]}); "
                         f"got bias shape {jnp.shape(bias)}")  # fmt: skip


def _add_bias_fwd(y, bias):
    _check_bias(y, bias)
    dtypes = (jnp.zeros((0,), y.dtype), jnp.zeros((0,), bias.dtype))  # the cotangents' dtypes
    return y + bias, dtypes


def _add_bias_bwd(dtypes, g):
    rows = g.reshape(-1, g.shape[-1])
    ones = jnp.ones((rows.shape[0],), g.dtype)
    acc = jnp.promote_types(g.dtype, jnp.float32)  # half-precision gradients summed in float32
    d_bias = jnp.dot(ones, rows, precision=lax.Precision.HIGHEST, preferred_element_type=acc)  # no TF32
    return g.astype(dtypes[0].dtype), d_bias.astype(dtypes[1].dtype)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


def torch_default_init(fan_in: int) -> dict[str, Callable]:
    """PyTorch's default ``Conv2d``/``Linear`` initialisation as ``kernel_init``/``bias_init``
    keywords: kernel and bias both ``U(−1/√fan_in, 1/√fan_in)`` (``kaiming_uniform_(a=√5)``),
    i.e. weight variance ``1/(3·fan_in)``, a third of Flax's LeCun normal. ``fan_in`` is
    ``k·k·C`` for a ``k×k`` convolution of ``C`` input channels."""
    bound = 1.0 / math.sqrt(fan_in)

    def bias_init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return {"kernel_init": nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"), "bias_init": bias_init}


class ValidConv(Conv):
    """:class:`Conv` with ``padding="VALID"`` (the capsule models' convolutions)."""


def col2im_conv_transpose(x, kernel, stride: int, padding: int):
    """A transposed convolution (PyTorch ``ConvTranspose2d(k, stride=s, padding=p)``) as
    one matmul to ``k²·F`` channels followed by ``(k/s)²`` shifted sums, each carrying all
    ``s²`` output phases.

    Definition (the gradient of a strided convolution, scatter form):
    ``out[b, s·i + dy − p, s·j + dx − p, f] += Σ_c x[b, i, j, c] · kernel[dy, dx, c, f]``.
    Why: it does exactly the useful ``k²·C·F`` multiply-adds per input pixel as one large
    matmul; the zero-dilated convolution XLA lowers a transposed convolution to spends
    ``1 − 1/s²`` of its work on inserted zeros, on XLA:CPU's slower convolution path.
    Summing per shift rather than per tap matters for the gradient: each slice's gradient
    pads a full-size tensor, ``(k/s)²`` of them instead of ``k²`` (DCGAN's 7×7 128→64 layer,
    forward+backward at batch 64: 32.6 → 20.0 ms).

    Args:
      x: ``[B, H, W, C]``; kernel: ``[k, k, C, F]`` with ``k`` a multiple of ``s``.
      stride: s >= 1; padding: 0 <= p < k, cropped from each side of the full output.
    Returns:
      ``[B, (H − 1)·s + k − 2p, (W − 1)·s + k − 2p, F]``.
    """
    b, h, w, c = x.shape
    k, f = kernel.shape[0], kernel.shape[-1]
    s, t = stride, kernel.shape[0] // stride  # tap dy = s·a + r feeds output row s·(i + a) + r
    # columns ordered (a, a2, r, r2, F): one slice per shift (a, a2) carries all s² phases,
    # so the gradient pads t² slabs into z rather than k² single taps
    taps = kernel.reshape(t, s, t, s, c, f).transpose(4, 0, 2, 1, 3, 5).reshape(c, k * k * f)
    z = (x.reshape(-1, c) @ taps).reshape(b, h, w, t, t, s, s, f)
    full = sum(
        jnp.pad(z[:, :, :, a, a2], ((0, 0), (a, t - 1 - a), (a2, t - 1 - a2), (0, 0), (0, 0), (0, 0)))
        for a in range(t)
        for a2 in range(t)
    )  # [B, H + t − 1, W + t − 1, s(r), s(r2), F]
    return _interleave_phases(full, padding)


def subpixel_conv_transpose(x, kernel, stride: int, padding: int):
    """:func:`col2im_conv_transpose` as one stride-1 convolution to ``s²·F`` channels (one
    per output phase) followed by depth-to-space: the sub-pixel form.

    With tap ``dy = s·a + r`` and ``t = k/s``, output row ``s·m + r`` (before cropping) sums
    ``x[m − a]·kernel[s·a + r]`` over ``a < t``: a ``t×t`` 'VALID' convolution of the input
    padded by ``t − 1`` on every side, whose kernel holds the taps of all ``s²`` phases.
    Why: its gradient is :func:`im2col_conv`'s (``t²`` slices), where col2im's ``k²`` tap
    slices each pad a full-size tensor. It does ``((H + t − 1)(W + t − 1))/(H·W)`` times
    col2im's multiply-adds (the border), so :func:`cpu_conv_transpose` uses it only where
    the matmul is wide and the border small.

    Args and returns: as :func:`col2im_conv_transpose`.
    """
    b, h, w, c = x.shape
    k, f = kernel.shape[0], kernel.shape[-1]
    s, t = stride, k // stride
    # window offset e = t − 1 − a over the padded input reads x[m − a]: flip the a axes
    taps = kernel.reshape(t, s, t, s, c, f)[::-1, :, ::-1]  # [e, r, e2, r2, C, F]
    taps = taps.transpose(0, 2, 4, 1, 3, 5).reshape(t, t, c, s * s * f)  # output channels (r, r2, F)
    padded = jnp.pad(x, ((0, 0), (t - 1, t - 1), (t - 1, t - 1), (0, 0)))
    phases = im2col_conv(padded, taps, 1).reshape(b, h + t - 1, w + t - 1, s, s, f)
    return _interleave_phases(phases, padding)


def _interleave_phases(phases, padding: int):
    """Output phases ``[B, H', W', s, s, F]`` (row phase, column phase) -> the image
    ``[B, s·H' − 2p, s·W' − 2p, F]``: full-output row ``s·m + r`` is phase ``r`` of row ``m``,
    then ``p`` rows and columns are cropped from each side (``s·H' − 2p = (H − 1)·s + k − 2p``
    with ``H' = H + k/s − 1``)."""
    b, hh, ww, s, _, f = phases.shape
    full = phases.transpose(0, 1, 3, 2, 4, 5).reshape(b, hh * s, ww * s, f)
    return full[:, padding : hh * s - padding, padding : ww * s - padding]


def cpu_conv_transpose(x, kernel, stride: int, padding: int):
    """:func:`subpixel_conv_transpose` where its matmul is at least as deep as it is wide
    (``s²·F ≥ C``) and the border adds at most 35% (inputs of 7×7 and up for ``k = 4, s = 2``),
    else :func:`col2im_conv_transpose`.

    Forward+backward at batch 64 on the 2-core CPU (k = 4, s = 2), col2im vs sub-pixel, medians
    of three runs: 7×7 128→64 20.0 vs 20.0 ms; 8×8 256→128 92 vs 104; 16×16 128→64 150 vs 134;
    4×4 512→256 71 vs 109 (border 56%); 14×14 64→1 2.3 vs 9.5 and 32×32 64→3 21 vs 92 (narrow
    matmuls). The rule is within 3% of the best choice on the 64×64 DCGAN's generator and
    ties on the 28×28 one; under the test suite's compile flags (``tests/conftest.py``) sub-pixel
    is 1.7–4× faster on the wide layers.
    """
    _, h, w, c = x.shape
    k, f = kernel.shape[0], kernel.shape[-1]
    t = k // stride
    border = (h + t - 1) * (w + t - 1) / (h * w)
    if stride * stride * f >= c and border <= 1.35:
        return subpixel_conv_transpose(x, kernel, stride, padding)
    return col2im_conv_transpose(x, kernel, stride, padding)


def native_conv_transpose(x, kernel, stride: int, padding: int):
    """:func:`col2im_conv_transpose` by XLA's convolution: a stride-1 convolution of the
    ``s``-dilated input with the spatially flipped kernel, ``k − 1 − p`` zeros each side."""
    k = kernel.shape[0]
    edge = k - 1 - padding
    return lax.conv_general_dilated(
        x, kernel[::-1, ::-1], (1, 1), [(edge, edge)] * 2, lhs_dilation=(stride, stride), dimension_numbers=_DIMS
    )


class ConvTranspose(nn.Module):
    """A transposed convolution with PyTorch's ``ConvTranspose2d(C, F, k, stride, padding)``
    geometry (output side ``(H − 1)·s + k − 2p``; DCGAN's ``k = 4, s = 2, p = 1`` doubles
    it). Parameters ``kernel [k, k, C, F]`` (tap ``[dy, dx]`` scatters input pixel ``(i, j)``
    to output ``(s·i + dy − p, s·j + dx − p)``) and ``bias [F]``. CPU runs
    :func:`cpu_conv_transpose`; accelerators the native :func:`native_conv_transpose`.
    """

    features: int
    kernel_size: int
    stride: int = 2
    padding: int = 0
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x):
        k, s, p = self.kernel_size, self.stride, self.padding
        if s < 1 or k % s:
            raise ValueError(f"ConvTranspose: `kernel_size` must be a multiple of `stride`; got kernel {k}, stride {s}")
        if not 0 <= p < k:
            raise ValueError(f"ConvTranspose: `padding` must be in [0, {k}); got {p}")
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features))
        conv = cpu_conv_transpose if jax.default_backend() == "cpu" else native_conv_transpose
        y = conv(x, kernel, s, p)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,))
        return y


def _same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    """TF/Flax ``"SAME"`` padding of one axis: output ``ceil(size / s)``, the odd pixel at the end."""
    total = max((-(-size // s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def _same_transpose_pads(k: int, s: int) -> tuple[int, int]:
    """``lax.conv_transpose(padding="SAME")``'s padding of the zero-dilated input (jax's
    ``_conv_transpose_padding``): output side ``s·H``."""
    pad_len = k + s - 2
    pad_a = k - 1 if s > k - 1 else -(-pad_len // 2)
    return pad_a, pad_len - pad_a


class SameConv(nn.Module):
    """``nn.Conv(features, (k, k), strides=s, padding="SAME")``, same parameters and the same
    function (TF's asymmetric SAME: the extra zero goes after), run on CPU as explicit
    padding plus :func:`cpu_conv`: XLA:CPU's native path for a strided convolution's gradient
    is the slow generic one (see :func:`im2col_conv`)."""

    features: int
    kernel_size: int
    stride: int = 1
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (self.kernel_size, self.kernel_size, x.shape[-1], self.features))
        y = self._conv(x, kernel, self.kernel_size, self.stride)
        return y + self.param("bias", nn.initializers.zeros, (self.features,))

    @staticmethod
    def _conv(x, kernel, k, s):
        if jax.default_backend() == "cpu":
            pads = [(0, 0), _same_pads(x.shape[1], k, s), _same_pads(x.shape[2], k, s), (0, 0)]
            return cpu_conv(jnp.pad(x, pads), kernel, s)
        return lax.conv_general_dilated(x, kernel, (s, s), "SAME", dimension_numbers=_DIMS)


class SameConvTranspose(SameConv):
    """``nn.ConvTranspose(features, (k, k), strides=(s, s), padding="SAME")`` (output side
    ``s·H``), same parameters and function: a stride-1 convolution of the zero-dilated,
    padded input. On CPU the dilation and padding are one ``lax.pad`` (interior padding) and
    the convolution is :func:`cpu_conv`, so the gradient is a matmul and a strided slice
    instead of XLA:CPU's slow strided-convolution path. It still multiplies the inserted
    zeros (``1 − 1/s²`` of the work); :class:`ConvTranspose` avoids that, with PyTorch's geometry."""

    @staticmethod
    def _conv(x, kernel, k, s):
        if jax.default_backend() == "cpu":
            lo, hi = _same_transpose_pads(k, s)
            dilated = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), (lo, hi, s - 1), (lo, hi, s - 1), (0, 0, 0)])
            return cpu_conv(dilated, kernel, 1)
        return lax.conv_transpose(x, kernel, (s, s), "SAME", dimension_numbers=_DIMS)
