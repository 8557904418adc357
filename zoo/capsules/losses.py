"""Capsule losses: the margin loss (Sabour et al.; the author's λ = 0.25) and the spread
loss of matrix capsules. Both take per-class scores in [0, 1] and integer labels."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels.checks import argument_error, concrete


def _check_labels(fn: str, scores, labels, *, multi_hot: bool):
    """``scores [B, K]``; ``labels [B]`` integer ids in ``[0, K)`` (values checked when concrete)
    or, where ``multi_hot``, a ``[B, K]`` target array."""
    if jnp.ndim(scores) != 2:
        raise argument_error(fn, "scores", "[B, K] (rank 2)", f"shape {jnp.shape(scores)}")
    b, k = jnp.shape(scores)
    if multi_hot and jnp.ndim(labels) == 2:
        if jnp.shape(labels) != (b, k):
            raise argument_error(fn, "labels", f"[B] class ids or [B, K] = {(b, k)} targets", f"shape {jnp.shape(labels)}")
        return
    expected = f"[B] = [{b}] integer class ids" + (" (or [B, K] targets)" if multi_hot else "")
    if jnp.shape(labels) != (b,) or not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        raise argument_error(fn, "labels", expected, f"shape {jnp.shape(labels)}, dtype {jnp.result_type(labels)}")
    values = concrete(labels)
    if values is not None and values.size and (values.min() < 0 or values.max() >= k):
        raise argument_error(fn, "labels", f"class ids in [0, {k})", f"values in [{values.min()}, {values.max()}]")


def margin_loss(scores, labels, *, m_plus=0.9, m_minus=0.1, down_weight=0.5):
    """``Σ_k T_k relu(m⁺ − s_k)² + λ (1 − T_k) relu(s_k − m⁻)²``, mean over the batch.

    Args:
      scores: ``[B, K]`` capsule lengths (or sigmoid scores).
      labels: ``[B]`` class ids, or ``[B, K]`` multi-hot targets.
      down_weight: λ; 0.5 in the paper, 0.25 in the author's experiment (post 4819).
    """
    _check_labels("margin_loss", scores, labels, multi_hot=True)
    targets = labels if labels.ndim == 2 else jax.nn.one_hot(labels, scores.shape[-1], dtype=scores.dtype)
    present = targets * jnp.square(jax.nn.relu(m_plus - scores))
    absent = down_weight * (1 - targets) * jnp.square(jax.nn.relu(scores - m_minus))
    return jnp.mean(jnp.sum(present + absent, axis=-1))


def spread_loss(activations, labels, margin):
    """``Σ_{k≠t} relu(m − (a_t − a_k))²``, mean over the batch (Hinton et al. 2018).

    ``margin`` is a scalar or ``[B]`` (the schedule grows it from 0.2 to 0.9).
    """
    _check_labels("spread_loss", activations, labels, multi_hot=False)
    if jnp.ndim(margin) != 0 and jnp.shape(margin) != jnp.shape(labels):
        raise argument_error("spread_loss", "margin", f"a scalar or [B] = {jnp.shape(labels)}", f"shape {jnp.shape(margin)}")
    k = activations.shape[-1]
    target = jnp.take_along_axis(activations, labels[:, None], axis=-1)
    others = 1 - jax.nn.one_hot(labels, k, dtype=activations.dtype)
    margin = jnp.reshape(margin, (-1, 1)) if jnp.ndim(margin) else margin
    return jnp.mean(jnp.sum(others * jnp.square(jax.nn.relu(margin - (target - activations))), axis=-1))
