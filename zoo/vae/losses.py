"""The VAE family's objectives as pure functions (posts 5253, 5343, 5383).

Shapes: ``B`` examples, ``D`` latent dimensions, ``P`` pixels (any trailing shape of an
image is flattened and summed over), ``K`` importance samples. Every function returns
per-example values ``[B]`` (or ``[K, B]``) in nats; callers take the batch mean.

* :func:`gaussian_kl`: analytic ``KL(N(μ, diag σ²) ‖ N(prior_mean, I))``. With the
  default ``prior_mean = 0`` it is the plain VAE's term; the author's "simplest CVAE" passes
  each example's learned class mean ``μ^Y``, giving ``(μ − μ^Y)²`` in place of ``μ²``.
* :func:`bernoulli_log_likelihood` from logits in the ``−softplus`` form, finite for any
  finite logit; :func:`gaussian_log_likelihood` with a fixed or learned log-scale;
  :func:`discretized_logistic_log_likelihood`, the probability of each pixel's 8-bit bin
  under a logistic (PixelCNN++'s, one component), whose cost grows linearly, not
  quadratically, with a pixel's distance from the mean.
* :func:`elbo` (analytic KL, one posterior sample for the likelihood term) and
  :func:`log_importance_weights` / :func:`iwae_bound` (Burda et al.'s ``L_k``;
  ``L_1`` is the single-sample Monte Carlo ELBO).

Log-variances: :func:`stable_logvar` bounds the encoder's raw log σ² to ``[−bound, bound]``,
so that ``exp(log σ²)`` can neither overflow nor underflow to 0 (the traps the spec lists for
``exp`` of an unbounded log-variance): softly, ``bound·tanh(raw/bound)`` (a non-zero gradient
everywhere), or with a hard clip, which long runs need because a binding soft clamp drifts
under Adam (see :func:`stable_logvar`).
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp

from kernels.checks import argument_error as _error
from kernels.checks import concrete

LOG_2PI = math.log(2.0 * math.pi)


def _flat(x):
    """``[B, ...] -> [B, P]``."""
    return jnp.reshape(x, (jnp.shape(x)[0], -1))


def _check_pair(fn, a, b, a_name, b_name):
    if jnp.ndim(a) < 1:
        raise _error(fn, a_name, "a batch [B, ...] (rank >= 1)", f"shape {tuple(jnp.shape(a))}")
    if jnp.shape(a) != jnp.shape(b):
        raise _error(fn, b_name, f"the shape of `{a_name}` {tuple(jnp.shape(a))}", f"shape {tuple(jnp.shape(b))}")


CLAMPS = ("soft", "hard")


def stable_logvar(raw, bound: float = 10.0, clamp: str = "hard"):
    """A log-variance clamped to ``[−bound, bound]``. ``bound <= 0`` leaves ``raw`` unchanged.

    ``clamp="hard"`` (default): ``clip(raw, −bound, bound)``, the identity inside, zero
    gradient outside. ``clamp="soft"``: ``bound·tanh(raw/bound)``, about the identity for
    ``|raw| ≪ bound``.

    Why both: when the bound binds (the loss keeps pushing the value past it), the soft
    clamp's gradient is tiny but never zero and keeps its sign, and Adam, which is
    invariant to the gradient's scale, turns it into full-size steps: ``raw`` then drifts
    without limit (to −600 in a long Gaussian-VAE run, whose posterior means grew with it
    until the KL exploded; docs/vae/long_runs.md). The hard clamp's zero gradient stops
    that drift.
    """
    if clamp not in CLAMPS:
        raise _error("stable_logvar", "clamp", f"one of {CLAMPS}", repr(clamp))
    if bound <= 0:
        return raw
    if clamp == "hard":
        return jnp.clip(raw, -bound, bound)
    return bound * jnp.tanh(raw / bound)


def gaussian_kl(mean, logvar, prior_mean=0.0):
    """``KL(N(mean, exp(logvar)) ‖ N(prior_mean, I))`` summed over latent dimensions.

    Args:
      mean, logvar: ``[B, D]`` posterior parameters.
      prior_mean: scalar or ``[B, D]`` (the CVAE's class means ``μ^Y``).

    Returns:
      ``[B]``: ``½·Σ_d (σ² + (μ − μ_p)² − 1 − log σ²)``.
    """
    _check_pair("gaussian_kl", mean, logvar, "mean", "logvar")
    if jnp.ndim(prior_mean) and jnp.shape(prior_mean) != jnp.shape(mean):
        raise _error("gaussian_kl", "prior_mean", f"a scalar or the shape of `mean` {tuple(jnp.shape(mean))}",
                     f"shape {tuple(jnp.shape(prior_mean))}")  # fmt: skip
    terms = jnp.exp(logvar) + jnp.square(mean - prior_mean) - 1.0 - logvar
    return 0.5 * jnp.sum(_flat(terms), axis=-1)


def bernoulli_log_likelihood(logits, x):
    """``log p(x | logits) = Σ_p [x·log σ(l) + (1 − x)·log(1 − σ(l))]`` over pixels.

    Computed as ``Σ [x·l − softplus(l)]`` (the same as ``−Σ [x·softplus(−l) + (1 − x)·softplus(l)]``,
    with one ``softplus`` per pixel instead of two), finite for every finite logit (the naive
    ``log σ(l)`` is ``−inf`` in float32 once ``σ(l)`` rounds to 0); its absolute error per pixel
    is within an ulp of ``|l|``. ``x`` may be {0, 1} (a Bernoulli likelihood) or in [0, 1]
    (the author's BCE on grey levels).

    Args:
      logits, x: ``[B, ...]`` of the same shape.

    Returns:
      ``[B]`` log-likelihoods (≤ 0 for binary ``x``).
    """
    _check_pair("bernoulli_log_likelihood", logits, x, "logits", "x")
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise _error("bernoulli_log_likelihood", "x", "floating point in [0, 1]", f"dtype {jnp.result_type(x)}")
    values = concrete(x)  # raw 0–255 pixels would give a positive "log-likelihood"
    if values is not None and values.size and (values.min() < 0 or values.max() > 1):
        raise _error("bernoulli_log_likelihood", "x", "in [0, 1]", f"values in [{values.min()}, {values.max()}]")
    ll = x * logits - jax.nn.softplus(logits)
    return jnp.sum(_flat(ll), axis=-1)


def gaussian_log_likelihood(mean, x, log_scale=0.0):
    """``log N(x; mean, exp(log_scale)²)`` summed over pixels.

    Args:
      mean, x: ``[B, ...]`` of the same shape.
      log_scale: log standard deviation: a scalar (fixed variance; with ``log_scale = 0`` the
        loss is ``½·MSE`` plus a constant, post 5343's Gaussian decoder) or an array
        broadcasting against ``x`` (a learned per-pixel ``[H, W, C]``, or per example and
        pixel ``[B, H, W, C]`` from the decoder).

    Returns:
      ``[B]`` log-densities in nats.
    """
    _check_pair("gaussian_log_likelihood", mean, x, "mean", "x")
    ll = -0.5 * LOG_2PI - log_scale - 0.5 * jnp.square((x - mean) * jnp.exp(-log_scale))
    return jnp.sum(_flat(jnp.broadcast_to(ll, jnp.shape(x))), axis=-1)


def discretized_logistic_log_likelihood(mean, x, log_scale, num_bins: int = 256):
    """``Σ_p [log P(bin(x_p)) + log num_bins]``: the log-density on ``[0, 1)`` of a model that
    puts mass ``P(k) = σ((k+1)/n − μ)/s) − σ((k/n − μ)/s)`` on bin ``k`` of ``n = num_bins``,
    spread uniformly over the bin (the first and last bins take the tails to ∓∞, so the
    masses sum to 1). ``x`` is uniformly dequantised (bin ``k`` is ``floor(x·n)``), so this is
    comparable with :func:`gaussian_log_likelihood` and its bits/dim with the same volume term.

    Stable form: ``log P = log σ(b) + log σ(−a) + log(1 − e^{a−b})`` with ``a, b`` the bin's
    standardised edges (``σ(b) − σ(a) = σ(b)·σ(−a)·(1 − e^{a−b})``); each term is at most 0,
    and a pixel ``d`` scales away from its mean costs about ``d`` nats, not ``d²/2``.

    Args:
      mean, x: ``[B, ...]`` of the same shape; ``x`` in ``[0, 1)``.
      log_scale: log of the logistic's scale ``s``, broadcasting against ``x``; keep it bounded
        (the VAE clamps it to ``±log_scale_bound``): beyond about −88, ``1/s`` overflows.
      num_bins: the number of quantisation levels (256 for 8-bit images).

    Returns:
      ``[B]`` log-densities in nats.
    """
    _check_pair("discretized_logistic_log_likelihood", mean, x, "mean", "x")
    k = jnp.clip(jnp.floor(x * num_bins), 0, num_bins - 1)
    inv_scale = jnp.exp(-log_scale)
    a = (k / num_bins - mean) * inv_scale
    b = ((k + 1) / num_bins - mean) * inv_scale
    first, last = k == 0, k == num_bins - 1
    log_cdf_b = jnp.where(last, 0.0, jax.nn.log_sigmoid(b))  # log σ(+∞) = 0
    log_sf_a = jnp.where(first, 0.0, jax.nn.log_sigmoid(-a))  # log σ(−(−∞)) = 0
    # b − a = inv_scale / n > 0: log(1 − e^{−(b−a)}), 0 when an edge bin's a or b is infinite
    log_width = jnp.where(first | last, 0.0, jnp.log(-jnp.expm1(-(inv_scale / num_bins))))
    ll = log_cdf_b + log_sf_a + log_width + math.log(num_bins)
    return jnp.sum(_flat(jnp.broadcast_to(ll, jnp.shape(x))), axis=-1)


def elbo(log_px_z, mean, logvar, prior_mean=0.0):
    """The evidence lower bound with the analytic KL: ``log p(x|z) − KL(q(z|x) ‖ p(z))``.

    Args:
      log_px_z: ``[B]`` reconstruction log-likelihood at one posterior sample ``z``.
      mean, logvar: ``[B, D]`` posterior parameters.
      prior_mean: as :func:`gaussian_kl`.

    Returns:
      ``[B]`` ELBO (nats); the training loss is its negative batch mean.
    """
    if jnp.shape(log_px_z) != jnp.shape(mean)[:1]:
        raise _error("elbo", "log_px_z", f"per-example values of shape {jnp.shape(mean)[:1]}",
                     f"shape {jnp.shape(log_px_z)}")  # fmt: skip
    return log_px_z - gaussian_kl(mean, logvar, prior_mean)


def log_importance_weights(log_px_z, z, mean, logvar, prior_mean=0.0):
    """``log w = log p(x|z) + log p(z) − log q(z|x)`` per sample.

    Args:
      log_px_z: ``[..., B]``; z: ``[..., B, D]`` samples of ``q(z|x)`` (leading ``K`` optional).
      mean, logvar: ``[B, D]``; prior_mean: scalar or ``[B, D]``.

    Returns:
      ``[..., B]``; its mean over samples estimates the ELBO without bias.
    """
    fn = "log_importance_weights"
    if jnp.ndim(mean) != 2 or jnp.shape(logvar) != jnp.shape(mean):
        raise _error(fn, "mean, logvar", "[B, D] arrays of one shape", f"shapes {jnp.shape(mean)}, {jnp.shape(logvar)}")
    if jnp.ndim(z) < 2 or jnp.shape(z)[-2:] != jnp.shape(mean):
        raise _error(fn, "z", f"[..., B, D] with [B, D] = {jnp.shape(mean)} (that of mean)", f"shape {jnp.shape(z)}")
    if jnp.shape(log_px_z) != jnp.shape(z)[:-1]:  # a [B, 1] column would broadcast to [B, B]
        raise _error(fn, "log_px_z", f"shape {jnp.shape(z)[:-1]} (z without its last axis)", f"shape {jnp.shape(log_px_z)}")
    log_pz = gaussian_log_density(z, prior_mean, 0.0)
    log_qz = gaussian_log_density(z, mean, logvar)
    return log_px_z + log_pz - log_qz


def gaussian_log_density(z, mean, logvar):
    """``log N(z; mean, diag exp(logvar))`` summed over the last axis: ``[..., D] -> [...]``
    (``mean`` and ``logvar`` broadcast against ``z``)."""
    terms = -0.5 * (LOG_2PI + logvar + jnp.square(z - mean) * jnp.exp(-logvar))
    return jnp.sum(jnp.broadcast_to(terms, jnp.shape(z)), axis=-1)


def iwae_bound(log_weights):
    """Burda et al.'s ``L_k = log (1/k)·Σ_k w_k`` from ``log_weights [K, B]``: ``[B]``.

    ``logsumexp`` over ``K`` minus ``log K``; ``L_1`` is the Monte Carlo ELBO, and
    ``E[L_k]`` rises with ``k`` towards ``log p(x)`` (post 5383).
    """
    if jnp.ndim(log_weights) != 2:
        raise _error("iwae_bound", "log_weights", "[K, B] (rank 2)", f"shape {tuple(jnp.shape(log_weights))}")
    k = jnp.shape(log_weights)[0]
    return jax.scipy.special.logsumexp(log_weights, axis=0) - math.log(k)


def bits_per_dim(nats, num_dims: int, *, num_bins: int = 0):
    """Per-image negative log-likelihood in nats -> bits per dimension.

    ``num_bins = 0``: a discrete likelihood (binarised pixels), ``nats / (P·log 2)``.
    ``num_bins = 256``: a density over dequantised ``y = (x + u)/256 ∈ [0, 1)``; adds the
    volume term, ``(nats + P·log 256) / (P·log 2)``, a bound on the 8-bit data's bits/dim.
    """
    if not (isinstance(num_dims, numbers.Integral) and num_dims >= 1):
        raise _error("bits_per_dim", "num_dims", "a Python int >= 1", repr(num_dims))
    if not (isinstance(num_bins, numbers.Integral) and (num_bins == 0 or num_bins >= 2)):
        raise _error("bits_per_dim", "num_bins", "0 (discrete) or a Python int >= 2", repr(num_bins))
    correction = num_dims * math.log(num_bins) if num_bins else 0.0
    return (nats + correction) / (num_dims * math.log(2.0))
