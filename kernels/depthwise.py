"""Depthwise 2-D convolution (one ``k×k`` filter per channel, stride 1, "SAME" padding).

NVAE's generative cell runs a 5×5 depthwise convolution on the widest tensor of the model.
On XLA:CPU, ``lax.conv_general_dilated(..., feature_group_count=C)`` is slow here. We timed
it, ad hoc, on ``[64, 28, 28, 48]`` on the project's 2-core CPU: 97 ms forward and 365 ms
forward plus both gradients. :func:`depthwise_conv2d` writes the filter as the sum of its
``k²`` shifted, per-channel-scaled copies of the padded input. XLA fuses that into one
elementwise loop: 3.3 ms forward, 161 ms with gradients under autodiff.

Its VJP is written by hand (reverse mode only: ``jax.jvp`` through it raises). The input
gradient is the same shifted sum of the output gradient ``g`` with the flipped kernel. The
kernel gradient is ``k²`` sums over ``B·H·W``, taken as one variadic reduction
(:func:`kernels.reductions.sums`). In NVAE, ``g`` comes out of a BatchNorm backward that
XLA fuses into its readers; autodiff's ``k²`` separate reductions recomputed it in each.
NVAE's train step (2-core CPU, ad hoc A/B, two runs each): 0.98–1.02 s → 0.76–0.77 s. Alone,
on ``[64, 28, 28, 48]`` with a ``sin`` after it, forward and gradients: 133 → 120 ms.

:func:`depthwise_conv2d_reference` is the grouped convolution itself; the tests compare the
two, values and gradients.

Shapes: ``x [B, H, W, C]``, ``kernel [k, k, 1, C]`` (flax's layout for
``feature_group_count = C``), odd ``k``; output ``[B, H, W, C]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels.checks import argument_error as _error
from kernels.reductions import sums


def _check(fn, x, kernel):
    if jnp.ndim(x) != 4:
        raise _error(fn, "x", "[B, H, W, C] (rank 4)", f"shape {tuple(jnp.shape(x))}")
    k = jnp.shape(kernel)
    c = jnp.shape(x)[-1]
    if len(k) != 4 or k[0] != k[1] or k[0] % 2 == 0 or k[2] != 1 or k[3] != c:
        raise _error(fn, "kernel", f"[k, k, 1, {c}] with odd k (one filter per channel of x)", f"shape {tuple(k)}")


def depthwise_conv2d(x, kernel):
    """``out[b, h, w, c] = Σ_{i,j} x_pad[b, h + i, w + j, c]·kernel[i, j, 0, c]`` (zero padding ``k//2``).

    Differentiable in reverse mode (a ``custom_vjp``, see the module docstring)."""
    _check("depthwise_conv2d", x, kernel)
    return _depthwise(x, kernel)


def _shifted_sum(x, kernel):
    k = kernel.shape[0]
    p = k // 2
    h, w = x.shape[1], x.shape[2]
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    out = jnp.zeros(x.shape, jnp.result_type(x, kernel))
    for i in range(k):
        for j in range(k):
            out = out + xp[:, i : i + h, j : j + w, :] * kernel[i, j, 0]
    return out


_depthwise = jax.custom_vjp(_shifted_sum)


def _depthwise_fwd(x, kernel):
    return _shifted_sum(x, kernel), (x, kernel)


def _depthwise_bwd(residuals, g):  # g: [B, H, W, C]
    x, kernel = residuals
    k = kernel.shape[0]
    p = k // 2
    h, w = x.shape[1], x.shape[2]
    d_x = _shifted_sum(g, kernel[::-1, ::-1])
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    # One reduction with k² outputs: g (BatchNorm's backward, fused) is computed once per
    # element, where autodiff's k² separate reductions each recomputed it.
    per_tap = sums([g * xp[:, i : i + h, j : j + w, :] for i in range(k) for j in range(k)], axes=(0, 1, 2))
    d_kernel = jnp.stack(per_tap).reshape(kernel.shape)
    return d_x.astype(x.dtype), d_kernel.astype(kernel.dtype)


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def depthwise_conv2d_reference(x, kernel):
    """The same convolution as ``lax.conv_general_dilated`` with ``feature_group_count = C``."""
    _check("depthwise_conv2d_reference", x, kernel)
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1]
    )
