"""Latent-space MCMC and the entropy term of the energy view of GANs (posts 6316, 6331,
"能量视角下的GAN模型"; Kumar et al. 2019, "Maximum Entropy Generators for Energy-Based Models").

The discriminator is an energy ``U(x)``; the generator ``G`` is trained to minimise
``KL(q_G ‖ e^{−U}/Z) = E_z U(G(z)) − H(G(Z)) + const``. Two pieces live here:

* :func:`encoder_entropy_term`: the generator's entropy replaced by the InfoGAN lower bound of
  the mutual information ``I(X, Z)``, i.e. ``λ₂·E‖z − E(G(z))‖²`` with an encoder ``E``.
* Sampling after training, "a better truncation trick": run Langevin dynamics
  (:func:`langevin_sample`) or MALA (:func:`mala_sample`) in the latent space on the energy
  ``U(G(z))`` (:func:`latent_energy`), then decode with ``G``.

Energies are batched: ``energy_fn(z [B, Z]) -> [B]``, one energy per chain, and chains never
interact, so ``∇_z Σ_b U(z_b)`` is every chain's own gradient at once. Keys are typed
(``jax.random.key``).
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp

from kernels.checks import argument_error as _error

# --------------------------------------------------------------------------- #
# Argument checks
# --------------------------------------------------------------------------- #


def _check_latents(fn, z, name="z0"):
    z = jnp.asarray(z)
    if z.ndim != 2:
        raise _error(fn, name, "latents of shape [B, Z] (rank 2)", f"shape {tuple(z.shape)}")
    if not jnp.issubdtype(z.dtype, jnp.floating):
        raise _error(fn, name, "floating point", f"dtype {z.dtype}")
    return z


def _check_key(fn, key):
    if not (hasattr(key, "dtype") and jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ()):
        got = f"dtype {getattr(key, 'dtype', type(key).__name__)}, shape {tuple(getattr(key, 'shape', ()))}"
        raise _error(fn, "key", "a single typed key from jax.random.key", got)


def _check_energy(fn, energy_fn, z):
    """The energy must map ``[B, Z]`` to ``[B]``; checked by tracing once, no compute."""
    if not callable(energy_fn):
        raise _error(fn, "energy_fn", "a callable z [B, Z] -> [B]", type(energy_fn).__name__)
    out = jax.eval_shape(energy_fn, jax.ShapeDtypeStruct(z.shape, z.dtype))
    if getattr(out, "shape", None) != z.shape[:1]:
        raise _error(fn, "energy_fn", f"a callable returning one energy per chain, shape ({z.shape[0]},)", f"shape {getattr(out, 'shape', out)}")


def _check_sampler(fn, energy_fn, key, z0, step_size, num_steps):
    z0 = _check_latents(fn, z0)
    _check_key(fn, key)
    _check_energy(fn, energy_fn, z0)
    if not (isinstance(step_size, (int, float)) and math.isfinite(step_size) and step_size > 0):
        raise _error(fn, "step_size", "a finite number > 0", repr(step_size))
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise _error(fn, "num_steps", "an integer >= 1", repr(num_steps))
    return z0


# --------------------------------------------------------------------------- #
# Samplers
# --------------------------------------------------------------------------- #


def _energy_and_grad(energy_fn):
    """``z [B, Z] -> (U [B], ∇U [B, Z])``: the gradient of the sum is each chain's gradient."""
    total = jax.value_and_grad(lambda z: (jnp.sum(u := energy_fn(z)), u), has_aux=True)

    def value_and_grad(z):
        (_, u), grad = total(z)
        return u, grad

    return value_and_grad


