"""The VAE objectives: analytic KL against Monte Carlo, the IWAE bound against the ELBO,
reparameterised against score-function gradients, stable likelihoods, clear errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from zoo.vae import losses as L


def _mc_check(samples, expected, z=5.0):
    """``mean(samples)`` within ``z`` standard errors of ``expected`` (elementwise)."""
    samples = np.asarray(samples, np.float64)
    se = samples.std(axis=0, ddof=1) / math.sqrt(samples.shape[0])
    np.testing.assert_array_less(np.abs(samples.mean(axis=0) - np.asarray(expected)), z * se + 1e-6)


@pytest.mark.parametrize("with_prior_mean", [False, True])
def test_analytic_kl_equals_monte_carlo(rng, with_prior_mean):
    b, d, n = 3, 4, 200_000
    mean = rng.normal(size=(b, d)).astype(np.float32)
    logvar = rng.normal(scale=0.7, size=(b, d)).astype(np.float32)
    prior = rng.normal(size=(b, d)).astype(np.float32) if with_prior_mean else 0.0
    kl = np.asarray(L.gaussian_kl(mean, logvar, prior))
    assert kl.shape == (b,) and np.all(kl >= 0)
    z = mean + np.exp(0.5 * logvar) * jax.random.normal(jax.random.key(0), (n, b, d))
    log_ratio = L.gaussian_log_density(z, mean, logvar) - L.gaussian_log_density(z, prior, 0.0)  # [n, b]
    _mc_check(log_ratio, kl)
    # and the textbook closed form, in float64
    var = np.exp(logvar.astype(np.float64))
    ref = 0.5 * np.sum(var + (mean - prior) ** 2 - 1 - np.log(var), axis=-1)
    np.testing.assert_allclose(kl, ref, rtol=1e-5)


def test_kl_is_zero_at_the_prior_and_the_cvae_prior_moves_it():
    mu = jnp.array([[1.0, -2.0]])
    assert float(L.gaussian_kl(jnp.zeros((1, 2)), jnp.zeros((1, 2)))[0]) == 0.0
    assert float(L.gaussian_kl(mu, jnp.zeros((1, 2)), mu)[0]) == 0.0
    np.testing.assert_allclose(L.gaussian_kl(mu, jnp.zeros((1, 2))), [2.5])


def test_reparameterised_gradient_matches_score_function_and_analytic():
    mu, sigma, n = 0.7, 1.3, 100_000
    eps = np.asarray(jax.random.normal(jax.random.key(1), (n,)), np.float64)

    # reparameterised: d/dθ f(μ + σε) per sample, from jax.grad
    def f(params, e):
        z = params[0] + params[1] * e
        return z**2

    per_sample = np.asarray(jax.vmap(jax.grad(f), in_axes=(None, 0))(jnp.array([mu, sigma]), eps))
    _mc_check(per_sample, [2 * mu, 2 * sigma])
    # score function (REINFORCE): f(z)·∂ log N(z; μ, σ²)/∂θ, with jax.grad of the log-density
    z = mu + sigma * eps
    score = jax.vmap(jax.grad(lambda p, z: L.gaussian_log_density(z[None], p[0], 2 * jnp.log(p[1]))), in_axes=(None, 0))
    reinforce = (z**2)[:, None] * np.asarray(score(jnp.array([mu, sigma]), jnp.asarray(z)), np.float64)
    _mc_check(reinforce, [2 * mu, 2 * sigma])
    # the two estimators agree with each other (reparameterised has the smaller variance)
    assert per_sample[:, 0].std() < reinforce[:, 0].std()


def test_bernoulli_log_likelihood_is_the_naive_formula_and_stays_finite(rng):
    logits = rng.uniform(-10, 10, size=(4, 6, 6, 1)).astype(np.float32)
    x = (rng.random(size=logits.shape) < 0.5).astype(np.float32)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    naive = np.sum((x * np.log(p) + (1 - x) * np.log(1 - p)).reshape(4, -1), axis=-1)
    np.testing.assert_allclose(L.bernoulli_log_likelihood(logits, x), naive, rtol=1e-5)
    big = jnp.array([[100.0, -100.0, 100.0, -100.0]])
    ll = L.bernoulli_log_likelihood(big, jnp.array([[1.0, 0.0, 0.0, 1.0]]))
    np.testing.assert_allclose(ll, [-200.0], rtol=1e-6)
    assert np.isfinite(np.asarray(jax.grad(lambda l: L.bernoulli_log_likelihood(l, jnp.ones_like(l)).sum())(big))).all()
    # grey-level targets (the author's BCE on [0, 1]) also work
    assert np.isfinite(np.asarray(L.bernoulli_log_likelihood(big, jnp.full((1, 4), 0.3)))).all()


def test_gaussian_log_likelihood_fixed_and_per_pixel_scale(rng):
    mean = rng.normal(size=(3, 2, 2, 1)).astype(np.float32)
    x = rng.normal(size=(3, 2, 2, 1)).astype(np.float32)
    ref = stats.norm.logpdf(x, mean).reshape(3, -1).sum(-1)
    np.testing.assert_allclose(L.gaussian_log_likelihood(mean, x), ref, rtol=1e-5)
    log_scale = rng.normal(scale=0.3, size=(2, 2, 1)).astype(np.float32)
    ref = stats.norm.logpdf(x, mean, np.exp(log_scale)).reshape(3, -1).sum(-1)
    np.testing.assert_allclose(L.gaussian_log_likelihood(mean, x, log_scale), ref, rtol=1e-5)


def test_iwae_bound_is_logmeanexp_and_at_least_the_mean(rng):
    log_w = rng.normal(scale=3.0, size=(7, 5)).astype(np.float32) - 100.0
    bound = np.asarray(L.iwae_bound(log_w))
    ref = np.log(np.mean(np.exp(log_w.astype(np.float64) + 100.0), axis=0)) - 100.0
    np.testing.assert_allclose(bound, ref, rtol=1e-5)
    assert np.all(bound >= log_w.mean(axis=0))  # Jensen, sample by sample
    np.testing.assert_array_equal(L.iwae_bound(log_w[:1]), log_w[0])  # L_1 is the single-sample ELBO


def test_soft_logvar_clamp_bounds_and_keeps_gradients():
    raw = jnp.array([-1e4, -3.0, 0.0, 3.0, 1e4])
    out = np.asarray(L.stable_logvar(raw, 10.0, "soft"))
    assert np.all(np.abs(out) <= 10.0) and np.all(np.isfinite(np.exp(out)))
    np.testing.assert_allclose(out, 10.0 * np.tanh(np.asarray(raw) / 10.0), rtol=1e-6)
    # unlike a clip, the gradient stays non-zero beyond the bound: 1 − tanh²(raw/bound)
    for r in (5.0, 20.0):
        np.testing.assert_allclose(float(jax.grad(lambda r: L.stable_logvar(r, 10.0, "soft"))(r)), 1 - np.tanh(r / 10) ** 2, rtol=1e-5)
    np.testing.assert_array_equal(L.stable_logvar(raw, 0.0), raw)


def test_hard_logvar_clamp_clips_with_zero_gradient_outside():
    raw = jnp.array([-1e4, -10.5, -3.0, 0.0, 3.0, 10.5, 1e4])
    np.testing.assert_array_equal(L.stable_logvar(raw, 10.0, "hard"), np.clip(np.asarray(raw), -10.0, 10.0))
    np.testing.assert_array_equal(L.stable_logvar(raw, 10.0), L.stable_logvar(raw, 10.0, "hard"))  # the default
    grad = jax.vmap(jax.grad(lambda r: L.stable_logvar(r, 10.0, "hard")))(raw)
    np.testing.assert_array_equal(grad, [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"stable_logvar: `clamp` must be one of \('soft', 'hard'\); got 'tanh'"):
        L.stable_logvar(raw, 10.0, "tanh")


@pytest.mark.parametrize("clamp", ["soft", "hard"])
def test_binding_logvar_clamp_under_adam(clamp):
    """A loss that keeps pushing the log-variance down (as a long Gaussian-VAE run does at
    the bound): Adam turns the soft clamp's vanishing gradient into full-size steps, so the
    raw value drifts without limit; the hard clamp's zero gradient stops it at the bound."""
    import optax

    tx = optax.adam(0.1)
    grad_fn = jax.grad(lambda r: L.stable_logvar(r, 10.0, clamp))

    def step(carry, _):
        raw, state = carry
        updates, state = tx.update(grad_fn(raw), state)
        return (optax.apply_updates(raw, updates), state), None

    raw = jnp.zeros(())
    (raw, _), _ = jax.jit(lambda c: jax.lax.scan(step, c, None, length=5000))((raw, tx.init(raw)))
    value = float(L.stable_logvar(raw, 10.0, clamp))
    assert value < -9.9, value  # the bound is reached either way
    if clamp == "soft":
        assert float(raw) < -40.0, float(raw)  # -43 here, -80 after 20,000 steps: it never stops
    else:
        assert -12.0 < float(raw) <= -10.0, float(raw)  # momentum overshoots a little, then stops


