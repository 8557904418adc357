"""Capsule losses: the margin loss (Sabour et al.; the author's λ = 0.25) and the spread
loss of matrix capsules. Both take per-class scores in [0, 1] and integer labels."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def margin_loss(scores, labels, *, m_plus=0.9, m_minus=0.1, down_weight=0.5):
    """``Σ_k T_k relu(m⁺ − s_k)² + λ (1 − T_k) relu(s_k − m⁻)²``, mean over the batch.

    Args:
      scores: ``[B, K]`` capsule lengths (or sigmoid scores).
      labels: ``[B]`` class ids, or ``[B, K]`` multi-hot targets.
      down_weight: λ; 0.5 in the paper, 0.25 in the author's experiment (post 4819).
    """
    targets = labels if labels.ndim == 2 else jax.nn.one_hot(labels, scores.shape[-1], dtype=scores.dtype)
    present = targets * jnp.square(jax.nn.relu(m_plus - scores))
    absent = down_weight * (1 - targets) * jnp.square(jax.nn.relu(scores - m_minus))
    return jnp.mean(jnp.sum(present + absent, axis=-1))


def spread_loss(activations, labels, margin):
    """``Σ_{k≠t} relu(m − (a_t − a_k))²``, mean over the batch (Hinton et al. 2018).

    ``margin`` is a scalar or ``[B]`` (the schedule grows it from 0.2 to 0.9).
    """
    k = activations.shape[-1]
    target = jnp.take_along_axis(activations, labels[:, None], axis=-1)
    others = 1 - jax.nn.one_hot(labels, k, dtype=activations.dtype)
    margin = jnp.reshape(margin, (-1, 1)) if jnp.ndim(margin) else margin
    return jnp.mean(jnp.sum(others * jnp.square(jax.nn.relu(margin - (target - activations))), axis=-1))