def langevin_sample(energy_fn, key, z0, *, step_size, num_steps):
    """Unadjusted Langevin dynamics, ``z ← z − (ε/2)∇U(z) + √ε·ξ``, ``ξ ~ N(0, I)``.

    No accept/reject, so the chain targets ``e^{−U}`` only as ``ε → 0``: on
    ``U = ½z²/σ²`` its stationary variance is ``ε/(1 − (1 − ε/(2σ²))²)``, not ``σ²``.

    Args:
      energy_fn: ``z [B, Z] -> U [B]``.
      key: typed key.
      z0: ``[B, Z]`` starting points, one chain per row.
      step_size: ``ε > 0``.
      num_steps: number of updates (int >= 1).
    Returns:
      ``z [B, Z]`` after ``num_steps`` updates.
    """
    z0 = _check_sampler("langevin_sample", energy_fn, key, z0, step_size, num_steps)
    return _langevin_chain(energy_fn, key, z0, step_size, num_steps=num_steps)


# One compiled program per (energy_fn, num_steps): the scan plus the key splitting around it.
@partial(jax.jit, static_argnums=0, static_argnames="num_steps")
def _langevin_chain(energy_fn, key, z0, step_size, *, num_steps):
    grad_u = jax.grad(lambda z: jnp.sum(energy_fn(z)))
    noise_scale = jnp.sqrt(step_size)

    def step(z, k):
        xi = jax.random.normal(k, z.shape, z.dtype)
        return z - 0.5 * step_size * grad_u(z) + noise_scale * xi, None

    z, _ = jax.lax.scan(step, z0, jax.random.split(key, num_steps))
    return z


def _log_proposal(z_to, z_from, grad_from, step_size):
    """``log q(z_to | z_from)`` up to a constant, ``q = N(z_from − (ε/2)∇U(z_from), ε I)``; ``[B]``."""
    mean = z_from - 0.5 * step_size * grad_from
    return -jnp.sum((z_to - mean) ** 2, axis=-1) / (2.0 * step_size)


def _log_acceptance(u, grad, u_prop, grad_prop, z, z_prop, step_size):
    # log α = [−U(z') + log q(z | z')] − [−U(z) + log q(z' | z)]; the Gaussian constants cancel.
    return (-u_prop + _log_proposal(z, z_prop, grad_prop, step_size)) - (-u + _log_proposal(z_prop, z, grad, step_size))


def mala_log_acceptance(energy_fn, z, z_prop, *, step_size):
    """The Metropolis–Hastings log ratio of MALA for the move ``z → z_prop``.

    ``log α = U(z) − U(z') + log q(z | z') − log q(z' | z)`` with the standard proposal
    ``q(z' | z) = N(z − (ε/2)∇U(z), ε I)``; the move is accepted with probability
    ``min(1, e^{log α})``.

    Args:
      energy_fn: ``z [B, Z] -> U [B]``.
      z, z_prop: ``[B, Z]`` current and proposed states.
      step_size: ``ε > 0``.
    Returns:
      ``[B]`` log ratios (not clipped at 0).
    """
    fn = "mala_log_acceptance"
    z = _check_latents(fn, z, "z")
    z_prop = _check_latents(fn, z_prop, "z_prop")
    if z_prop.shape != z.shape:
        raise _error(fn, "z_prop", f"shape {tuple(z.shape)} (that of z)", f"shape {tuple(z_prop.shape)}")
    _check_energy(fn, energy_fn, z)
    if not (isinstance(step_size, (int, float)) and math.isfinite(step_size) and step_size > 0):
        raise _error(fn, "step_size", "a finite number > 0", repr(step_size))
    return _log_acceptance_of(energy_fn, z, z_prop, step_size)


def mala_sample(energy_fn, key, z0, *, step_size, num_steps):
    """Metropolis-adjusted Langevin: the Langevin move as a proposal, then accept/reject.

    Proposal ``z' = z − (ε/2)∇U(z) + √ε·ξ``, accepted per chain when
    ``log u < log α`` (``u ~ U(0, 1)``, :func:`mala_log_acceptance`), so ``e^{−U}`` is exactly
    invariant for any ``ε``. These are the standard formulas: post 6331 writes the proposal
    density as ``exp(−‖z′ − z + ε∇U‖²/(2ε))``, whose drift ``ε∇U`` does not match the ``ε/2``
    drift of its own Langevin step; using it would break detailed balance.

    Args:
      energy_fn: ``z [B, Z] -> U [B]``.
      key: typed key.
      z0: ``[B, Z]`` starting points, one chain per row.
      step_size: ``ε > 0``.
      num_steps: number of proposals per chain (int >= 1).
    Returns:
      ``(z [B, Z], acceptance_rate [])``: the final states and the fraction of accepted
      proposals over all chains and steps.
    """
    z0 = _check_sampler("mala_sample", energy_fn, key, z0, step_size, num_steps)
    return _mala_chain(energy_fn, key, z0, step_size, num_steps=num_steps)


