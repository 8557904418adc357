"""GAN training as an ODE on the 2-D Dirac GAN (post 6583, "GAN的第三个阶段"; Mescheder et
al. 2018, "Which training methods for GANs do actually converge?").

The real data is the single point ``0 ∈ R²``, the generator is a single point ``θ ∈ R²`` (its
only sample) and the discriminator is linear, ``D(x) = φ·x`` with ``φ ∈ R²``. Simultaneous
gradient ascent for D and descent for G, with an infinitesimal learning rate, is the ODE

    dφ/dt = +∇_φ  V_D(φ, θ)      (D ascends its objective)
    dθ/dt = −∇_θ  L_G(φ, θ)      (G descends its loss)

and the unique Nash equilibrium is ``θ* = 0, φ* = 0`` (for ``wgan_hard``, whose critic is
undefined at ``φ = 0`` and keeps ``‖φ‖`` fixed, only ``θ* = 0`` is reachable in principle).

**State vector.** ``y = (φ₁, φ₂, θ₁, θ₂)``, the author's order in ``bojone/gan``
``gan_numeric.py``, so his initial point ``(0.1, 0.2, 0.2, 0.1)`` means ``φ₀ = (0.1, 0.2)``,
``θ₀ = (0.2, 0.1)``. Use :func:`split_state` rather than indexing by hand.

**Dynamics** (:data:`DYNAMICS`). Each vector field is ``jax.grad`` of the two objectives
written in :func:`objectives`, so that code is the definition; the closed forms are derived
by hand only in the tests, as the oracle.

* ``"vanilla"``: non-saturating GAN, ``V_D = log σ(D(0)) + log(1 − σ(D(θ)))``,
  ``L_G = −log σ(D(θ))``. Near the equilibrium ``θ̈ ≈ −θ/4``: it oscillates. From the
  author's start it spirals onto a *periodic orbit*, not the equilibrium: once ``θ ⟂ φ``,
  ``σ(φ·θ) = ½`` and the field is a pure rotation (``θ̇ = φ/2, φ̇ = −θ/2``), so any
  circle ``‖θ‖ = ‖φ‖`` with ``θ ⟂ φ`` is an orbit; ``‖(φ, θ)‖`` goes 0.316 → 0.259 at
  ``T = 100`` → 0.245 (``T ≳ 1000``).
* ``"wgan_hard"``: WGAN with a hard Lipschitz constraint, ``D(x) = (φ/‖φ‖)·x`` (what spectral
  normalisation does to a linear critic), ``V_D = D(0) − D(θ)``, ``L_G = −D(θ)``. Here
  ``θ̇ = φ/‖φ‖`` has unit speed for ever and ``φ̇ ⟂ φ`` keeps ``‖φ‖`` fixed: it cannot settle;
  from the author's start θ draws a rosette in the annulus ``0.09 ≤ ‖θ‖ ≤ 0.40``.
* ``"wgan_gp1"``: WGAN with the 1-centred gradient penalty of WGAN-GP,
  ``V_D = D(0) − D(θ) − λ(‖∇ₓD(x̂)‖ − 1)²`` (``∇ₓD = φ`` at every ``x̂``, so where the
  interpolate ``x̂`` sits does not matter here; the code uses the midpoint). The penalty
  drives ``‖φ‖ → 1`` and then ``θ̈ = −θ`` with ``‖θ̇‖ = 1``: the iterate converges to the
  *unit circle* ``‖θ‖ = ‖φ‖ = 1``, θ ⟂ φ, and goes round it for ever (the post's "converges to
  a circle"; Mescheder's "does not converge to the equilibrium").
* ``"zero_gp"``: WGAN loss with the 0-centred penalty on real samples (WGAN-div, R1 style),
  ``V_D = D(0) − D(θ) − λ‖∇ₓD(0)‖²``; the ODE is the damped oscillator ``θ̈ = −θ − 2λθ̇``:
  it converges to ``(0, 0)`` at the rate ``e^{−λt}``.

**λ.** Both penalties default to ``λ = 0.1`` (:data:`DEFAULT_LAM`), the author's ``lamb`` in
``gan_numeric.py``: weak enough that the oscillation stays visible in the plots, and for
``zero_gp`` still ``e^{−0.1·100} ≈ 5e-5`` by ``T = 100``. (λ = 1 damps ``zero_gp`` critically.)

**Integrator.** :func:`rk4_integrate` is the classic fixed-step RK4 under ``lax.scan`` (the
author used scipy's adaptive RK45; the output grid ``h = 0.1`` and ``T = 100`` are his).
``substeps`` takes several RK4 steps per recorded sample. :data:`DEFAULT_SUBSTEPS` keeps
the whole float32 trajectory within ~1e-6 of scipy's DOP853 at ``rtol = 1e-12`` for the
smooth fields (2 steps of 0.05) and within ~5e-4 for ``wgan_hard`` (10 steps): its critic
direction turns at up to ``‖θ‖/‖φ‖² ≈ 8`` rad per unit time (one step of 0.1 is off by 0.8
at ``T = 100``), and the flow magnifies perturbations ~100× over ``T = 100``, so beyond ~10
substeps float32 rounding, not truncation, sets the error (it varies with XLA's
optimisation level: 4e-5 to 5e-4).

**EMA** (post 6583's "most powerful trick"): :func:`ema_trajectory` averages the generator
``θ`` over the trajectory *sampled every dt*, ``m_k = β m_{k−1} + (1 − β) θ_k``, bias-corrected
like ``optax.ema(debias=True)``. The averaging window is ``τ = dt/(1 − β)`` time units; the
default ``β = 0.99`` gives ``τ = 10`` at ``dt = 0.1``, about one oscillation period (4π for
vanilla, 2π for the unit circle), so it averages the orbit towards its centre, which is the
equilibrium. (The post's 0.999 is per SGD step at a small learning rate, not per ``dt = 0.1``.)
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from kernels.checks import argument_error as _error

DYNAMICS = ("vanilla", "wgan_hard", "wgan_gp1", "zero_gp")
DEFAULT_LAM = {"wgan_gp1": 0.1, "zero_gp": 0.1}
DEFAULT_SUBSTEPS = {"vanilla": 2, "wgan_hard": 10, "wgan_gp1": 2, "zero_gp": 2}  # RK4 steps per dt
AUTHOR_Y0 = (0.1, 0.2, 0.2, 0.1)  # (φ₁, φ₂, θ₁, θ₂), bojone/gan gan_numeric.py
REAL = np.zeros(2, np.float32)  # the real data point (numpy: importing starts no JAX backend)

# --------------------------------------------------------------------------- #
# Argument checks
# --------------------------------------------------------------------------- #


def _check_name(fn, name):
    if name not in DYNAMICS:
        raise _error(fn, "name", f"one of {DYNAMICS}", repr(name))


def _check_positive(fn, name, value):
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise _error(fn, name, "a finite number > 0", repr(value))


def _check_count(fn, name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _error(fn, name, "an integer >= 1", repr(value))


def _resolve_lam(fn, name, lam):
    """The penalty weight for ``name``: the default when ``lam`` is None, else a checked float."""
    if name not in DEFAULT_LAM:
        if lam is not None:
            raise _error(fn, "lam", f"None for {name!r} (it has no penalty)", repr(lam))
        return 0.0
    if lam is None:
        return DEFAULT_LAM[name]
    if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam >= 0):
        raise _error(fn, "lam", "a finite number >= 0", repr(lam))
    return float(lam)


def _check_state(fn, y, name="y0"):
    y = jnp.asarray(y)
    if y.shape != (4,):
        raise _error(fn, name, "a state (φ₁, φ₂, θ₁, θ₂) of shape (4,)", f"shape {tuple(y.shape)}")
    if not jnp.issubdtype(y.dtype, jnp.floating):
        y = y.astype(jnp.float32)
    return y


# --------------------------------------------------------------------------- #
# The two players
# --------------------------------------------------------------------------- #


def split_state(y):
    """``y [..., 4] -> (φ [..., 2], θ [..., 2])`` for the order ``(φ₁, φ₂, θ₁, θ₂)``."""
    return y[..., :2], y[..., 2:]


def linear_critic(phi, x):
    """``D(x) = φ·x``; ``phi, x [2] -> []``."""
    return jnp.dot(phi, x)


def normalized_critic(phi, x):
    """``D(x) = (φ/‖φ‖)·x``, the 1-Lipschitz (spectrally normalised) linear critic."""
    return jnp.dot(phi, x) / jnp.linalg.norm(phi)


def _input_grad(critic, phi, x):
    """``∇ₓD(x) [2]``, by autodiff as a penalty on a real network would do it."""
    return jax.grad(critic, argnums=1)(phi, x)


def objectives(name, lam):
    """The two players' objectives of dynamics ``name``.

    Returns:
      ``(v_d, l_g)``, each ``(phi [2], theta [2]) -> []``: the discriminator *maximises*
      ``v_d`` over ``phi``, the generator *minimises* ``l_g`` over ``theta``. ``lam`` is the
      penalty weight (ignored by ``vanilla`` and ``wgan_hard``); it may be traced.
    """
    _check_name("objectives", name)
    if name == "vanilla":
        # log(1 − σ(t)) = log σ(−t): the stable form of the fake-sample term.
        def v_d(phi, theta):
            return jax.nn.log_sigmoid(linear_critic(phi, REAL)) + jax.nn.log_sigmoid(-linear_critic(phi, theta))

        def l_g(phi, theta):
            return -jax.nn.log_sigmoid(linear_critic(phi, theta))  # non-saturating loss

        return v_d, l_g

    critic = normalized_critic if name == "wgan_hard" else linear_critic

    def wasserstein(phi, theta):
        return critic(phi, REAL) - critic(phi, theta)

    def l_g(phi, theta):
        return -critic(phi, theta)

    if name == "wgan_hard":
        return wasserstein, l_g
    if name == "wgan_gp1":

        def v_d(phi, theta):
            x_hat = 0.5 * (REAL + theta)  # WGAN-GP's interpolate; D is linear, any x̂ gives φ
            grad_norm = jnp.linalg.norm(_input_grad(critic, phi, x_hat))
            return wasserstein(phi, theta) - lam * (grad_norm - 1.0) ** 2

        return v_d, l_g

    def v_d(phi, theta):  # zero_gp: 0-centred penalty at the real sample (R1 / WGAN-div)
        return wasserstein(phi, theta) - lam * jnp.sum(_input_grad(critic, phi, REAL) ** 2)

    return v_d, l_g


def vector_field(name, lam=None):
    """The gradient-flow field of simultaneous ascent (D) / descent (G).

    Args:
      name: one of :data:`DYNAMICS`.
      lam: penalty weight for ``wgan_gp1`` / ``zero_gp`` (default :data:`DEFAULT_LAM`);
        must be None for the two dynamics without a penalty.
    Returns:
      ``f(y [4]) -> dy/dt [4]`` with ``y = (φ₁, φ₂, θ₁, θ₂)``.
    """
    fn = "vector_field"
    _check_name(fn, name)
    return _field(name, _resolve_lam(fn, name, lam))


def _field(name, lam):
    """:func:`vector_field` without the checks, so that ``lam`` may be a tracer."""
    v_d, l_g = objectives(name, lam)

    def f(y):
        phi, theta = split_state(y)
        dphi = jax.grad(v_d, argnums=0)(phi, theta)  # ascent
        dtheta = -jax.grad(l_g, argnums=1)(phi, theta)  # descent
        return jnp.concatenate([dphi, dtheta])

    return f


# --------------------------------------------------------------------------- #
# Integration and averaging
# --------------------------------------------------------------------------- #


def rk4_step(f, y, dt):
    """One classic fourth-order Runge–Kutta step of the autonomous ODE ``y' = f(y)``."""
    k1 = f(y)
    k2 = f(y + 0.5 * dt * k1)
    k3 = f(y + 0.5 * dt * k2)
    k4 = f(y + dt * k3)
    return y + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def rk4_integrate(f, y0, dt, num_steps, *, substeps=1):
    """Fixed-step RK4 of ``y' = f(y)`` from ``y0``, recorded every ``dt``.

    Args:
      f: ``y [D] -> y' [D]`` (autonomous).
      y0: ``[D]`` initial state.
      dt: recording interval (> 0); each interval takes ``substeps`` RK4 steps of
        ``dt/substeps``.
      num_steps: number of recorded intervals (a Python int >= 1).
    Returns:
      ``[num_steps + 1, D]``: ``y(0), y(dt), …, y(num_steps·dt)``.
    """
    fn = "rk4_integrate"
    _check_positive(fn, "dt", dt)
    _check_count(fn, "num_steps", num_steps)
    _check_count(fn, "substeps", substeps)
    y0 = jnp.asarray(y0)
    if y0.ndim != 1:
        raise _error(fn, "y0", "a state vector of shape [D] (rank 1)", f"shape {tuple(y0.shape)}")
    return _rk4_scan(f, y0, dt, num_steps, substeps)


