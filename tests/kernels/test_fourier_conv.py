"""The Fourier-domain convolution equals XLA's convolution (values and gradients, any stride and
kernel shape), its float32 error is a direct convolution's, and bad arguments raise clearly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels.fourier_conv import fourier_conv, fourier_conv_reference, fourier_matrices, half_spectrum, num_products
from zoo.core.layers import cpu_conv, fourier_pays


def _problem(seed, x_shape, k_shape):
    key = jax.random.key(seed)
    x = jax.random.normal(jax.random.fold_in(key, 0), x_shape)
    kernel = jax.random.normal(jax.random.fold_in(key, 1), k_shape) / np.sqrt(np.prod(k_shape[:3]))
    return x, kernel, jax.random.fold_in(key, 2)


# (x shape, kernel shape, stride): odd and even kernels, non-square kernels and images, strides
# that do and do not divide the kernel or the image, a kernel as large as the image
CASES = [
    ((2, 9, 9, 3), (3, 3, 3, 4), 1),
    ((3, 10, 7, 2), (4, 2, 2, 5), 2),
    ((2, 20, 20, 4), (9, 9, 4, 6), 2),  # CapsNet's primary capsules, few channels
    ((1, 11, 13, 3), (5, 3, 3, 2), 3),
    ((2, 6, 5, 2), (6, 5, 2, 3), 1),  # one output pixel
    ((2, 8, 8, 1), (1, 1, 1, 3), 2),
    ((2, 11, 9, 2), (2, 3, 2, 3), 3),  # stride larger than the kernel
    ((1, 9, 10, 2), (3, 3, 2, 2), 2),  # odd phase rows n, even phase columns m
]


@pytest.mark.parametrize("x_shape,k_shape,stride", CASES)
def test_values_and_gradients_equal_the_reference(x_shape, k_shape, stride):
    x, kernel, key = _problem(sum(x_shape) + stride, x_shape, k_shape)
    want = fourier_conv_reference(x, kernel, stride)
    got = jax.jit(fourier_conv, static_argnums=2)(x, kernel, stride)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    ct = jax.random.normal(key, want.shape)  # a random cotangent
    fast = jax.jit(jax.grad(lambda a, b: jnp.sum(fourier_conv(a, b, stride) * ct), argnums=(0, 1)))(x, kernel)
    ref = jax.grad(lambda a, b: jnp.sum(fourier_conv_reference(a, b, stride) * ct), argnums=(0, 1))(x, kernel)
    for a, b in zip(fast, ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _direct_float64(x, kernel, stride):
    """The convolution as explicit sums over taps, in numpy float64: the oracle."""
    x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    kh, kw = kernel.shape[:2]
    ho, wo = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, kernel.shape[3]))
    for dy in range(kh):
        for dx in range(kw):
            patch = x[:, dy : dy + stride * (ho - 1) + 1 : stride, dx : dx + stride * (wo - 1) + 1 : stride]
            out += patch @ kernel[dy, dx]
    return out


def test_float32_error_is_a_direct_convolutions():
    # CapsNet's layer shape with fewer channels: the DFT's rounding must not add to the error
    x, kernel, _ = _problem(7, (4, 20, 20, 32), (9, 9, 32, 24))
    exact = _direct_float64(x, kernel, 2)
    scale = np.max(np.abs(exact))
    err_fourier = np.max(np.abs(np.asarray(fourier_conv(x, kernel, 2), np.float64) - exact)) / scale
    err_direct = np.max(np.abs(np.asarray(fourier_conv_reference(x, kernel, 2), np.float64) - exact)) / scale
    assert err_fourier < 1e-6
    assert err_fourier <= 4 * err_direct, (err_fourier, err_direct)


def test_the_matrices_diagonalise_a_circular_correlation():
    # y = E · ((Fx x) ⊙ (Fk k)) for one channel, against the sums written out (float64)
    rng = np.random.default_rng(0)
    n, m, th, tw = 6, 5, 3, 2
    x, k = rng.normal(size=(n, m)), rng.normal(size=(th, tw))
    fx, fk, e = fourier_matrices(n, m, th, tw, n - th + 1, m - tw + 1)
    y = e @ ((fx @ x.ravel()) * (fk @ k.ravel()))
    want = [np.sum(x[i : i + th, j : j + tw] * k) for i in range(n - th + 1) for j in range(m - tw + 1)]
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    # one product per real bin (u, v in {0, n/2} x {0, m/2}: here 2 x 1), three per other bin
    # of the half spectrum: one of each conjugate pair, (6·5 − 2) / 2 = 14 complex bins
    assert fx.shape[0] == 3 * 14 + 2 == num_products(n, m)
    for n2, m2 in ((10, 10), (9, 10), (7, 5), (1, 1)):
        assert fourier_matrices(n2, m2, 1, 1, n2, m2)[0].shape[0] == num_products(n2, m2)
    assert num_products(10, 10) == 3 * 48 + 4  # CapsNet's primary capsules: 148 products


def test_the_half_spectrum_holds_one_bin_per_conjugate_pair():
    for n, m in ((10, 10), (9, 10), (10, 9), (7, 5), (6, 1), (1, 1), (2, 2)):
        u, v = half_spectrum(n, m)
        kept = set(zip(u.tolist(), v.tolist()))
        orbits = {frozenset({(a, b), ((-a) % n, (-b) % m)}) for a in range(n) for b in range(m)}
        assert len(kept) == len(u) == len(orbits), (n, m)
        assert all(len(kept & orbit) == 1 for orbit in orbits), (n, m)


def test_jit_and_vmap_agree_with_eager():
    x, kernel, _ = _problem(3, (3, 2, 12, 12, 4), (5, 5, 4, 3))
    eager = np.stack([fourier_conv(xi, kernel, 2) for xi in x])
    jitted = np.stack([jax.jit(fourier_conv, static_argnums=2)(xi, kernel, 2) for xi in x])
    np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-6)
    batched = jax.vmap(lambda xi: fourier_conv(xi, kernel, 2))(x)
    np.testing.assert_allclose(batched, eager, rtol=1e-5, atol=1e-5)


def test_half_precision_is_computed_in_float32_and_keeps_its_dtype():
    x, kernel, key = _problem(11, (2, 20, 20, 8), (9, 9, 8, 6))
    xb, kb = x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
    exact = _direct_float64(xb.astype(jnp.float32), kb.astype(jnp.float32), 2)  # same rounded inputs
    got = fourier_conv(xb, kb, 2)
    assert got.dtype == jnp.bfloat16
    err = np.max(np.abs(np.asarray(got, np.float64) - exact)) / np.max(np.abs(exact))
    assert err <= 2**-8  # the output's own rounding: half a bfloat16 ulp is 2^-9 relative
    ct = jax.random.normal(key, got.shape, jnp.bfloat16)
    grads = jax.grad(lambda a, b: jnp.sum((fourier_conv(a, b, 2) * ct).astype(jnp.float32)), argnums=(0, 1))(xb, kb)
    assert [g.dtype for g in grads] == [jnp.bfloat16, jnp.bfloat16]


def test_bad_arguments_raise_clear_errors():
    x = jnp.zeros((2, 8, 8, 3))
    with pytest.raises(ValueError, match=r"fourier_conv: `x` must be \[B, H, W, C\] \(rank 4\); got shape \(8, 8, 3\)"):
        fourier_conv(x[0], jnp.zeros((3, 3, 3, 2)))
    with pytest.raises(ValueError, match=r"`kernel` must be \[kh, kw, C, F\] with C = 3 \(x's channels\); got shape \(3, 3, 4, 2\)"):
        fourier_conv(x, jnp.zeros((3, 3, 4, 2)))
    with pytest.raises(ValueError, match=r"`stride` must be an int >= 1; got 0"):
        fourier_conv(x, jnp.zeros((3, 3, 3, 2)), 0)
    with pytest.raises(ValueError, match=r"`x` must be at least the kernel's 9×3 pixels; got 8×8"):
        fourier_conv(x, jnp.zeros((9, 3, 3, 2)))
    with pytest.raises(ValueError, match=r"`x` must be floating point; got dtype int32"):
        fourier_conv(jnp.zeros((2, 8, 8, 3), jnp.int32), jnp.zeros((3, 3, 3, 2)))
    with pytest.raises(ValueError, match=r"`kernel` must be x's dtype float32; got dtype bfloat16"):
        fourier_conv(x, jnp.zeros((3, 3, 3, 2), jnp.bfloat16))


def test_cpu_conv_takes_the_fourier_path_only_where_it_saves_work():
    assert fourier_pays((100, 20, 20, 256), (9, 9, 256, 256), 2)  # CapsNet's primary capsules
    assert not fourier_pays((100, 28, 28, 1), (9, 9, 1, 256), 1)  # CapsNet's first conv: one channel
    assert fourier_pays((64, 16, 16, 128), (5, 5, 128, 128), 1)  # measured 1.5x faster
    assert not fourier_pays((64, 18, 18, 512), (3, 3, 512, 512), 1)  # Glow's 3x3 (SAME-padded): no faster
    assert not fourier_pays((100, 10, 10, 448), (3, 3, 448, 384), 1)  # Inception's Mixed_7 3x3: untimed
    assert not fourier_pays((64, 14, 14, 64), (4, 4, 64, 128), 2)  # DCGAN's discriminator


def test_cpu_conv_dispatches_on_fourier_pays(monkeypatch):
    import zoo.core.layers as layers

    calls = []
    monkeypatch.setattr(layers, "fourier_conv", lambda *a: calls.append(a[2]) or fourier_conv(*a))
    shape = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
    out = jax.eval_shape(lambda x, k: cpu_conv(x, k, 2), shape(100, 20, 20, 256), shape(9, 9, 256, 256))
    assert out.shape == (100, 6, 6, 256) and calls == [2]
    jax.eval_shape(lambda x, k: cpu_conv(x, k, 1), shape(100, 28, 28, 1), shape(9, 9, 1, 256))
    assert calls == [2]  # the first conv stays direct