def test_bits_per_dim():
    assert float(L.bits_per_dim(784 * math.log(2), 784)) == pytest.approx(1.0)
    # a density over [0, 1)^P that is uniform has log p = 0, i.e. 8 bits per 8-bit pixel
    assert float(L.bits_per_dim(0.0, 784, num_bins=256)) == pytest.approx(8.0)


def test_losses_under_jit_and_vmap_match_batched(rng):
    mean, logvar = rng.normal(size=(2, 6, 3)).astype(np.float32)
    batched = L.gaussian_kl(mean, logvar)
    one = jax.vmap(lambda m, v: L.gaussian_kl(m[None], v[None])[0])(mean, logvar)
    np.testing.assert_allclose(jax.jit(L.gaussian_kl)(mean, logvar), batched, rtol=1e-6)
    np.testing.assert_allclose(one, batched, rtol=1e-6)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="gaussian_kl: `logvar` must be the shape of `mean`"):
        L.gaussian_kl(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="gaussian_kl: `prior_mean`"):
        L.gaussian_kl(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="bernoulli_log_likelihood: `x`"):
        L.bernoulli_log_likelihood(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"iwae_bound: `log_weights` must be \[K, B\]"):
        L.iwae_bound(jnp.zeros((3,)))
    with pytest.raises(ValueError, match="elbo: `log_px_z`"):
        L.elbo(jnp.zeros((3,)), jnp.zeros((2, 4)), jnp.zeros((2, 4)))