@partial(jax.jit, static_argnums=(0, 3, 4))
def _rk4_scan(f, y0, dt, num_steps, substeps):
    """:func:`rk4_integrate` without the eager checks (``dt`` may be a tracer)."""
    h = dt / substeps

    def interval(y, _):
        y = jax.lax.fori_loop(0, substeps, lambda _, v: rk4_step(f, v, h), y)
        return y, y

    _, ys = jax.lax.scan(interval, y0, None, length=num_steps)
    return jnp.concatenate([y0[None], ys], axis=0)


def ema_trajectory(traj, decay, *, debias=True):
    """Exponential moving average of the generator ``θ`` along a trajectory.

    ``m_k = β m_{k−1} + (1 − β) θ_k`` over the samples ``θ_k = θ(k·dt)``. With ``debias``,
    ``m_{−1} = 0`` and the output is ``m_k/(1 − β^{k+1})`` (``optax.ema(debias=True)``), a
    weighted mean of the samples so far; otherwise ``m_0 = θ_0`` (a copy of the initial
    weights, as a Keras-style EMA does). Window: ``dt/(1 − β)`` time units.

    Args:
      traj: ``[N, 4]`` states ``(φ₁, φ₂, θ₁, θ₂)``.
      decay: ``β`` in ``[0, 1)``.
    Returns:
      ``[N, 2]``: the averaged ``θ`` after each sample.
    """
    fn = "ema_trajectory"
    traj = jnp.asarray(traj)
    if traj.ndim != 2 or traj.shape[-1] != 4 or traj.shape[0] < 1:
        raise _error(fn, "traj", "states of shape [N, 4]", f"shape {tuple(traj.shape)}")
    if not (isinstance(decay, (int, float)) and 0.0 <= decay < 1.0):
        raise _error(fn, "decay", "a number in [0, 1)", repr(decay))
    return _ema_scan(traj, decay, debias)


