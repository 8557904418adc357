"""The self-terminating output head of post 7500 (Welleck et al. 2020, "Consistency of a
Recurrent Language Model With Respect to Incomplete Decoding").

The stop probability grows monotonically with the step::

    α_t = ∏_{i ≤ t} σ_ε(s_i),   σ_ε(x) = (1 − ε)·sigmoid(x),   s_i = w_eosᵀ h_i + b
    p(eos | t) = 1 − α_t,        p(v | t) = α_t · softmax(logits_t over v ≠ eos)

Since ``α_t ≤ (1 − ε)^{t+1}``, ``p(eos | t) > ½`` once ``t + 1 > −ln 2 / ln(1 − ε)``, and then EOS
beats every other token (their total mass is ``α_t < ½``): greedy decoding stops within
:func:`greedy_stop_bound` steps whatever the model says. Everything is kept in log space:
``log α_t`` is a running sum of ``log(1 − ε) + log_sigmoid(s_i)``, and
``log p(eos) = log(−expm1(log α_t))``, so neither product underflows to a NaN.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def _check_epsilon(fn, epsilon):
    if not 0.0 < epsilon < 1.0:
        raise ValueError(f"{fn}: `epsilon` must lie in (0, 1); got {epsilon}")


def greedy_stop_bound(epsilon: float) -> int:
    """The most tokens greedy decoding can emit under the head, EOS included:
    the smallest ``n`` with ``(1 − ε)^n < ½``."""
    _check_epsilon("greedy_stop_bound", epsilon)
    return math.floor(-math.log(2.0) / math.log1p(-epsilon)) + 1


def _log_probs(logits, log_alpha, eos_id):
    """``log p`` over the vocabulary from token logits ``[..., V]`` and ``log α`` ``[...]``."""
    v = logits.shape[-1]
    is_eos = jnp.arange(v) == eos_id
    others = jax.nn.log_softmax(jnp.where(is_eos, -jnp.inf, logits.astype(jnp.float32)), axis=-1)
    log_eos = jnp.log(-jnp.expm1(jnp.minimum(log_alpha, -1e-30)))  # log(1 − α); α < 1 always
    return jnp.where(is_eos, log_eos[..., None], log_alpha[..., None] + others)


def self_terminating_log_probs(logits, eos_logits, *, eos_id: int, epsilon: float):
    """Log-probabilities of a whole sequence under the head.

    Args:
      logits: ``[B, T, V]`` token logits (the EOS column is ignored).
      eos_logits: ``[B, T]``, ``s_t = w_eosᵀ h_t + b``.
      eos_id: the EOS token; epsilon: ``ε`` in (0, 1).
    Returns:
      ``[B, T, V]`` float32; each ``[b, t]`` row is a normalised log-distribution.
    """
    fn = "self_terminating_log_probs"
    _check_epsilon(fn, epsilon)
    if logits.ndim != 3 or eos_logits.shape != logits.shape[:2]:
        raise ValueError(f"{fn}: `eos_logits` must have shape {logits.shape[:2]} (logits' [B, T]); got {eos_logits.shape}")
    if not 0 <= eos_id < logits.shape[-1]:
        raise ValueError(f"{fn}: `eos_id` must lie in [0, {logits.shape[-1]}); got {eos_id}")
    steps = math.log1p(-epsilon) + jax.nn.log_sigmoid(eos_logits.astype(jnp.float32))
    return _log_probs(logits, jnp.cumsum(steps, axis=1), eos_id)


def self_terminating_step(logits, eos_logit, log_alpha, *, eos_id: int, epsilon: float):
    """One decoding step: ``(log_probs [B, V], log_alpha [B])`` from the step's token logits
    ``[B, V]``, its ``s_t`` ``[B]`` and the running ``log α_{t−1}`` ``[B]`` (0 before the first
    step). Return ``log_probs`` as a decoder's logits: they are already normalised."""
    fn = "self_terminating_step"
    _check_epsilon(fn, epsilon)
    if jnp.ndim(logits) != 2:
        raise ValueError(f"{fn}: `logits` must be [B, V] (rank 2); got shape {jnp.shape(logits)}")
    for name, value in (("eos_logit", eos_logit), ("log_alpha", log_alpha)):
        if jnp.shape(value) != jnp.shape(logits)[:1]:  # a Dense(1) head's [B, 1] would broadcast to [B, B, V]
            raise ValueError(f"{fn}: `{name}` must have shape {jnp.shape(logits)[:1]} (logits' [B]); got {jnp.shape(value)}")
    if not 0 <= eos_id < logits.shape[-1]:
        raise ValueError(f"{fn}: `eos_id` must lie in [0, {logits.shape[-1]}); got {eos_id}")
    log_alpha = log_alpha + math.log1p(-epsilon) + jax.nn.log_sigmoid(eos_logit.astype(jnp.float32))
    return _log_probs(logits, log_alpha, eos_id), log_alpha