def test_log_importance_weights_rejects_shapes_that_would_broadcast():
    z, lp = jnp.zeros((3, 2)), jnp.array([-1.0, -2.0, -3.0])
    np.testing.assert_allclose(L.log_importance_weights(lp, z, z, z), lp)  # z at the mean of N(0, I) and q: log w = log p(x|z)
    with pytest.raises(ValueError, match=r"log_importance_weights: `log_px_z` must be shape \(3,\) .*; got shape \(3, 1\)"):
        L.log_importance_weights(lp[:, None], z, z, z)
    with pytest.raises(ValueError, match=r"`z` must be \[\.\.\., B, D\] with \[B, D\] = \(3, 2\) .*; got shape \(2,\)"):
        L.log_importance_weights(lp, z[0], z, z)
    with pytest.raises(ValueError, match=r"`mean, logvar` must be \[B, D\] arrays of one shape; got shapes \(3, 2\), \(3,\)"):
        L.log_importance_weights(lp, z, z, z[:, 0])


def test_bits_per_dim_rejects_zero_dims_and_one_bin():
    with pytest.raises(ValueError, match=r"bits_per_dim: `num_dims` must be a Python int >= 1; got 0"):
        L.bits_per_dim(jnp.zeros(1), 0)
    with pytest.raises(ValueError, match=r"bits_per_dim: `num_bins` must be 0 \(discrete\) or a Python int >= 2; got 1"):
        L.bits_per_dim(jnp.zeros(1), 4, num_bins=1)


