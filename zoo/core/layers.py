"""Layers shared by the families."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_DIMS = ("NHWC", "HWIO", "NHWC")


def space_to_depth_conv(x, kernel, stride: int):
    """A 'VALID' strided 2-D convolution computed as a stride-1 convolution on a
    space-to-depth view of ``x``: equal to ``lax.conv_general_dilated(x, kernel, (s, s),
    "VALID")`` up to float rounding.

    Why: XLA:CPU computes the *input gradient* of a strided convolution through a slow
    generic path (CapsNet's 9×9 stride-2 256→256 conv: 35 s forward+backward at batch 100
    on 2 cores, 2.1 s in this form). The kernel is zero-padded to a multiple of the
    stride and regrouped, ``[k, k, C, F] -> [k'/s, k'/s, s*s*C, F]``.

    Args:
      x: ``[B, H, W, C]``.
      kernel: ``[k, k, C, F]``.
      stride: s >= 1.
    Returns:
      ``[B, (H - k)//s + 1, (W - k)//s + 1, F]``.
    """
    b, h, w, c = x.shape
    k = kernel.shape[0]
    s = stride
    ho, wo = (h - k) // s + 1, (w - k) // s + 1
    hp, wp, kp = -(-h // s) * s, -(-w // s) * s, -(-k // s) * s
    x = jnp.pad(x, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
    x = x.reshape(b, hp // s, s, wp // s, s, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, hp // s, wp // s, s * s * c)
    kernel = jnp.pad(kernel, ((0, kp - k), (0, kp - k), (0, 0), (0, 0)))
    kernel = kernel.reshape(kp // s, s, kp // s, s, c, -1).transpose(0, 2, 1, 3, 4, 5).reshape(kp // s, kp // s, s * s * c, -1)
    out = lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=_DIMS)
    return out[:, :ho, :wo]


class StridedConv(nn.Module):
    """``nn.Conv(features, (k, k), (s, s), padding="VALID")`` with the same parameters
    (``kernel [k, k, C, F]``, ``bias [F]``), computed by :func:`space_to_depth_conv` on
    CPU, where XLA's strided-conv gradient is slow, and natively elsewhere."""

    features: int
    kernel_size: int
    stride: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        shape = (self.kernel_size, self.kernel_size, c, self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape)
        if self.stride == 1 or jax.default_backend() != "cpu":
            y = lax.conv_general_dilated(x, kernel, (self.stride,) * 2, "VALID", dimension_numbers=_DIMS)
        else:
            y = space_to_depth_conv(x, kernel, self.stride)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,))
        return y
