"""Gradient penalties on a discriminator ``d_fn(x [B, ...]) -> [B]`` (posts 20 and 32).

Every penalty takes the discriminator as a closure, so a caller passes
``lambda x: D.apply(params, x)`` and differentiates the penalty with respect to
``params`` as usual (the penalty is a function of the input gradient, so that is a
second-order derivative; ``jax.grad`` handles it).

* :func:`wgan_gp`: ``weight·E (‖∇D(x̂)‖ − 1)²`` at random interpolates ``x̂`` (Gulrajani
  et al. 2017, "Improved Training of Wasserstein GANs", arXiv:1704.00028; two-sided,
  squared, ``weight = 10``).
* :func:`wgan_gp_one_sided`: ``weight·E relu(‖∇D(x̂)‖ − 1)``, one-sided and *not* squared:
  what the author's ``mnist_gangp.py`` (post 20) computes.
* :func:`wgan_div`: ``k·E ‖∇D‖^p`` (Wu et al. 2018, "Wasserstein Divergence for GANs",
  arXiv:1712.01026; ``k = 2, p = 6``), at interpolates by default, or at the real and the
  fake samples, ``k·E ½(‖∇D(real)‖^p + ‖∇D(fake)‖^p)``, as the author's
  ``wgan_div_celeba.py`` does (``at="real_and_fake"``).
* :func:`zero_centred_gp`: ``weight·E ‖∇D(x)‖²`` on given samples: R1 (Mescheder et al.
  2018) when ``x`` is the real batch, and post 32's energy penalty ``λ·E_p ‖∇ₓU‖²``.

Norms depend only on ``|∇D|``, so the penalties are the same under the author's sign
convention (``D -> −D``). In joint (single-loss) training pass ``stop_gradient(fake)``, as
for the D loss: the penalty is D's term, and nothing here stops gradients into ``fake``.
"""

from __future__ import annotations

import numbers
from typing import Callable

import jax
import jax.numpy as jnp

from kernels.checks import argument_error as _error

Array = jax.Array
DiscriminatorFn = Callable[[Array], Array]  # x [B, ...] -> raw outputs [B]

# Inside the sqrt: ‖g‖ = sqrt(Σ g² + eps) has the finite derivative g/‖g‖ = 0 at g = 0,
# where the plain sqrt has 0/0 = NaN (post 20's trap). It biases a norm by at most
# sqrt(eps) = 1e-6, far below float32 resolution of a norm near 1.
NORM_EPS = 1e-12

# --------------------------------------------------------------------------- #
# Argument checks
# --------------------------------------------------------------------------- #


def _check_batch(fn, x, name="x"):
    shape = tuple(jnp.shape(x))
    if len(shape) < 1 or shape[0] == 0:
        raise _error(fn, name, "a batch of shape [B, ...] (rank ≥ 1, B ≥ 1)", f"shape {shape}")
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise _error(fn, name, "floating point (it is differentiated)", f"dtype {jnp.result_type(x)}")
    return shape


def _check_real_fake(fn, real, fake):
    shape = _check_batch(fn, real, "real")
    _check_batch(fn, fake, "fake")
    if tuple(jnp.shape(fake)) != shape:
        raise _error(fn, "fake", f"of the shape of `real`, {shape}", f"shape {tuple(jnp.shape(fake))}")
    return shape


# --------------------------------------------------------------------------- #
# Input gradients and their norms
# --------------------------------------------------------------------------- #


def input_gradients(d_fn: DiscriminatorFn, x: Array) -> Array:
    """Per-example input gradients ``∂D(x_b)/∂x_b``.

    One ``jax.grad`` of ``Σ_b D(x_b)`` gives all of them at once: example ``b``'s output
    depends on ``x_b`` only, so the other terms of the sum contribute nothing. A
    discriminator with BatchNorm in training mode breaks that independence (each output
    depends on the whole batch through the batch statistics), and the result is then the
    gradient of the sum, not the per-example gradients; use a per-example normalisation
    (layer/instance norm) or no normalisation in a gradient-penalised D.

    Args:
      d_fn: ``x [B, ...] -> [B]`` raw discriminator outputs.
      x: ``[B, ...]`` floating inputs.
    Returns:
      ``[B, ...]``, shaped like ``x``.
    """
    fn = "input_gradients"
    shape = _check_batch(fn, x)

    def total(x):
        out = d_fn(x)
        if tuple(jnp.shape(out)) != shape[:1]:
            raise _error(fn, "d_fn(x)", f"of shape [B] = {shape[:1]}", f"shape {tuple(jnp.shape(out))}")
        return jnp.sum(out)

    return jax.grad(total)(x)


def _squared_norms(g):
    return jnp.sum(jnp.square(g.reshape(g.shape[0], -1)), axis=1)


def gradient_norms(d_fn: DiscriminatorFn, x: Array, *, eps: float = NORM_EPS) -> Array:
    """Per-example ``‖∇ₓD(x_b)‖₂`` over all non-batch axes, as ``sqrt(Σ g² + eps)``.

    Args:
      d_fn: ``x [B, ...] -> [B]``.
      x: ``[B, ...]``.
      eps: inside the sqrt, so the derivative at a zero gradient is 0, not NaN.
    Returns:
      ``[B]`` norms.
    """
    return jnp.sqrt(_squared_norms(input_gradients(d_fn, x)) + eps)


