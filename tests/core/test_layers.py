"""zoo.core.layers: the CPU convolution paths equal XLA's native convolution (values and gradients)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from zoo.core import layers
from zoo.core.layers import (
    Conv, ConvTranspose, SameConv, SameConvTranspose, col2im_conv_transpose, cpu_conv, cpu_conv_transpose, im2col_conv,
    native_conv_transpose, shift_add_conv, space_to_depth_conv, subpixel_conv_transpose,
)  # fmt: skip


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


@pytest.mark.parametrize("kh,kw,stride", [(1, 7, 1), (7, 1, 1), (3, 1, 2), (1, 1, 2), (3, 3, 2)])
def test_im2col_and_shift_add_equal_native_conv_for_rectangular_kernels_and_strides(rng, kh, kw, stride):
    x = rng.normal(size=(2, 9, 10, 4)).astype(np.float32)
    kernel = rng.normal(size=(kh, kw, 4, 3)).astype(np.float32)
    want = lax.conv_general_dilated(x, kernel, (stride,) * 2, "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(jax.jit(im2col_conv, static_argnums=2)(x, kernel, stride), want, rtol=1e-5, atol=1e-4)
    if stride == 1:
        np.testing.assert_allclose(jax.jit(shift_add_conv)(x, kernel), want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kh,kw,stride,h,w", [(4, 4, 2, 9, 10), (4, 2, 2, 8, 7), (6, 3, 3, 11, 9), (2, 2, 2, 5, 5)])
def test_space_to_depth_conv_equals_native_strided_conv(rng, kh, kw, stride, h, w):
    """Values and both gradients; odd sides leave trailing rows no output reads."""
    x = rng.normal(size=(2, h, w, 3)).astype(np.float32)
    kernel = rng.normal(size=(kh, kw, 3, 4)).astype(np.float32)

    def strided(a, b):
        return lax.conv_general_dilated(a, b, (stride,) * 2, "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    want = strided(x, kernel)
    for fn in (space_to_depth_conv, cpu_conv):
        got = jax.jit(fn, static_argnums=2)(x, kernel, stride)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4, err_msg=fn.__name__)
    probe = rng.normal(size=want.shape).astype(np.float32)
    g_want = jax.grad(lambda a, b: jnp.sum(strided(a, b) * probe), argnums=(0, 1))(x, kernel)
    g_got = jax.jit(jax.grad(lambda a, b: jnp.sum(space_to_depth_conv(a, b, stride) * probe), argnums=(0, 1)))(x, kernel)
    for a, b in zip(g_got, g_want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="`kernel` sides must be multiples of `stride` 2 >= 1; got 3×3"):
        space_to_depth_conv(x, np.zeros((3, 3, 3, 4), np.float32), 2)


@pytest.mark.parametrize("h,w,c,f,k,s", [(7, 9, 4, 3, 3, 2), (6, 5, 3, 2, 4, 2), (5, 5, 2, 3, 3, 3)])
def test_same_conv_and_transpose_equal_flax_same_with_the_same_parameters(rng, h, w, c, f, k, s):
    """TF/Flax SAME geometry, odd and even sides, strides 1-3: values and gradients."""
    x = jnp.asarray(rng.normal(size=(2, h, w, c)).astype(np.float32))
    pairs = ((SameConv(f, k, s), nn.Conv(f, (k, k), strides=s, padding="SAME")),
             (SameConvTranspose(f, k, s), nn.ConvTranspose(f, (k, k), strides=(s, s), padding="SAME")))  # fmt: skip
    for ours, theirs in pairs:
        variables = theirs.init(jax.random.key(0), x)
        variables = jax.tree.map(lambda a: a + 0.1 * jnp.asarray(rng.normal(size=a.shape), a.dtype), variables)  # bias != 0
        assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(jnp.shape, variables)
        want = jax.jit(theirs.apply)(variables, x)
        np.testing.assert_allclose(jax.jit(ours.apply)(variables, x), want, rtol=1e-5, atol=1e-5)
        g_ours = jax.jit(jax.grad(lambda v, x: jnp.sum(jnp.sin(ours.apply(v, x))), argnums=(0, 1)))(variables, x)
        g_theirs = jax.jit(jax.grad(lambda v, x: jnp.sum(jnp.sin(theirs.apply(v, x))), argnums=(0, 1)))(variables, x)
        for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_theirs)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * max(1.0, float(jnp.max(jnp.abs(b)))))


@pytest.mark.parametrize("c,f", [(2, 8), (8, 2)])  # both CPU paths: im2col (f > c) and shift-add (f < c)
def test_same_conv_matches_flax_conv_with_the_same_parameters(rng, c, f):
    x = rng.normal(size=(2, 5, 6, c)).astype(np.float32)
    ours, theirs = Conv(f, 3, padding="SAME"), nn.Conv(f, (3, 3), padding="SAME")
    variables = theirs.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(jnp.shape, variables)
    np.testing.assert_allclose(ours.apply(variables, x), theirs.apply(variables, x), rtol=1e-5, atol=1e-4)


def test_conv_rejects_unsupported_padding():
    x = jnp.zeros((1, 4, 4, 2))
    with pytest.raises(ValueError, match="`padding` must be 'VALID', 'SAME' or an int >= 0; got 'FULL'"):
        Conv(2, 3, padding="FULL").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="'SAME' needs stride 1 and an odd kernel; got stride 2, kernel 3"):
        Conv(2, 3, stride=2, padding="SAME").init(jax.random.key(0), x)


def test_int_padding_strided_conv_matches_flax_conv(rng):
    x = rng.normal(size=(2, 8, 6, 3)).astype(np.float32)
    ours, theirs = Conv(5, 4, stride=2, padding=1), nn.Conv(5, (4, 4), (2, 2), padding=((1, 1), (1, 1)))
    variables = theirs.init(jax.random.key(0), x)
    got = ours.apply(variables, x)
    assert got.shape == (2, 4, 3, 5)
    np.testing.assert_allclose(got, theirs.apply(variables, x), rtol=1e-5, atol=1e-4)


def scatter_conv_transpose(x, kernel, s, p):
    """The definition, written as loops: every input pixel scatters ``x · kernel`` taps."""
    b, h, w, _ = x.shape
    k, f = kernel.shape[0], kernel.shape[-1]
    full = np.zeros((b, (h - 1) * s + k, (w - 1) * s + k, f))
    for i in range(h):
        for j in range(w):
            for dy in range(k):
                for dx in range(k):
                    full[:, s * i + dy, s * j + dx] += x[:, i, j] @ kernel[dy, dx]
    return full[:, p : full.shape[1] - p, p : full.shape[2] - p]


TRANSPOSE_PATHS = (col2im_conv_transpose, subpixel_conv_transpose, native_conv_transpose)


@pytest.mark.parametrize("k,s,p,h,w", [(4, 2, 1, 3, 4), (4, 2, 0, 2, 2), (3, 1, 1, 3, 3), (6, 3, 2, 2, 3), (2, 2, 0, 3, 5)])
def test_conv_transpose_paths_equal_the_scatter_definition(rng, k, s, p, h, w):
    x = rng.normal(size=(2, h, w, 3)).astype(np.float32)
    kernel = rng.normal(size=(k, k, 3, 2)).astype(np.float32)
    want = scatter_conv_transpose(x.astype(np.float64), kernel.astype(np.float64), s, p)
    for fn in TRANSPOSE_PATHS:
        got = jax.jit(fn, static_argnums=(2, 3))(x, kernel, s, p)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4, err_msg=fn.__name__)
    probe = rng.normal(size=want.shape).astype(np.float32)
    grads = [jax.jit(jax.grad(lambda a, b, fn=fn: jnp.sum(fn(a, b, s, p) * probe), argnums=(0, 1)))(x, kernel)
             for fn in TRANSPOSE_PATHS]  # fmt: skip
    for got in grads[:-1]:
        for a, b in zip(got, grads[-1]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("h,c,f,want", [(7, 16, 8, subpixel_conv_transpose), (14, 8, 1, col2im_conv_transpose),
                                        (4, 16, 8, col2im_conv_transpose)])  # fmt: skip
def test_cpu_conv_transpose_picks_sub_pixel_for_wide_matmuls_and_small_borders(rng, h, c, f, want, monkeypatch):
    """The choice, seen by which path runs; and the chosen path's value is the definition's."""
    called = []
    for name in ("subpixel_conv_transpose", "col2im_conv_transpose"):
        real = getattr(layers, name)
        monkeypatch.setattr(layers, name, lambda *a, real=real, name=name: called.append(name) or real(*a))
    x = rng.normal(size=(1, h, h, c)).astype(np.float32)
    kernel = rng.normal(size=(4, 4, c, f)).astype(np.float32)
    np.testing.assert_allclose(cpu_conv_transpose(x, kernel, 2, 1), scatter_conv_transpose(x, kernel, 2, 1), rtol=1e-4, atol=1e-4)
    assert called == [want.__name__]


def test_conv_transpose_module_doubles_the_side_and_checks_its_arguments():
    x = jnp.zeros((1, 7, 7, 4))
    variables = ConvTranspose(2, 4, stride=2, padding=1).init(jax.random.key(0), x)
    assert ConvTranspose(2, 4, stride=2, padding=1).apply(variables, x).shape == (1, 14, 14, 2)
    with pytest.raises(ValueError, match="`kernel_size` must be a multiple of `stride`; got kernel 3, stride 2"):
        ConvTranspose(2, 3, stride=2).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"`padding` must be in \[0, 4\); got 4"):
        ConvTranspose(2, 4, stride=2, padding=4).init(jax.random.key(0), x)


def test_torch_default_init_draws_kernel_and_bias_like_pytorch_conv2d():
    """U(±1/√fan_in) for both (PyTorch's kaiming_uniform_(a=√5) and its bias rule), fan_in = k·k·C."""
    conv = layers.Conv(256, 3, **layers.torch_default_init(3 * 3 * 16))
    p = conv.init(jax.random.key(0), jnp.zeros((1, 5, 5, 16)))["params"]
    bound = 1.0 / np.sqrt(3 * 3 * 16)
    for name in ("kernel", "bias"):
        x = np.asarray(p[name])
        assert np.abs(x).max() <= bound and np.abs(x).max() > 0.95 * bound, name
    kernel = np.asarray(p["kernel"])
    np.testing.assert_allclose(kernel.var(), bound**2 / 3, rtol=0.05)  # the variance of U(−b, b)
    np.testing.assert_allclose(kernel.mean(), 0.0, atol=0.01 * bound)


def test_add_bias_equals_plain_add_in_value_gradients_and_dtypes(rng):
    y = jnp.asarray(rng.normal(size=(3, 5, 4, 6)), jnp.float32)
    bias = jnp.asarray(rng.normal(size=(6,)), jnp.float32)
    probe = jnp.asarray(rng.normal(size=y.shape), jnp.float32)

    def loss(add):
        return lambda y, b: jnp.sum(jnp.sin(add(y, b)) * probe)

    np.testing.assert_array_equal(layers.add_bias(y, bias), y + bias)
    got = jax.jit(jax.grad(loss(layers.add_bias), argnums=(0, 1)))(y, bias)
    want = jax.grad(loss(jnp.add), argnums=(0, 1))(y, bias)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-5)  # sum order differs
    # mixed dtypes: each cotangent takes its primal's dtype
    g_y, g_b = jax.grad(lambda y, b: jnp.sum(layers.add_bias(y, b).astype(jnp.float32)), argnums=(0, 1))(
        y.astype(jnp.bfloat16), bias
    )
    assert (g_y.dtype, g_b.dtype) == (jnp.bfloat16, jnp.float32)
    np.testing.assert_array_equal(g_b, np.full(6, 3 * 5 * 4, np.float32))
    # a bfloat16 gradient is summed in float32: 2,049 ones (a bfloat16 accumulator stops counting at
    # 256; XLA:CPU accumulates a bfloat16 dot in float32 anyway, accelerators need the explicit type)
    long = jnp.ones((2049, 6), jnp.bfloat16)
    g_b = jax.grad(lambda b: jnp.sum(layers.add_bias(long, b).astype(jnp.float32)))(bias)
    np.testing.assert_array_equal(g_b, np.full(6, 2049, np.float32))
    message = r"add_bias: `bias` must be \[F\] with F = y's last axis \(\(6,\)\); got bias shape \(4,\)"
    for call in (lambda: layers.add_bias(y, bias[:4]), lambda: jax.grad(lambda b: layers.add_bias(y, b).sum())(bias[:4])):
        with pytest.raises(ValueError, match=message):
            call()


def test_conv_bias_grad_as_matmul_changes_no_value_or_gradient(rng):
    x = jnp.asarray(rng.normal(size=(2, 9, 8, 3)), jnp.float32)
    plain, matmul = Conv(5, 3, stride=2), Conv(5, 3, stride=2, bias_grad_as_matmul=True)
    params = plain.init(jax.random.key(0), x)["params"]
    params["bias"] = jnp.asarray(rng.normal(size=(5,)), jnp.float32)

    def grads(module):
        return jax.grad(lambda p: jnp.sum(jnp.tanh(module.apply({"params": p}, x))))(params)

    np.testing.assert_array_equal(matmul.apply({"params": params}, x), plain.apply({"params": params}, x))
    got, want = grads(matmul), grads(plain)
    np.testing.assert_array_equal(got["kernel"], want["kernel"])
    np.testing.assert_allclose(got["bias"], want["bias"], rtol=1e-5, atol=1e-5)
