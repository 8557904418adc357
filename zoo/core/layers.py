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
      kernel: ``[k, k, C, F]``.
      stride: s >= 1.
    Returns:
      ``[B, (H - k)//s + 1, (W - k)//s + 1, F]``.
    """
    b, h, w, c = x.shape
    k = kernel.shape[0]
    ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
    columns = [
        x[:, dy : dy + stride * (ho - 1) + 1 : stride, dx : dx + stride * (wo - 1) + 1 : stride]
        for dy in range(k)
        for dx in range(k)
    ]
    patches = jnp.stack(columns, axis=3).reshape(b * ho * wo, k * k * c)  # (dy, dx, c) order = HWIO
    return (patches @ kernel.reshape(k * k * c, -1)).reshape(b, ho, wo, -1)


def shift_add_conv(x, kernel):
    """A stride-1 'VALID' convolution as one matmul to ``k²·F`` channels, then a sum of
    ``k²`` shifted slices. Cheaper than :func:`im2col_conv` when ``F < C`` (Glow's zero-init
    output convs: 512 → a few channels): the intermediate is ``B·H·W·k²·F`` floats instead
    of ``B·H'·W'·k²·C``.

    Args:
      x: ``[B, H, W, C]``; kernel: ``[k, k, C, F]``.
    Returns:
      ``[B, H − k + 1, W − k + 1, F]``.
    """
    b, h, w, c = x.shape
    k, f = kernel.shape[0], kernel.shape[-1]
    ho, wo = h - k + 1, w - k + 1
    z = (x.reshape(-1, c) @ kernel.transpose(2, 0, 1, 3).reshape(c, k * k * f)).reshape(b, h, w, k, k, f)
    return sum(z[:, dy : dy + ho, dx : dx + wo, dy, dx] for dy in range(k) for dx in range(k))


def cpu_conv(x, kernel, stride: int):
    """The cheaper of :func:`im2col_conv` and :func:`shift_add_conv` for this shape."""
    k, c, f = kernel.shape[0], kernel.shape[2], kernel.shape[3]
    if stride == 1 and k > 1 and f < c:
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

    ``padding``: ``"VALID"``, or ``"SAME"`` (stride 1 only: ``(k − 1)/2`` zeros each side,
    odd ``k``).
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
        if self.padding not in ("VALID", "SAME"):
            raise ValueError(f"Conv: `padding` must be 'VALID' or 'SAME'; got {self.padding!r}")
        if self.padding == "SAME" and (self.stride != 1 or k % 2 == 0):
            raise ValueError(f"Conv: 'SAME' needs stride 1 and an odd kernel; got stride {self.stride}, kernel {k}")
        kernel = self.param("kernel", self.kernel_init, (k, k, c, self.features))
        if self.padding == "SAME" and k > 1:
            x = jnp.pad(x, ((0, 0), ((k - 1) // 2,) * 2, ((k - 1) // 2,) * 2, (0, 0)))
        if jax.default_backend() == "cpu":
            y = cpu_conv(x, kernel, self.stride)
        else:
            y = lax.conv_general_dilated(x, kernel, (self.stride,) * 2, "VALID", dimension_numbers=_DIMS)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,))
        return y


class ValidConv(Conv):
    """:class:`Conv` with ``padding="VALID"`` (the capsule models' convolutions)."""