def interpolates(key: Array, real: Array, fake: Array) -> Array:
    """Random points on the segments between paired samples: ``x̂ = ε·real + (1 − ε)·fake``.

    Args:
      key: PRNG key; one ``ε ~ U(0, 1)`` per example, shared by all its features.
      real, fake: ``[B, ...]``, the same shape.
    Returns:
      ``[B, ...]``.
    """
    shape = _check_real_fake("interpolates", real, fake)
    dtype = jnp.result_type(real, fake)
    eps = jax.random.uniform(key, shape[:1] + (1,) * (len(shape) - 1), dtype=dtype)
    return eps * real + (1.0 - eps) * fake


# --------------------------------------------------------------------------- #
# Penalties
# --------------------------------------------------------------------------- #


def wgan_gp(d_fn: DiscriminatorFn, key: Array, real: Array, fake: Array, weight: float = 10.0, *, eps=NORM_EPS):
    """WGAN-GP: ``weight·mean_b (‖∇D(x̂_b)‖ − 1)²`` at ``x̂ = interpolates(key, real, fake)``.

    Args:
      d_fn: ``x [B, ...] -> [B]``.
      key: PRNG key for the interpolation weights.
      real, fake: ``[B, ...]``, the same shape.
      weight: λ (the paper's 10).
    Returns:
      scalar.
    """
    _check_real_fake("wgan_gp", real, fake)
    norms = gradient_norms(d_fn, interpolates(key, real, fake), eps=eps)
    return weight * jnp.mean(jnp.square(norms - 1.0))


def wgan_gp_one_sided(
    d_fn: DiscriminatorFn, key: Array, real: Array, fake: Array, weight: float = 10.0, *, eps=NORM_EPS
):
    """Post 20's penalty: ``weight·mean_b relu(‖∇D(x̂_b)‖ − 1)``, one-sided and not squared.

    Zero whenever every norm is at most 1, so it only pushes slopes down to 1, and an
    active term's derivative with respect to its norm is ``weight/B`` whatever the excess
    (a hinge, not a spring). Same arguments as :func:`wgan_gp`; returns a scalar.
    """
    _check_real_fake("wgan_gp_one_sided", real, fake)
    norms = gradient_norms(d_fn, interpolates(key, real, fake), eps=eps)
    return weight * jnp.mean(jax.nn.relu(norms - 1.0))


_WGAN_DIV_POINTS = ("interpolates", "real_and_fake")


def wgan_div(
    d_fn: DiscriminatorFn,
    key: Array,
    real: Array,
    fake: Array,
    k: float = 2.0,
    p: float = 6.0,
    *,
    at: str = "interpolates",
    eps=NORM_EPS,
):
    """WGAN-div: ``k·E ‖∇D‖^p`` (Wu et al. 2018; ``k = 2, p = 6`` as in the paper and the author).

    The paper's theory asks for the expectation under a distribution supported on both the
    real and the generated data; implementations pick either interpolates or the two
    batches themselves.

    Args:
      d_fn: ``x [B, ...] -> [B]``.
      key: PRNG key for the interpolation weights (unused for ``at="real_and_fake"``).
      real, fake: ``[B, ...]``, the same shape.
      k, p: the weight and the power (p > 0).
      at: ``"interpolates"``: ``k·mean_b ‖∇D(x̂_b)‖^p`` with ``x̂ = interpolates(key, real,
        fake)``; ``"real_and_fake"``: ``k·mean_b ½(‖∇D(real_b)‖^p + ‖∇D(fake_b)‖^p)``, the
        author's ``wgan_div_celeba.py``.
    Returns:
      scalar.
    """
    fn = "wgan_div"
    _check_real_fake(fn, real, fake)
    if at not in _WGAN_DIV_POINTS:
        raise _error(fn, "at", f"one of {_WGAN_DIV_POINTS}", repr(at))
    if isinstance(p, numbers.Real) and not p > 0:
        raise _error(fn, "p", "> 0", repr(p))
    if at == "interpolates":
        return k * jnp.mean(gradient_norms(d_fn, interpolates(key, real, fake), eps=eps) ** p)
    powers = gradient_norms(d_fn, real, eps=eps) ** p + gradient_norms(d_fn, fake, eps=eps) ** p
    return k * jnp.mean(0.5 * powers)


def zero_centred_gp(d_fn: DiscriminatorFn, x: Array, weight: float) -> Array:
    """``weight·mean_b ‖∇ₓD(x_b)‖²`` on the given samples (R1 when ``x`` is the real batch).

    Post 32 puts real samples at the bottom of energy pits this way. The squared norm is
    ``Σ g²`` directly (no sqrt, so no eps and no bias); R1 as written by Mescheder et al.
    is ``weight = γ/2``.

    Args:
      d_fn: ``x [B, ...] -> [B]``.
      x: ``[B, ...]``.
      weight: λ.
    Returns:
      scalar.
    """
    return weight * jnp.mean(_squared_norms(input_gradients(d_fn, x)))
