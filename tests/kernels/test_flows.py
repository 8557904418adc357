"""kernels/flows.py against its reference twins and against exact oracles: ``slogdet`` of
``jax.jacfwd`` for every log-det, ``slogdet`` of the rebuilt weight for the LU form."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import flows as F


def jacobian_log_det(fn, x):
    """``log|det ∂fn(x)/∂x|`` of one example, from the dense Jacobian (the oracle)."""
    d = x.size
    jac = jax.jacfwd(lambda v: fn(v.reshape(x.shape)).reshape(-1))(x.reshape(-1))
    sign, logdet = jnp.linalg.slogdet(jac.reshape(d, d))
    assert float(sign) != 0.0
    return float(logdet)


def assert_log_det_matches_jacobian(bijection, x, rtol=1e-5):
    """``bijection(x[B,...]) -> (y, log_det[B])``: every example's log-det vs the oracle."""
    _, log_det = bijection(x)
    for n in range(x.shape[0]):
        want = jacobian_log_det(lambda v: bijection(v[None])[0][0], x[n])
        np.testing.assert_allclose(float(log_det[n]), want, rtol=rtol, atol=1e-5)


def assert_round_trip(bijection, x, atol=1e-4):
    y, fwd = bijection(x)
    x_back, inv = bijection(y, inverse=True)
    np.testing.assert_allclose(x_back, x, atol=atol)
    np.testing.assert_allclose(inv, -fwd, rtol=1e-5, atol=1e-4)  # inverse log-det = −forward


def grads(fn, args, probe):
    return jax.grad(lambda *a: jnp.sum(fn(*a)[0] * probe) + jnp.sum(fn(*a)[1]), argnums=tuple(range(len(args))))(*args)


