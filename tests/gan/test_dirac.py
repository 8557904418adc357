"""zoo/gan/dirac.py against exact oracles: ``expm`` for RK4 (and its order), hand-derived
closed forms for the four vector fields, scipy's DOP853 for the default trajectories, a numpy
loop for the EMA; then the qualitative results of post 6583 on the final states."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from scipy.integrate import solve_ivp

from zoo.gan import dirac as D

LAM = 0.1  # the default penalty weight, the author's `lamb`


def sigmoid(t):
    return 1.0 / (1.0 + np.exp(-t))


def closed_form(name, y, lam=LAM):
    """dy/dt of (φ₁, φ₂, θ₁, θ₂) derived by hand from the objectives in the module docstring."""
    phi, theta = np.asarray(y[:2], np.float64), np.asarray(y[2:], np.float64)
    n = np.linalg.norm(phi)
    if name == "vanilla":  # d/dφ log σ(−φ·θ) = −σ(φ·θ)θ;  −d/dθ [−log σ(φ·θ)] = (1 − σ(φ·θ))φ
        p = sigmoid(phi @ theta)
        dphi, dtheta = -p * theta, (1 - p) * phi
    elif name == "wgan_hard":  # d/dφ [−φ·θ/‖φ‖] = −θ/‖φ‖ + (φ·θ)φ/‖φ‖³;  θ̇ = φ/‖φ‖
        dphi, dtheta = -theta / n + (phi @ theta) * phi / n**3, phi / n
    elif name == "wgan_gp1":  # d/dφ [−φ·θ − λ(‖φ‖ − 1)²] = −θ − 2λ(1 − 1/‖φ‖)φ
        dphi, dtheta = -theta - 2 * lam * (1 - 1 / n) * phi, phi
    else:  # zero_gp: d/dφ [−φ·θ − λ‖φ‖²] = −θ − 2λφ
        dphi, dtheta = -theta - 2 * lam * phi, phi
    return np.concatenate([dphi, dtheta])


@pytest.fixture(scope="module")
def runs():
    """The four default experiments (the table of scripts/dirac_gan.py), computed once."""
    return {name: D.simulate(name) for name in D.DYNAMICS}


def norms(run, part):
    phi, theta = D.split_state(np.asarray(run["trajectory"]))
    return np.linalg.norm(theta if part == "theta" else phi, axis=-1)


def last(x, fraction=0.2):
    """The last ``fraction`` of a trajectory (the last 20 time units by default)."""
    return x[-int(fraction * len(x)) :]


# --------------------------------------------------------------------------- #
# RK4
# --------------------------------------------------------------------------- #


def rotation_generator(rng, d=4):
    a = rng.normal(size=(d, d))
    return a - a.T  # skew-symmetric: y' = A y is a rotation, exp(At) orthogonal


def test_rk4_matches_matrix_exponential(rng):
    a = rotation_generator(rng)
    y0 = rng.normal(size=4)
    dt, n = 0.02, 50
    got = np.asarray(D.rk4_integrate(lambda y: jnp.asarray(a, jnp.float32) @ y, jnp.asarray(y0, jnp.float32), dt, n))
    want = np.stack([scipy.linalg.expm(a * k * dt) @ y0 for k in range(n + 1)])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_rk4_is_fourth_order_and_substeps_refine(rng):
    a = rotation_generator(rng)
    y0 = rng.normal(size=4)
    want = scipy.linalg.expm(a * 2.0) @ y0
    with jax.enable_x64(True):  # float64 so that truncation, not rounding, is measured
        f = lambda y: jnp.asarray(a) @ y  # noqa: E731
        coarse = D.rk4_integrate(f, jnp.asarray(y0), 0.1, 20)
        fine = D.rk4_integrate(f, jnp.asarray(y0), 0.1, 20, substeps=2)  # steps of 0.05
    errs = [np.abs(np.asarray(traj[-1]) - want).max() for traj in (coarse, fine)]
    assert 14.0 < errs[0] / errs[1] < 18.0, errs  # halving the step divides the error by 2⁴


# --------------------------------------------------------------------------- #
# Vector fields
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", D.DYNAMICS)
def test_vector_field_matches_closed_form(rng, name):
    lam = None if name in ("vanilla", "wgan_hard") else 0.7  # a non-default λ: it must enter
    f = jax.jit(D.vector_field(name, lam=lam))
    for y in rng.normal(size=(5, 4)):
        want = closed_form(name, y, lam=0.7)
        np.testing.assert_allclose(f(jnp.asarray(y, jnp.float32)), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", D.DYNAMICS)
def test_default_trajectory_matches_scipy(runs, name):
    run = runs[name]
    t = np.asarray(run["t"], np.float64)
    ref = solve_ivp(lambda _, y: closed_form(name, y), (0, t[-1]), D.AUTHOR_Y0, method="DOP853", t_eval=t, rtol=1e-10, atol=1e-12)
    # float32 rounding, magnified ~100x over T = 100 by the wgan_hard flow, dominates there.
    atol = 2e-3 if name == "wgan_hard" else 1e-5
    np.testing.assert_allclose(np.asarray(run["trajectory"]), ref.y.T, atol=atol)


# --------------------------------------------------------------------------- #
# EMA
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("debias", [True, False])
def test_ema_matches_loop(rng, debias):
    traj = rng.normal(size=(30, 4)).astype(np.float32)
    beta, theta = 0.9, traj[:, 2:].astype(np.float64)
    want, m = [], np.zeros(2) if debias else theta[0]
    for k, th in enumerate(theta):
        if debias or k > 0:
            m = beta * m + (1 - beta) * th
        want.append(m / (1 - beta ** (k + 1)) if debias else m)
    np.testing.assert_allclose(D.ema_trajectory(traj, beta, debias=debias), np.stack(want), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(D.ema_trajectory(traj, 0.0, debias=debias), traj[:, 2:])  # β = 0: no averaging


# --------------------------------------------------------------------------- #
# What the dynamics do (post 6583's findings, checked on the final states)
# --------------------------------------------------------------------------- #


def turns(x):
    """Sign changes of a 1-D signal: how many half oscillations it made."""
    s = np.sign(x)
    return int(np.sum(s[1:] != s[:-1]))


def test_vanilla_oscillates_and_does_not_converge(runs):
    run = runs["vanilla"]
    theta_norm = last(norms(run, "theta"))
    assert run["distance"] > 0.2  # started at 0.316
    assert theta_norm.min() > 0.1  # over the last 20 time units θ never comes near 0
    assert turns(last(np.asarray(run["trajectory"])[:, 2])) >= 2  # θ₁ still swings across 0


def test_vanilla_settles_on_a_rotation_when_theta_is_orthogonal_to_phi():
    # θ ⟂ φ, ‖θ‖ = ‖φ‖: σ(φ·θ) = ½ for ever and the field is θ̇ = φ/2, φ̇ = −θ/2.
    r = 0.17
    y0 = jnp.array([0.0, r, r, 0.0])
    traj = np.asarray(D.rk4_integrate(D.vector_field("vanilla"), y0, 0.1, 126, substeps=2))  # one period 4π
    phi, theta = D.split_state(traj)
    np.testing.assert_allclose(np.linalg.norm(theta, axis=-1), r, rtol=1e-5)
    np.testing.assert_allclose(np.sum(phi * theta, axis=-1), 0.0, atol=1e-6)


def test_wgan_hard_oscillates_with_conserved_critic_norm(runs):
    run = runs["wgan_hard"]
    phi_norm = norms(run, "phi")
    np.testing.assert_allclose(phi_norm, phi_norm[0], rtol=1e-5)  # φ̇ ⟂ φ
    assert run["distance"] > 0.2
    assert last(norms(run, "theta")).min() > 0.05
    assert turns(last(np.asarray(run["trajectory"])[:, 2])) >= 2


def test_wgan_gp1_ends_on_the_unit_circle(runs):
    run = runs["wgan_gp1"]
    traj = last(np.asarray(run["trajectory"]))
    phi, theta = D.split_state(traj)
    np.testing.assert_allclose(np.linalg.norm(theta, axis=-1), 1.0, atol=5e-3)
    np.testing.assert_allclose(np.linalg.norm(phi, axis=-1), 1.0, atol=5e-3)
    np.testing.assert_allclose(np.sum(phi * theta, axis=-1), 0.0, atol=1e-2)  # θ̇ = φ ⟂ θ on a circle
    angle = np.unwrap(np.arctan2(theta[:, 1], theta[:, 0]))
    assert abs(angle[-1] - angle[0]) > 2 * np.pi  # still going round: a limit cycle, not a point
    assert run["distance"] > 1.0


def test_zero_gp_converges(runs):
    run = runs["zero_gp"]
    assert run["distance"] < 1e-4  # the damped oscillator decays like e^{−λt}: 0.32·e^{−10} ≈ 1.5e-5
    assert run["ema_theta_norm"] < 1e-3  # the average converges too (more slowly in general)


@pytest.mark.parametrize("name", ["vanilla", "wgan_hard", "wgan_gp1"])
def test_ema_iterate_is_closer_than_the_oscillating_iterate(runs, name):
    run = runs[name]
    # The averaged θ sits near the orbit's centre; the raw θ is never that close late on.
    assert run["ema_theta_norm"] < 0.5 * last(norms(run, "theta")).min()


# --------------------------------------------------------------------------- #
# Bad inputs
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "call, arg",
    [
        (lambda: D.vector_field("gan_qp"), "name"),
        (lambda: D.simulate("gan"), "name"),
        (lambda: D.vector_field("vanilla", lam=1.0), "lam"),
        (lambda: D.simulate("zero_gp", lam=-1.0), "lam"),
        (lambda: D.simulate("vanilla", y0=(0.1, 0.2, 0.3)), "y0"),
        (lambda: D.simulate("vanilla", dt=0.0), "dt"),
        (lambda: D.simulate("vanilla", T=-1.0), "T"),
        (lambda: D.simulate("vanilla", T=1.05, dt=0.1), "T"),
        (lambda: D.simulate("vanilla", ema_decay=1.0), "ema_decay"),
        (lambda: D.simulate("vanilla", substeps=0), "substeps"),
        (lambda: D.rk4_integrate(lambda y: y, jnp.zeros(4), -0.1, 10), "dt"),
        (lambda: D.rk4_integrate(lambda y: y, jnp.zeros(4), 0.1, 0), "num_steps"),
        (lambda: D.rk4_integrate(lambda y: y, jnp.zeros((2, 4)), 0.1, 10), "y0"),
        (lambda: D.ema_trajectory(jnp.zeros((5, 3)), 0.9), "traj"),
        (lambda: D.ema_trajectory(jnp.zeros((5, 4)), 1.5), "decay"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(call, arg):
    with pytest.raises(ValueError, match=rf"`{arg}`.* must .*; got "):
        call()


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="wgan_gp1"):
        D.simulate("wgan_gp")
