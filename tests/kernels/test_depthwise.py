"""The shifted-sum depthwise convolution equals XLA's grouped convolution: values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels.depthwise import depthwise_conv2d, depthwise_conv2d_reference


@pytest.mark.parametrize("shape,k", [((2, 7, 5, 3), 5), ((3, 4, 6, 8), 3), ((1, 3, 3, 2), 1)])
def test_values_and_gradients_match_the_grouped_convolution(shape, k):
    key = jax.random.key(sum(shape) + k)
    x = jax.random.normal(jax.random.fold_in(key, 0), shape)
    w = jax.random.normal(jax.random.fold_in(key, 1), (k, k, 1, shape[-1]))
    ct = jax.random.normal(jax.random.fold_in(key, 2), shape)  # a random cotangent
    np.testing.assert_allclose(depthwise_conv2d(x, w), depthwise_conv2d_reference(x, w), rtol=1e-5, atol=1e-5)
    fast = jax.grad(lambda x, w: jnp.sum(depthwise_conv2d(x, w) * ct), argnums=(0, 1))(x, w)
    ref = jax.grad(lambda x, w: jnp.sum(depthwise_conv2d_reference(x, w) * ct), argnums=(0, 1))(x, w)
    for a, b in zip(fast, ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_jit_and_vmap_agree():
    x = jax.random.normal(jax.random.key(0), (3, 2, 5, 5, 4))
    w = jax.random.normal(jax.random.key(1), (3, 3, 1, 4))
    out = jax.vmap(lambda xi: jax.jit(depthwise_conv2d)(xi, w))(x)
    np.testing.assert_allclose(out, np.stack([depthwise_conv2d(xi, w) for xi in x]), rtol=1e-6, atol=1e-6)


def test_bad_shapes_raise_clear_errors():
    x = jnp.zeros((2, 5, 5, 4))
    with pytest.raises(ValueError, match=r"depthwise_conv2d: `kernel` must be \[k, k, 1, 4\] with odd k"):
        depthwise_conv2d(x, jnp.zeros((4, 4, 1, 4)))
    with pytest.raises(ValueError, match=r"`kernel` must be \[k, k, 1, 4\]"):
        depthwise_conv2d(x, jnp.zeros((3, 3, 1, 3)))
    with pytest.raises(ValueError, match=r"`x` must be \[B, H, W, C\] \(rank 4\); got shape \(5, 5, 4\)"):
        depthwise_conv2d(x[0], jnp.zeros((3, 3, 1, 4)))
