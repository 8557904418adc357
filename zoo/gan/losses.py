"""Adversarial losses: one registry of ``(d_loss, g_loss)`` pairs (posts 20, 30, 31, 32, 33).

Every loss is a pair of pure functions of the discriminator's raw outputs
``d_real [B]`` and ``d_fake [B]`` (no activation applied; the loss applies its own):
``d_loss(d_real, d_fake)`` is minimised by D, ``g_loss(d_real, d_fake)`` by G, and both
return the scalar batch mean. ``g_loss`` takes ``d_real`` because the relativistic losses
need it; the others ignore it. Fetch a loss with :func:`get_loss` or from :data:`LOSSES`.

**Sign convention.** Larger raw output = "more real" (the papers' convention). The
author's posts 20, 32 and 33 use the opposite sign (his D is *small* on real samples, an
energy); to read his formulas here substitute ``D -> -D``.

==================  ====================================  ====================================
name                d_loss (minimised by D)               g_loss (minimised by G)
==================  ====================================  ====================================
gan_saturating      −log σ(r) − log(1 − σ(f))             log(1 − σ(f))
gan                 −log σ(r) − log(1 − σ(f))             −log σ(f)
hinge               relu(1 − r) + relu(1 + f)             −f
lsgan               ½(r − 1)² + ½f²                       ½(f − 1)²
wgan                f − r                                 −f
f_<div>             f*(act(f)) − act(r)                   −act(f)
f_<div>_saturating  f*(act(f)) − act(r)                   −f*(act(f))
rsgan               −log σ(r_i − f_i)                     −log σ(f_i − r_i)
rasgan              −log σ(r − f̄) − log(1 − σ(f − r̄))     −log σ(f − r̄) − log(1 − σ(r − f̄))
==================  ====================================  ====================================

(``r = d_real``, ``f = d_fake``, each term a batch mean; ``r̄``, ``f̄`` are batch means;
``log σ(x)`` is computed as ``log_sigmoid(x)`` and ``log(1 − σ(x))`` as
``log_sigmoid(−x)``, never as the log of a sigmoid.) ``wgan`` relies on a Lipschitz
constraint from elsewhere (:mod:`zoo.gan.penalties` or spectral normalisation).

**f-GAN** (post 30; Nowozin, Cseke & Tomioka 2016, "f-GAN", arXiv:1606.00709, Table 6).
D maximises the variational bound ``D_f(P‖Q) ≥ E_p[T] − E_q[f*(T)]`` with ``T = act(v)``,
``act`` mapping the raw output into the domain of the convex conjugate ``f*``; at the
optimum ``T = f'(p/q)`` the bound equals ``D_f = E_q f(p/q)``. G minimises, by default,
the *non-saturating* objective of the paper's §3.2, ``−E_q act(v)``; the ``_saturating``
names give the minimax objective (the G-dependent part of the bound, ``−E_q f*(act(v))``).
The conventions are Nowozin's Table 6 for every divergence:

=========== ================= ================= ===================== ==================
<div>       f(u)              act(v)            f*(t)                 f*(act(v)), stable
=========== ================= ================= ===================== ==================
kl          u log u           v                 exp(t − 1)            exp(v − 1)
reverse_kl  −log u            −exp(−v)          −1 − log(−t)          v − 1
pearson     (u − 1)²          v                 t²/4 + t              v²/4 + v
neyman      (1 − u)²/u        1 − exp(v)        2 − 2√(1 − t)         −2·expm1(v/2)
hellinger   (√u − 1)²         1 − exp(v)        t/(1 − t)             expm1(−v)
js          u log u −         log 2 − log(1 +   −log(2 − exp(t))      softplus(v) − log 2
            (u+1)log((u+1)/2) exp(−v))
tv          ½|u − 1|          ½ tanh(v)         t                     ½ tanh(v)
=========== ================= ================= ===================== ==================

Deviations from post 30's table, on purpose: Pearson uses Nowozin's linear activation
(the post's ``e^v − 2`` restricts T to ``f'((0, ∞)) = (−2, ∞)``; both give a valid bound,
tight at the same optimum), and JS is Nowozin's ``f`` without the ½, so ``f_js`` bounds
``2·JSD`` and its D loss is exactly ``gan``'s minus ``2 log 2`` (the post's ½ version
bounds ``JSD`` itself). Jeffreys (conjugate via Lambert W) is left out. The stable column
is what the losses compute: no log of a quantity that can reach 0, and no exp that
overflows unless the true value does. (In float32, ``act`` of hellinger and js rounds onto
the domain boundary for |v| ≳ 17, where the naive composition divides by 0 or takes log 0.)

Shapes are checked statically (so the checks also fire under ``jit``): ``d_real`` and
``d_fake`` must be rank 1 and non-empty, and of one length for ``rsgan`` (pairs by index).
Losses are computed in at least float32 (bf16 outputs in, float32 loss out).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from kernels.checks import argument_error as _error

Array = jax.Array
LOG2 = math.log(2.0)

# --------------------------------------------------------------------------- #
# Types and argument checks
# --------------------------------------------------------------------------- #


class GanLoss(NamedTuple):
    """A discriminator loss and a generator loss on raw outputs ``d_real [B]``, ``d_fake [B]``."""

    name: str
    d_loss: Callable[[Array, Array], Array]  # (d_real, d_fake) -> scalar, minimised by D
    g_loss: Callable[[Array, Array], Array]  # (d_real, d_fake) -> scalar, minimised by G


class FDivergence(NamedTuple):
    """One row of Nowozin et al.'s Table 6 (elementwise functions).

    Attributes:
      activation: raw output ``v`` -> ``T = act(v)`` in the domain of ``f*``.
      conjugate: ``t`` -> ``f*(t)``, the textbook form (for tests and inspection; it may
        lose precision or overflow near the domain boundary).
      conjugate_of_activation: ``v`` -> ``f*(act(v))`` in a stable closed form; the
        losses use this one.
    """

    name: str
    activation: Callable[[Array], Array]
    conjugate: Callable[[Array], Array]
    conjugate_of_activation: Callable[[Array], Array]


def _as_scores(fn, name, x):
    """``x`` as a float (≥ 32-bit) ``[B]`` array, or a ValueError naming ``name``."""
    shape = tuple(jnp.shape(x))
    if len(shape) != 1 or shape[0] == 0:
        raise _error(fn, name, "raw discriminator outputs of shape [B] (rank 1, B ≥ 1)", f"shape {shape}")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise _error(fn, name, "floating point", f"dtype {x.dtype}")
    # bf16 logits in, float32 loss out: the means and logs are not done in 8 mantissa bits.
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _checked(fn, d_real, d_fake, same_length):
    d_real, d_fake = _as_scores(fn, "d_real", d_real), _as_scores(fn, "d_fake", d_fake)
    if same_length and d_fake.shape != d_real.shape:
        expected = f"of the shape of `d_real`, {d_real.shape} (pairs are formed by index)"
        raise _error(fn, "d_fake", expected, f"shape {d_fake.shape}")
    return d_real, d_fake


def _make(name, d_term, g_term, same_length=False) -> GanLoss:
    """Wraps two unchecked ``(r, f) -> scalar`` functions with the shape and dtype checks."""

    def d_loss(d_real, d_fake):
        return d_term(*_checked(f"{name}.d_loss", d_real, d_fake, same_length))

    def g_loss(d_real, d_fake):
        return g_term(*_checked(f"{name}.g_loss", d_real, d_fake, same_length))

    d_loss.__name__, g_loss.__name__ = f"{name}_d_loss", f"{name}_g_loss"
    d_loss.__qualname__, g_loss.__qualname__ = d_loss.__name__, g_loss.__name__
    d_loss.__doc__ = f"``{name}`` discriminator loss: ``d_real [B], d_fake [B] -> scalar`` (minimised by D)."
    g_loss.__doc__ = f"``{name}`` generator loss: ``d_real [B], d_fake [B] -> scalar`` (minimised by G)."
    return GanLoss(name, d_loss, g_loss)


_mean = jnp.mean
_softplus = jax.nn.softplus  # softplus(x) = −log σ(−x) = −log(1 − σ(x)), stable for all x


# --------------------------------------------------------------------------- #
# Classic losses
# --------------------------------------------------------------------------- #


def _gan_d(r, f):
    return _mean(_softplus(-r)) + _mean(_softplus(f))  # −log σ(r) − log(1 − σ(f))


def _gan_g_saturating(r, f):
    return _mean(jax.nn.log_sigmoid(-f))  # log(1 − σ(f)); its gradient vanishes as σ(f) -> 0


def _gan_g(r, f):
    return _mean(_softplus(-f))  # −log σ(f)


def _hinge_d(r, f):
    return _mean(jax.nn.relu(1.0 - r)) + _mean(jax.nn.relu(1.0 + f))


def _lsgan_d(r, f):
    return 0.5 * _mean(jnp.square(r - 1.0)) + 0.5 * _mean(jnp.square(f))


def _lsgan_g(r, f):
    return 0.5 * _mean(jnp.square(f - 1.0))


def _wgan_d(r, f):
    return _mean(f) - _mean(r)


def _minus_mean_fake(r, f):
    return -_mean(f)


# --------------------------------------------------------------------------- #
# f-GAN (Nowozin et al. 2016, Table 6)
# --------------------------------------------------------------------------- #

F_DIVERGENCES: dict[str, FDivergence] = {
    d.name: d
    for d in [
        FDivergence("kl", lambda v: v, lambda t: jnp.exp(t - 1.0), lambda v: jnp.exp(v - 1.0)),
        FDivergence("reverse_kl", lambda v: -jnp.exp(-v), lambda t: -1.0 - jnp.log(-t), lambda v: v - 1.0),
        FDivergence("pearson", lambda v: v, lambda t: 0.25 * t * t + t, lambda v: 0.25 * v * v + v),
        # 1 − exp(v) as −expm1(v): exact near v = 0, where T ≈ 0 would otherwise lose bits.
        FDivergence(
            "neyman",
            lambda v: -jnp.expm1(v),
            lambda t: 2.0 - 2.0 * jnp.sqrt(1.0 - t),
            lambda v: -2.0 * jnp.expm1(0.5 * v),  # √(1 − t) = exp(v/2)
        ),
        FDivergence(
            "hellinger",
            lambda v: -jnp.expm1(v),
            lambda t: t / (1.0 - t),
            lambda v: jnp.expm1(-v),  # (1 − e^v)/e^v, without dividing by a rounded 1 − t
        ),
        FDivergence(
            "js",
            lambda v: LOG2 + jax.nn.log_sigmoid(v),  # log 2 − log(1 + e^{−v}) = log 2 + log σ(v)
            lambda t: -jnp.log(2.0 - jnp.exp(t)),
            lambda v: _softplus(v) - LOG2,  # −log(2 − 2σ(v)) = −log 2 − log σ(−v)
        ),
        FDivergence("tv", lambda v: 0.5 * jnp.tanh(v), lambda t: t, lambda v: 0.5 * jnp.tanh(v)),
    ]
}


def _f_gan(div: FDivergence, *, saturating: bool) -> GanLoss:
    def d_term(r, f):
        # −(E_p[T] − E_q[f*(T)]): D maximises the variational lower bound on D_f(P‖Q).
        return _mean(div.conjugate_of_activation(f)) - _mean(div.activation(r))

    def g_term(r, f):
        if saturating:
            return -_mean(div.conjugate_of_activation(f))  # the bound's G-dependent part
        return -_mean(div.activation(f))  # Nowozin §3.2: G maximises E_q[T]

    suffix = "_saturating" if saturating else ""
    return _make(f"f_{div.name}{suffix}", d_term, g_term)


# --------------------------------------------------------------------------- #
# Relativistic (Jolicoeur-Martineau 2018, post 31)
# --------------------------------------------------------------------------- #


def _rsgan_d(r, f):
    return _mean(_softplus(f - r))  # −log σ(r_i − f_i): the paper's pairwise minibatch estimator


def _rsgan_g(r, f):
    return _mean(_softplus(r - f))  # −log σ(f_i − r_i)


def _rasgan_d(r, f):
    # −log σ(r − mean f) − log(1 − σ(f − mean r))
    return _mean(_softplus(_mean(f) - r)) + _mean(_softplus(f - _mean(r)))


def _rasgan_g(r, f):
    # real and fake swap roles: −log σ(f − mean r) − log(1 − σ(r − mean f))
    return _mean(_softplus(_mean(r) - f)) + _mean(_softplus(r - _mean(f)))


# --------------------------------------------------------------------------- #
# Registry
# --------------------------------------------------------------------------- #


def _build_registry() -> dict[str, GanLoss]:
    losses = [
        _make("gan_saturating", _gan_d, _gan_g_saturating),
        _make("gan", _gan_d, _gan_g),
        _make("hinge", _hinge_d, _minus_mean_fake),
        _make("lsgan", _lsgan_d, _lsgan_g),
        _make("wgan", _wgan_d, _minus_mean_fake),
    ]
    losses += [_f_gan(div, saturating=False) for div in F_DIVERGENCES.values()]
    losses += [_f_gan(div, saturating=True) for div in F_DIVERGENCES.values()]
    losses += [_make("rsgan", _rsgan_d, _rsgan_g, same_length=True), _make("rasgan", _rasgan_d, _rasgan_g)]
    return {loss.name: loss for loss in losses}


LOSSES: dict[str, GanLoss] = _build_registry()


def get_loss(name: str) -> GanLoss:
    """The :class:`GanLoss` registered under ``name`` (see the module docstring's table).

    Raises:
      ValueError: for an unknown name; the message lists every known name.
    """
    try:
        return LOSSES[name]
    except (KeyError, TypeError):
        raise _error("get_loss", "name", f"one of {', '.join(LOSSES)}", repr(name)) from None
