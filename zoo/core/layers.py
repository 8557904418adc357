"""Layers shared by the families."""

from __future__ import annotations

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


class ValidConv(nn.Module):
    """``nn.Conv(features, (k, k), (s, s), padding="VALID")`` with the same parameters
    (``kernel [k, k, C, F]``, ``bias [F]``), computed by :func:`im2col_conv` on CPU and by
    XLA's native convolution on accelerators."""

    features: int
    kernel_size: int
    stride: int = 1
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        shape = (self.kernel_size, self.kernel_size, c, self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape)
        if jax.default_backend() == "cpu":
            y = im2col_conv(x, kernel, self.stride)
        else:
            y = lax.conv_general_dilated(x, kernel, (self.stride,) * 2, "VALID", dimension_numbers=_DIMS)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,))
        return y
