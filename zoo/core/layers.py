"""Layers shared by the families."""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

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


def cpu_conv(x, kernel, stride: int):
    """The cheaper of :func:`im2col_conv` and :func:`shift_add_conv` for this shape."""
    kh, kw, c, f = kernel.shape
    if stride == 1 and kh * kw > 1 and f < c:
        return shift_add_conv(x, kernel)
    return im2col_conv(x, kernel, stride)


class Conv(nn.Module):
    """``nn.Conv(features, (k, k), (s, s), padding)`` with the same parameters (``kernel
    [k, k, C, F]``, ``bias [F]``), computed on CPU by :func:`cpu_conv` (im2col, or
    shift-and-add when ``F < C``) and by XLA's native convolution on accelerators.

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
            y = y + self.param("bias", nn.initializers.zeros, (self.features,))
        return y


class ValidConv(Conv):
    """:class:`Conv` with ``padding="VALID"`` (the capsule models' convolutions)."""


def col2im_conv_transpose(x, kernel, stride: int, padding: int):
    """A transposed convolution (PyTorch ``ConvTranspose2d(k, stride=s, padding=p)``) as
    one matmul to ``k²·F`` channels followed by shifted sums, one per output phase.

    Definition (the gradient of a strided convolution, scatter form):
    ``out[b, s·i + dy − p, s·j + dx − p, f] += Σ_c x[b, i, j, c] · kernel[dy, dx, c, f]``.
    Why: it does exactly the useful ``k²·C·F`` multiply-adds per input pixel as one large
    matmul; the zero-dilated convolution XLA lowers a transposed convolution to spends
    ``1 − 1/s²`` of its work on inserted zeros, on XLA:CPU's slower convolution path.

    Args:
      x: ``[B, H, W, C]``; kernel: ``[k, k, C, F]`` with ``k`` a multiple of ``s``.
      stride: s >= 1; padding: 0 <= p < k, cropped from each side of the full output.
    Returns:
      ``[B, (H − 1)·s + k − 2p, (W − 1)·s + k − 2p, F]``.
    """
    b, h, w, c = x.shape
    k, f = kernel.shape[0], kernel.shape[-1]
    s, t = stride, kernel.shape[0] // stride  # tap dy = s·a + r feeds output row s·(i + a) + r
    z = (x.reshape(-1, c) @ kernel.transpose(2, 0, 1, 3).reshape(c, k * k * f)).reshape(b, h, w, k, k, f)
    phases = []
    for ry in range(s):
        row = []
        for rx in range(s):
            acc = jnp.zeros((b, h + t - 1, w + t - 1, f), z.dtype)
            for a in range(t):
                for a2 in range(t):
                    tap = z[:, :, :, s * a + ry, s * a2 + rx]
                    acc = acc + jnp.pad(tap, ((0, 0), (a, t - 1 - a), (a2, t - 1 - a2), (0, 0)))
            row.append(acc)
        phases.append(jnp.stack(row, axis=3))  # [B, H', W', s(rx), F]
    full = jnp.stack(phases, axis=2)  # [B, H', s(ry), W', s(rx), F]
    full = full.reshape(b, (h + t - 1) * s, (w + t - 1) * s, f)
    out_h, out_w = (h - 1) * s + k - 2 * padding, (w - 1) * s + k - 2 * padding
    return full[:, padding : padding + out_h, padding : padding + out_w]


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
    :func:`col2im_conv_transpose`; accelerators the native :func:`native_conv_transpose`.
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
        conv = col2im_conv_transpose if jax.default_backend() == "cpu" else native_conv_transpose
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