# --------------------------------------------------------------------------- #
# actnorm
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (4, 7)])
@pytest.mark.parametrize("inverse", [False, True])
def test_actnorm_matches_reference_values_and_gradients(rng, shape, inverse):
    c = shape[-1]
    x = rng.normal(size=shape).astype(np.float32)
    loc, log_scale = rng.normal(size=(2, c)).astype(np.float32)
    got = F.actnorm(x, loc, log_scale, inverse=inverse)
    want = F.actnorm_reference(x, loc, log_scale, inverse=inverse)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    probe = rng.normal(size=shape).astype(np.float32)
    fn = lambda *a: F.actnorm(*a, inverse=inverse)  # noqa: E731
    ref = lambda *a: F.actnorm_reference(*a, inverse=inverse)  # noqa: E731
    for a, b in zip(grads(fn, (x, loc, log_scale), probe), grads(ref, (x, loc, log_scale), probe)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_actnorm_log_det_and_round_trip(rng):
    x = rng.normal(size=(2, 3, 2, 4)).astype(np.float32)
    loc, log_scale = rng.normal(size=(2, 4)).astype(np.float32)
    bij = lambda v, inverse=False: F.actnorm(v, loc, log_scale, inverse=inverse)  # noqa: E731
    assert_log_det_matches_jacobian(bij, x)
    assert_round_trip(bij, x)


def test_actnorm_data_init_standardises_the_init_batch(rng):
    x = (3.0 + 2.5 * rng.normal(size=(16, 5, 5, 3))).astype(np.float32)
    loc, log_scale = F.actnorm_data_init(x)
    y, _ = F.actnorm(x, loc, log_scale)
    flat = np.asarray(y).reshape(-1, 3)
    np.testing.assert_allclose(flat.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(flat.std(0), 1.0, atol=1e-4)


# --------------------------------------------------------------------------- #
# invertible 1x1 convolution
# --------------------------------------------------------------------------- #


def random_lu(rng, c):
    p = F.lu_init(jax.random.key(int(rng.integers(1 << 30))), c)
    noise = lambda: (0.3 * rng.normal(size=(c, c))).astype(np.float32)  # noqa: E731
    return dict(p, lower=p["lower"] + noise(), upper=p["upper"] + noise(), log_s=p["log_s"] + 0.3 * rng.normal(size=c).astype(np.float32))


def test_lu_init_is_a_rotation_and_lu_log_det_equals_slogdet_of_the_weight(rng):
    start = F.lu_init(jax.random.key(0), 6)
    w0 = F.lu_weight(**start)
    np.testing.assert_allclose(w0 @ w0.T, np.eye(6), atol=1e-5)
    p = random_lu(rng, 6)
    w = F.lu_weight(**p)
    sign, logdet = np.linalg.slogdet(np.asarray(w, np.float64))
    np.testing.assert_allclose(float(jnp.sum(p["log_s"])), logdet, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(F.lu_inverse_weight(**p) @ w, np.eye(6), atol=1e-4)


@pytest.mark.parametrize("inverse", [False, True])
def test_invertible_conv1x1_matches_reference(rng, inverse):
    p = random_lu(rng, 4)
    x = rng.normal(size=(2, 3, 2, 4)).astype(np.float32)
    y, log_det = F.invertible_conv1x1(x, **p, inverse=inverse)
    y_ref, log_det_ref = F.invertible_conv1x1_reference(x, F.lu_weight(**p), inverse=inverse)
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(log_det, log_det_ref, rtol=1e-4, atol=1e-4)
    y_sd, log_det_sd = F.invertible_conv1x1_slogdet(x, F.lu_weight(**p), inverse=inverse)
    np.testing.assert_allclose(y_sd, y_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(log_det_sd, log_det_ref, rtol=1e-4, atol=1e-4)
    # Gradients w.r.t. the free LU parameters: LU path vs slogdet of the rebuilt weight.
    probe = rng.normal(size=y.shape).astype(np.float32)
    fixed = dict(perm=p["perm"], sign_s=p["sign_s"])

    def via_lu(lower, upper, log_s):
        return F.invertible_conv1x1(x, lower=lower, upper=upper, log_s=log_s, **fixed, inverse=inverse)

    def via_reference(lower, upper, log_s):
        w = F.lu_weight(lower=lower, upper=upper, log_s=log_s, **fixed)
        return F.invertible_conv1x1_reference(x, w, inverse=inverse)

    args = (p["lower"], p["upper"], p["log_s"])
    for a, b in zip(grads(via_lu, args, probe), grads(via_reference, args, probe)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_invertible_conv1x1_log_det_and_round_trip(rng):
    p = random_lu(rng, 4)
    x = rng.normal(size=(2, 2, 3, 4)).astype(np.float32)
    bij = lambda v, inverse=False: F.invertible_conv1x1(v, **p, inverse=inverse)  # noqa: E731
    assert_log_det_matches_jacobian(bij, x)
    assert_round_trip(bij, x)


# --------------------------------------------------------------------------- #
# couplings, conditional standardisation
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("inverse", [False, True])
def test_affine_coupling_matches_reference(rng, inverse):
    x2, raw, shift = rng.normal(size=(3, 2, 3, 3, 2)).astype(np.float32) * 2
    got = F.affine_coupling(x2, raw, shift, inverse=inverse)
    want = F.affine_coupling_reference(x2, raw, shift, inverse=inverse)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    probe = rng.normal(size=x2.shape).astype(np.float32)
    fn = lambda *a: F.affine_coupling(*a, inverse=inverse)  # noqa: E731
    ref = lambda *a: F.affine_coupling_reference(*a, inverse=inverse)  # noqa: E731
    for a, b in zip(grads(fn, (x2, raw, shift), probe), grads(ref, (x2, raw, shift), probe)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_affine_coupling_stays_finite_both_ways_at_extreme_raw_scales():
    x2 = jnp.ones((1, 4))
    raw = jnp.array([[-1e4, -200.0, 50.0, 1e4]])
    y, log_det = F.affine_coupling(x2, raw, jnp.zeros((1, 4)))
    x_back, inv = F.affine_coupling(y, raw, jnp.zeros((1, 4)), inverse=True)
    assert np.all(np.isfinite(y)) and np.isfinite(float(log_det[0])) and np.all(np.isfinite(x_back))
    np.testing.assert_allclose(x_back, x2, rtol=1e-5)
    np.testing.assert_allclose(inv, -log_det)
    np.testing.assert_allclose(float(log_det[0]), 2 * float(jax.nn.log_sigmoid(-58.0)), rtol=1e-5)  # clipped at −60
    # a sampler feeding an untrained network's output back: no inf·0 = NaN
    z, _ = F.affine_coupling(jnp.zeros((1, 4)), raw, jnp.zeros((1, 4)), inverse=True)
    assert np.all(np.isfinite(z))


def test_coupling_and_standardize_log_dets_match_jacobians(rng):
    x = rng.normal(size=(2, 2, 2, 4)).astype(np.float32)
    w = rng.normal(size=(2, 4)).astype(np.float32)

    def affine(v, inverse=False):  # a real coupling: scale and shift depend on the first half
        x1, x2 = F.split_channels(v)
        h = jnp.tanh(x1 @ w)
        if inverse:
            y2, ld = F.affine_coupling(x2, h[..., :2], h[..., 2:], inverse=True)
        else:
            y2, ld = F.affine_coupling(x2, h[..., :2], h[..., 2:])
        return jnp.concatenate([x1, y2], -1), ld

    def standardize(v, inverse=False):
        h, z = F.split_channels(v)
        eps, ld = F.conditional_standardize(z, jnp.sin(h), 0.5 * jnp.cos(h), inverse=inverse)
        return jnp.concatenate([h, eps], -1), ld

    def additive(v, inverse=False):
        x1, x2 = F.split_channels(v)
        y2, ld = F.additive_coupling(x2, jnp.tanh(x1 @ w[:, :2]), sign=-1.0, inverse=inverse)
        return jnp.concatenate([x1, y2], -1), ld

    for bij in (affine, standardize, additive):
        assert_log_det_matches_jacobian(bij, x)
        assert_round_trip(bij, x)


# --------------------------------------------------------------------------- #
# squeeze, densities, bpd
# --------------------------------------------------------------------------- #


def test_squeeze_matches_reference_and_unsqueeze_inverts_it(rng):
    x = rng.normal(size=(2, 4, 6, 3)).astype(np.float32)
    y = F.squeeze(x)
    assert y.shape == (2, 2, 3, 12)
    np.testing.assert_array_equal(y, F.squeeze_reference(x))
    np.testing.assert_array_equal(F.unsqueeze(y), x)


def test_bits_per_dim_of_the_uniform_density_is_eight_bits():
    # The uniform density on [-0.5, 0.5)^D has log p = 0: exactly log2(256) = 8 bits/dim.
    np.testing.assert_allclose(F.bits_per_dim(jnp.zeros(3), 784), 8.0, rtol=1e-6)
    # and a density 2^D times higher everywhere saves exactly one bit per dimension
    np.testing.assert_allclose(F.bits_per_dim(jnp.full(3, 784 * math.log(2.0)), 784), 7.0, rtol=1e-6)


def test_dequantize_stays_inside_each_pixels_bin(rng):
    x = rng.integers(0, 256, size=(4, 5, 5, 1)).astype(np.uint8)
    y = np.asarray(F.dequantize(jax.random.key(0), x))
    assert y.min() >= -0.5 and y.max() < 0.5
    np.testing.assert_array_equal(np.floor((y + 0.5) * 256).astype(np.uint8), x)


def test_standard_normal_log_prob():
    z = jnp.array([[0.0, 1.0], [2.0, -1.0]])
    want = [-math.log(2 * math.pi) - 0.5, -math.log(2 * math.pi) - 2.5]
    np.testing.assert_allclose(F.standard_normal_log_prob(z), want, rtol=1e-6)


# --------------------------------------------------------------------------- #
# bad input
# --------------------------------------------------------------------------- #


def test_bad_inputs_raise_errors_that_name_the_argument():
    x = jnp.zeros((2, 4, 4, 3))
    with pytest.raises(ValueError, match=r"split_channels: `x` must be an even channel count; got C = 3"):
        F.split_channels(x)
    with pytest.raises(ValueError, match=r"squeeze: `x` must be an image with H and W divisible by 2; got H, W = 5, 4"):
        F.squeeze(jnp.zeros((1, 5, 4, 1)))
    with pytest.raises(ValueError, match=r"invertible_conv1x1: `x` must be an image batch .* got shape \(4, 3\)"):
        F.invertible_conv1x1(jnp.zeros((4, 3)), **F.lu_init(jax.random.key(0), 3))
    with pytest.raises(ValueError, match=r"actnorm: `loc` must be shape \[C\] = \(3,\); got shape \(4,\)"):
        F.actnorm(x, jnp.zeros(4), jnp.zeros(3))
    with pytest.raises(ValueError, match=r"affine_coupling: `shift` must be shape \(2, 4, 4, 3\)"):
        F.affine_coupling(x, x, jnp.zeros((2, 4, 4, 2)))
    with pytest.raises(ValueError, match=r"actnorm: `x` must be floating point; got dtype int32"):
        F.actnorm(jnp.zeros((2, 3), jnp.int32), jnp.zeros(3), jnp.zeros(3))
    with pytest.raises(ValueError, match=r"invertible_conv1x1: `perm` must be shape \[C, C\] = \(3, 3\)"):
        F.invertible_conv1x1(x, **F.lu_init(jax.random.key(0), 4))


def test_dequantize_and_bits_per_dim_reject_bad_inputs():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"dequantize: `x_uint8` must be integer pixel values in \[0, 256\); got dtype float32"):
        F.dequantize(key, jnp.array([0.0, 0.5, 1.0]))  # images already in [0, 1] would all land in bin 0
    with pytest.raises(ValueError, match=r"dequantize: `x_uint8` must be values in \[0, 16\); got values in \[0, 255\]"):
        F.dequantize(key, np.array([0, 255], np.int32), num_bins=16)
    with pytest.raises(ValueError, match=r"dequantize: `num_bins` must be a Python int >= 2; got 0"):
        F.dequantize(key, np.array([0], np.uint8), num_bins=0)
    with pytest.raises(ValueError, match=r"bits_per_dim: `num_dims` must be a Python int >= 1; got 0"):
        F.bits_per_dim(jnp.zeros(1), 0)
    with pytest.raises(ValueError, match=r"bits_per_dim: `num_bins` must be a Python int >= 2; got 1"):
        F.bits_per_dim(jnp.zeros(1), 4, num_bins=1)
    np.testing.assert_allclose(F.bits_per_dim(jnp.zeros(1), np.int64(4)), 8.0, rtol=1e-6)  # numpy ints are fine