@partial(jax.jit, static_argnums=0, static_argnames="num_steps")
def _mala_chain(energy_fn, key, z0, step_size, *, num_steps):
    vg = _energy_and_grad(energy_fn)
    noise_scale = jnp.sqrt(step_size)

    def step(carry, k):
        z, u, grad = carry  # carry U and ∇U of the current state: one gradient per step
        k_noise, k_accept = jax.random.split(k)
        z_prop = z - 0.5 * step_size * grad + noise_scale * jax.random.normal(k_noise, z.shape, z.dtype)
        u_prop, grad_prop = vg(z_prop)
        log_alpha = _log_acceptance(u, grad, u_prop, grad_prop, z, z_prop, step_size)
        accept = jnp.log(jax.random.uniform(k_accept, u.shape, u.dtype)) < log_alpha
        keep = accept[:, None]
        new = (jnp.where(keep, z_prop, z), jnp.where(accept, u_prop, u), jnp.where(keep, grad_prop, grad))
        return new, jnp.mean(accept.astype(z.dtype))

    (z, _, _), rates = jax.lax.scan(step, (z0, *vg(z0)), jax.random.split(key, num_steps))
    return z, jnp.mean(rates)


@partial(jax.jit, static_argnums=0)
def _log_acceptance_of(energy_fn, z, z_prop, step_size):
    vg = _energy_and_grad(energy_fn)
    return _log_acceptance(*vg(z), *vg(z_prop), z, z_prop, step_size)


# --------------------------------------------------------------------------- #
# Energy in latent space and the entropy surrogate
# --------------------------------------------------------------------------- #


def latent_energy(g_fn, u_fn):
    """``z ↦ U(G(z))``, the latent energy the samplers run on.

    This is a heuristic (as post 6331 says): the density of ``x = G(z)`` pulled back to ``z``
    would also carry ``log|det ∂G/∂z|`` (or its non-square analogue), which is ignored here.

    Args:
      g_fn: generator, ``z [B, Z] -> x [B, ...]``.
      u_fn: energy, ``x [B, ...] -> [B]``.
    Returns:
      ``energy_fn(z [B, Z]) -> [B]``.
    """
    for name, f in (("g_fn", g_fn), ("u_fn", u_fn)):
        if not callable(f):
            raise _error("latent_energy", name, "a callable", type(f).__name__)

    def energy_fn(z):
        return u_fn(g_fn(z))

    return energy_fn


def encoder_entropy_term(z, z_rec):
    """``E_z ‖z − E(G(z))‖²``: the λ₂ term that stands in for the generator's entropy.

    Post 6331 replaces ``−H(G(Z))`` by ``−I(X, Z)`` (equal up to a constant for a
    deterministic ``G``) and bounds the mutual information from below InfoGAN-style with an
    encoder ``E`` and a Gaussian ``q(z|x)``; maximising the bound is minimising this
    reconstruction error, which G and E both do (weight ``λ₂``).

    Args:
      z: ``[B, Z]`` latents fed to the generator.
      z_rec: ``[B, Z]``, ``E(G(z))``.
    Returns:
      scalar: squared error summed over the latent dimensions, averaged over the batch.
    """
    fn = "encoder_entropy_term"
    z = _check_latents(fn, z, "z")
    z_rec = _check_latents(fn, z_rec, "z_rec")
    if z_rec.shape != z.shape:
        raise _error(fn, "z_rec", f"shape {tuple(z.shape)} (that of z)", f"shape {tuple(z_rec.shape)}")
    return jnp.mean(jnp.sum((z - z_rec) ** 2, axis=-1))
