"""zoo/gan/energy.py: the MALA log ratio against a float64 numpy formula, the unadjusted
Langevin chain against its exact Gaussian law, MALA against its Gaussian targets (the
tolerances are 5 standard errors of the statistic over independent chains)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.gan import energy as E


def gaussian_energy(precision):
    """``U(z) = ½ zᵀ P z`` per chain, the energy of ``N(0, P⁻¹)``."""
    p = jnp.asarray(precision, jnp.float32)
    return lambda z: 0.5 * jnp.einsum("bi,ij,bj->b", z, p, z)


def assert_within(got, want, stderr, k=5.0):
    np.testing.assert_array_less(np.abs(np.asarray(got) - want), k * np.asarray(stderr))


# --------------------------------------------------------------------------- #
# MALA: the Metropolis–Hastings ratio
# --------------------------------------------------------------------------- #


def quartic(z):  # a non-Gaussian energy with a closed-form gradient: U = ¼‖z‖⁴ + c·z
    return 0.25 * np.sum(z**2, -1) ** 2 + z @ np.array([0.3, -0.7])


def quartic_grad(z):
    return np.sum(z**2, -1, keepdims=True) * z + np.array([0.3, -0.7])


def test_mala_log_acceptance_matches_float64_formula(rng):
    z, z_prop = rng.normal(size=(2, 6, 2))
    eps = 0.3

    def log_q(to, frm):  # log N(to; frm − (ε/2)∇U(frm), ε I) up to its constant
        return -np.sum((to - frm + 0.5 * eps * quartic_grad(frm)) ** 2, -1) / (2 * eps)

    want = quartic(z) - quartic(z_prop) + log_q(z, z_prop) - log_q(z_prop, z)
    energy = lambda v: 0.25 * jnp.sum(v**2, -1) ** 2 + v @ jnp.array([0.3, -0.7])  # noqa: E731
    got = E.mala_log_acceptance(energy, jnp.asarray(z, jnp.float32), jnp.asarray(z_prop, jnp.float32), step_size=eps)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    back = E.mala_log_acceptance(energy, jnp.asarray(z_prop, jnp.float32), jnp.asarray(z, jnp.float32), step_size=eps)
    np.testing.assert_allclose(back, -np.asarray(got), rtol=1e-4, atol=1e-4)  # detailed balance


# --------------------------------------------------------------------------- #
# Unadjusted Langevin: an exact oracle
# --------------------------------------------------------------------------- #


def test_langevin_matches_its_exact_gaussian_law():
    # On U = ½ Σ z_i²/σ_i², z ← a·z + √ε ξ with a = 1 − ε/(2σ²): after n steps from z0 the
    # chain is N(aⁿz0, v(1 − a²ⁿ)) with v = ε/(1 − a²) ≠ σ² — ULA's step-size bias.
    sigma2, eps, n, chains = np.array([1.0, 0.5]), 0.5, 20, 10000
    a = 1 - eps / (2 * sigma2)
    v = eps / (1 - a**2)
    assert np.all(np.abs(v - sigma2) > 0.1 * sigma2)  # the bias is there to be seen
    z0 = jnp.ones((chains, 2))
    z = np.asarray(E.langevin_sample(gaussian_energy(np.diag(1 / sigma2)), jax.random.key(0), z0, step_size=eps, num_steps=n))
    mean, var = a**n, v * (1 - a ** (2 * n))
    assert_within(z.mean(0), mean, np.sqrt(var / chains))
    assert_within(z.var(0), var, var * np.sqrt(2 / chains))


# --------------------------------------------------------------------------- #
# MALA: the target is exact
# --------------------------------------------------------------------------- #


def test_mala_samples_standard_and_anisotropic_gaussians():
    # One run on N(0, blockdiag(I₂, Σ)): a standard normal pair and a correlated pair, which
    # the target makes independent (one compile instead of two keeps the test fast).
    cov = np.array([[1.5, 0.6], [0.6, 0.8]])
    full = np.block([[np.eye(2), np.zeros((2, 2))], [np.zeros((2, 2)), cov]])
    precision, chains, eps = np.linalg.inv(full), 2000, 0.5
    z0 = 3.0 * jax.random.normal(jax.random.key(1), (chains, 4))  # overdispersed start
    z, rate = E.mala_sample(gaussian_energy(precision), jax.random.key(2), z0, step_size=eps, num_steps=200)
    z = np.asarray(z, np.float64)

    normal = z[:, :2].reshape(-1)  # 4000 independent N(0, 1) draws
    assert_within(normal.mean(), 0.0, np.sqrt(1 / normal.size))
    assert_within(normal.var(), 1.0, np.sqrt(2 / normal.size))

    pair = z[:, 2:]
    stderr = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / chains)  # of each second moment
    assert_within(pair.T @ pair / chains, cov, stderr)  # the mean is 0 exactly
    assert_within(pair.mean(0), 0.0, np.sqrt(np.diag(cov) / chains))
    assert 0.5 < float(rate) < 1.0  # a real Metropolis step: some proposals are refused

    # Without the correction the chain z ← Mz + √ε ξ, M = I − εP/2, would settle on
    # S = ε(I − M²)⁻¹ instead (1.14 for the unit variances), which these draws tell apart.
    m = np.eye(4) - 0.5 * eps * precision
    ula_var = np.diag(eps * np.linalg.inv(np.eye(4) - m @ m))
    assert np.all(np.abs(ula_var[:2] - 1.0) > 5 * np.sqrt(2 / normal.size))


# --------------------------------------------------------------------------- #
# Latent energy and the entropy surrogate
# --------------------------------------------------------------------------- #


def test_latent_energy_composes_and_entropy_term_is_the_mean_squared_error(rng):
    w = rng.normal(size=(3, 5)).astype(np.float32)
    z = rng.normal(size=(4, 3)).astype(np.float32)
    energy = E.latent_energy(lambda v: v @ w, lambda x: 0.5 * jnp.sum(x**2, -1))
    np.testing.assert_allclose(energy(z), 0.5 * np.sum((z @ w) ** 2, -1), rtol=1e-5)
    z_rec = rng.normal(size=(4, 3)).astype(np.float32)
    np.testing.assert_allclose(E.encoder_entropy_term(z, z_rec), np.mean(np.sum((z - z_rec) ** 2, -1)), rtol=1e-6)


# --------------------------------------------------------------------------- #
# Bad inputs
# --------------------------------------------------------------------------- #

U = gaussian_energy(np.eye(2))
KEY = jax.random.key(0)
Z = jnp.zeros((3, 2))


@pytest.mark.parametrize("sampler", [E.langevin_sample, E.mala_sample])
@pytest.mark.parametrize(
    "kwargs, arg",
    [
        ({"z0": jnp.zeros(3)}, "z0` must be latents of shape \\[B, Z\\] \\(rank 2\\); got shape \\(3,\\)"),
        ({"z0": jnp.zeros((3, 2), jnp.int32)}, "z0` must be floating point; got dtype int32"),
        ({"key": jax.random.PRNGKey(0)}, "key"),
        ({"energy_fn": lambda z: jnp.sum(z**2)}, "energy_fn"),
        ({"energy_fn": None}, "energy_fn"),
        ({"step_size": 0.0}, "step_size"),
        ({"num_steps": 0}, "num_steps"),
    ],
)
def test_sampler_bad_inputs_raise_naming_the_argument(sampler, kwargs, arg):
    """``arg``: the argument's name, or (for ``z0``) the start of the exact message after it."""
    call = {"energy_fn": U, "key": KEY, "z0": Z, "step_size": 0.1, "num_steps": 2} | kwargs
    pattern = f"`{arg}" if "`" in arg else rf"`{arg}`.* must .*; got "
    with pytest.raises(ValueError, match=pattern):
        sampler(call.pop("energy_fn"), call.pop("key"), call.pop("z0"), **call)


@pytest.mark.parametrize(
    "call, arg",
    [
        (lambda: E.mala_log_acceptance(U, Z, jnp.zeros((4, 2)), step_size=0.1), "z_prop"),
        (lambda: E.mala_log_acceptance(U, Z, Z, step_size=-1.0), "step_size"),
        (lambda: E.encoder_entropy_term(Z, jnp.zeros((3, 3))), "z_rec"),
        (lambda: E.encoder_entropy_term(jnp.zeros(3), jnp.zeros(3)), "z"),
        (lambda: E.latent_energy("G", U), "g_fn"),
        (lambda: E.latent_energy(lambda z: z, 1.0), "u_fn"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(call, arg):
    with pytest.raises(ValueError, match=rf"`{arg}`.* must .*; got "):
        call()