def test_bernoulli_log_likelihood_rejects_raw_pixels():
    logits = jnp.ones((1, 4))
    with pytest.raises(ValueError, match=r"bernoulli_log_likelihood: `x` must be in \[0, 1\]; got values in \[0.0, 255.0\]"):
        L.bernoulli_log_likelihood(logits, jnp.array([[0.0, 255.0, 255.0, 0.0]]))
    with pytest.raises(ValueError, match=r"`x` must be floating point in \[0, 1\]; got dtype uint8"):
        L.bernoulli_log_likelihood(logits, jnp.array([[0, 1, 1, 0]], jnp.uint8))


def test_discretized_logistic_masses_sum_to_one_over_the_bins(rng):
    """The exact oracle: evaluated once in every bin (any point inside it), the 256 masses
    ``exp(ll − log 256)`` of each pixel sum to 1, for means inside and far outside [0, 1]."""
    mean = jnp.asarray(rng.uniform(-0.5, 1.5, (5, 1)), jnp.float32)
    log_scale = jnp.asarray(rng.uniform(-6.0, 0.0, (5, 1)), jnp.float32)
    x = (jnp.arange(256.0) + jnp.asarray(rng.uniform(0.0, 1.0, 256), jnp.float32)) / 256.0
    per_bin = jax.vmap(lambda xi: jax.vmap(lambda m, s: L.discretized_logistic_log_likelihood(m, xi[None], s))(mean, log_scale))(x)
    masses = np.exp(np.asarray(per_bin, np.float64)[..., 0] - math.log(256.0))  # [256 bins, 5 pixels]
    np.testing.assert_allclose(masses.sum(axis=0), 1.0, rtol=2e-5)


def test_discretized_logistic_equals_the_naive_difference_in_float64(rng):
    shape = (4, 3, 3, 1)
    mean = rng.uniform(-0.2, 1.2, shape)
    log_scale = rng.uniform(-4.0, -1.0, shape)
    x = (rng.integers(0, 256, shape) + rng.uniform(0, 1, shape)) / 256.0
    k = np.floor(x * 256)
    sig = lambda t: 1.0 / (1.0 + np.exp(-t))  # noqa: E731
    a = np.where(k == 0, -np.inf, (k / 256 - mean) / np.exp(log_scale))
    b = np.where(k == 255, np.inf, ((k + 1) / 256 - mean) / np.exp(log_scale))
    # σ(b) − σ(a), or the same mass as σ(−a) − σ(−b) right of the mean (no 1 − 1 cancellation)
    mass = np.where(a > 0, sig(-a) - sig(-b), sig(b) - sig(a))
    want = (np.log(mass) + math.log(256.0)).reshape(4, -1).sum(axis=1)
    got = L.discretized_logistic_log_likelihood(*(jnp.asarray(a, jnp.float32) for a in (mean, x, log_scale)))
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_discretized_logistic_tails_are_linear_and_finite():
    """A pixel far from a sharp mean costs about distance/scale nats (the Gaussian's cost is
    its square / 2), with finite values and gradients at the edge bins and at extremes."""
    x = jnp.array([[0.3 + 0.5 / 256]])
    for log_scale in (-8.0, -4.0):
        s = math.exp(log_scale)
        cost = -float(L.discretized_logistic_log_likelihood(jnp.array([[0.8]]), x, log_scale)[0]) + math.log(256.0)
        # bin 77 of [0.3008, 0.3047): −log σ(b) ≈ −b = (0.8 − 78/256)/s, −log σ(−a) ≈ 0, and the
        # bin-width term −log(1 − e^{−1/(256 s)}) does not depend on the distance
        assert cost == pytest.approx((0.8 - 78 / 256) / s - math.log(-math.expm1(-1 / (256 * s))), rel=1e-3)
    xs = jnp.array([[0.0, 0.5 / 256, 0.999, 0.5]])
    for mean in (-1e3, -0.5, 0.0, 1.0, 1e3):
        for log_scale in (-8.0, 3.0):
            f = lambda m, s: jnp.sum(L.discretized_logistic_log_likelihood(m, xs, s))  # noqa: E731
            value, grads = jax.value_and_grad(f, argnums=(0, 1))(jnp.full_like(xs, mean), jnp.full_like(xs, log_scale))
            assert np.isfinite(float(value)) and all(np.all(np.isfinite(g)) for g in grads), (mean, log_scale)