@partial(jax.jit, static_argnums=2)
def _ema_scan(traj, decay, debias):
    """:func:`ema_trajectory` without the eager checks (``decay`` may be a tracer)."""
    _, theta = split_state(traj)

    def update(m, th):
        m = decay * m + (1.0 - decay) * th
        return m, m

    if debias:
        _, ms = jax.lax.scan(update, jnp.zeros_like(theta[0]), theta)
        k = jnp.arange(1, theta.shape[0] + 1, dtype=theta.dtype)
        return ms / (1.0 - decay**k)[:, None]
    _, ms = jax.lax.scan(update, theta[0], theta[1:])
    return jnp.concatenate([theta[:1], ms], axis=0)


# --------------------------------------------------------------------------- #
# One experiment
# --------------------------------------------------------------------------- #


@partial(jax.jit, static_argnames=("name", "num_steps", "substeps", "debias"))
def _run(y0, dt, lam, ema_decay, *, name, num_steps, substeps, debias):
    # dt, lam, ema_decay are traced: rerunning with new values reuses the compiled scan.
    traj = _rk4_scan(_field(name, lam), y0, dt, num_steps, substeps)
    return traj, _ema_scan(traj, ema_decay, debias)


def simulate(name, *, y0=AUTHOR_Y0, T=100.0, dt=0.1, lam=None, ema_decay=0.99, substeps=None, debias=True):
    """Integrate one Dirac-GAN dynamics and summarise where it ends.

    Args:
      name: one of :data:`DYNAMICS`.
      y0: initial ``(φ₁, φ₂, θ₁, θ₂)``; the author's ``(0.1, 0.2, 0.2, 0.1)`` by default.
      T, dt: horizon and recording interval (the author's 100 and 0.1); ``round(T/dt)``
        intervals of ``substeps`` RK4 steps each (default :data:`DEFAULT_SUBSTEPS`).
      lam: penalty weight (see :func:`vector_field`).
      ema_decay, debias: see :func:`ema_trajectory`.
    Returns:
      dict with ``t [N+1]``, ``trajectory [N+1, 4]``, ``ema_theta [N+1, 2]`` (arrays) and
      floats: ``theta_norm`` ‖θ(T)‖, ``phi_norm`` ‖φ(T)‖, ``distance`` ‖(φ, θ)(T)‖ (distance to
      the equilibrium ``(0, 0)``), ``ema_theta_norm`` ‖θ̄(T)‖ (the EMA generator's distance to
      ``θ* = 0``; compare it with ``theta_norm``), and ``lam``.
    """
    fn = "simulate"
    _check_name(fn, name)
    lam = _resolve_lam(fn, name, lam)
    y0 = _check_state(fn, y0)
    _check_positive(fn, "T", T)
    _check_positive(fn, "dt", dt)
    substeps = DEFAULT_SUBSTEPS[name] if substeps is None else substeps
    _check_count(fn, "substeps", substeps)
    if not (isinstance(ema_decay, (int, float)) and 0.0 <= ema_decay < 1.0):
        raise _error(fn, "ema_decay", "a number in [0, 1)", repr(ema_decay))
    num_steps = round(T / dt)
    if num_steps < 1 or not math.isclose(num_steps * dt, T, rel_tol=1e-6):
        raise _error(fn, "T", f"a whole multiple of dt = {dt}", repr(T))
    traj, ema = _run(y0, dt, lam, ema_decay, name=name, num_steps=num_steps, substeps=substeps, debias=debias)
    phi, theta = split_state(traj[-1])
    return {
        "t": dt * jnp.arange(num_steps + 1),
        "trajectory": traj,
        "ema_theta": ema,
        "theta_norm": float(jnp.linalg.norm(theta)),
        "phi_norm": float(jnp.linalg.norm(phi)),
        "distance": float(jnp.linalg.norm(traj[-1])),
        "ema_theta_norm": float(jnp.linalg.norm(ema[-1])),
        "lam": lam,
    }
