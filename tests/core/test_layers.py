"""zoo.core.layers: the CPU convolution paths equal XLA's native convolution (values and gradients)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from zoo.core.layers import Conv, shift_add_conv


def native(x, kernel, padding="VALID"):
    return lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("k,h,w,c,f", [(3, 6, 5, 8, 2), (1, 4, 4, 6, 3), (5, 7, 9, 4, 1)])
def test_shift_add_conv_equals_native_conv(rng, k, h, w, c, f):
    x = rng.normal(size=(2, h, w, c)).astype(np.float32)
    kernel = rng.normal(size=(k, k, c, f)).astype(np.float32)
    want = native(x, kernel)
    np.testing.assert_allclose(shift_add_conv(x, kernel), want, rtol=1e-5, atol=1e-4)
    probe = rng.normal(size=want.shape).astype(np.float32)
    g_want = jax.grad(lambda a, b: jnp.sum(native(a, b) * probe), argnums=(0, 1))(x, kernel)
    g_got = jax.grad(lambda a, b: jnp.sum(shift_add_conv(a, b) * probe), argnums=(0, 1))(x, kernel)
    for a, b in zip(g_got, g_want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("c,f", [(2, 8), (8, 2)])  # both CPU paths: im2col (f > c) and shift-add (f < c)
def test_same_conv_matches_flax_conv_with_the_same_parameters(rng, c, f):
    x = rng.normal(size=(2, 5, 6, c)).astype(np.float32)
    ours, theirs = Conv(f, 3, padding="SAME"), nn.Conv(f, (3, 3), padding="SAME")
    variables = theirs.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(jnp.shape, variables)
    np.testing.assert_allclose(ours.apply(variables, x), theirs.apply(variables, x), rtol=1e-5, atol=1e-4)


def test_conv_rejects_unsupported_padding():
    x = jnp.zeros((1, 4, 4, 2))
    with pytest.raises(ValueError, match="`padding` must be 'VALID' or 'SAME'; got 'FULL'"):
        Conv(2, 3, padding="FULL").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="'SAME' needs stride 1 and an odd kernel; got stride 2, kernel 3"):
        Conv(2, 3, stride=2, padding="SAME").init(jax.random.key(0), x)
