"""Training objectives of one Transformer under three masks (post 6933): LM, UniLM seq2seq and
permutation LM. Each is a token cross-entropy of the next token, differing only in the mask
and in which positions are trained.

* :func:`lm_loss`: causal mask; every next token of the sequence.
* :func:`unilm_loss`: the UniLM mask from segment ids; only target tokens (bert4keras weights
  the shifted targets by ``segment_ids[:, 1:]``).
* :func:`permutation_lm_logits` / :func:`permutation_lm_loss`: the tokens and their position
  ids shuffled by a factorisation order, under the plain causal mask — the post's
  equivalent of the permuted lower-triangular mask (:func:`kernels.attention.permutation_mask`;
  the tests check the two give the same logits). As in the post, the model is not told *which*
  position comes next (XLNet's two-stream attention exists for that; not built here).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from kernels.attention import causal_mask, combine_masks, unilm_mask
from kernels.checks import argument_error
from kernels.checks import concrete as _concrete


def token_cross_entropy(logits, targets, weights):
    """Weighted mean cross-entropy: ``Σ w · CE(logits, targets) / max(Σ w, 1)``.

    Args:
      logits: ``[B, T, V]``; targets: ``[B, T]`` int; weights: ``[B, T]`` (0/1 or bool).
    Returns:
      ``(loss, token_count)`` float32 scalars.
    """
    if jnp.shape(logits)[:2] != jnp.shape(targets) or jnp.shape(targets) != jnp.shape(weights):
        raise ValueError(f"token_cross_entropy: logits [B, T, V], targets and weights [B, T] must agree; got "
                         f"{jnp.shape(logits)}, {jnp.shape(targets)}, {jnp.shape(weights)}")
    if not jnp.issubdtype(jnp.result_type(targets), jnp.integer):
        raise argument_error("token_cross_entropy", "targets", "integer token ids", f"dtype {jnp.result_type(targets)}")
    w = jnp.asarray(weights, jnp.float32)
    ids, vocab = _concrete(targets), jnp.shape(logits)[-1]
    trained = _concrete(w)
    if ids is not None and trained is not None and (trained > 0).any():
        used = ids[trained > 0]
        if used.min() < 0 or used.max() >= vocab:
            raise argument_error("token_cross_entropy", "targets", f"ids in [0, {vocab}) where weights > 0",
                                 f"ids in [{used.min()}, {used.max()}]")
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    count = jnp.sum(w)
    # a weight-0 position (a pad) may hold any id, even one outside [0, V) whose lookup is NaN
    return jnp.sum(jnp.where(w > 0, nll * w, 0.0)) / jnp.maximum(count, 1.0), count


def _padding(valid):
    return None if valid is None else jnp.asarray(valid, bool)[:, None, None, :]


def lm_loss(model, params, tokens, valid=None):
    """Next-token loss under the causal mask. ``tokens [B, T]``; ``valid [B, T]`` bool marks
    real tokens (right padding; pads are neither attended to nor trained)."""
    t = tokens.shape[1]
    logits = model.apply(params, tokens, combine_masks(causal_mask(t), _padding(valid)))
    weights = jnp.ones(tokens.shape, bool) if valid is None else jnp.asarray(valid, bool)
    return token_cross_entropy(logits[:, :-1], tokens[:, 1:], weights[:, 1:])


def unilm_loss(model, params, tokens, segment_ids, valid=None, target_start: int = 0):
    """UniLM seq2seq loss: ``tokens [B, T]`` = ``[CLS] src [SEP] tgt [SEP]``, ``segment_ids``
    0 on the source and 1 on the target; only target tokens are trained (the shifted targets
    weighted by ``segment_ids[:, 1:]``, and by ``valid[:, 1:]``).

    ``target_start`` (static int, optional): when every row's target starts at or after this
    position, only positions ``>= target_start - 1`` are projected to the vocabulary (the
    others carry zero weight); the loss is the same, the output layer costs less.
    """
    seg = _concrete(segment_ids)
    if target_start and seg is not None and seg[:, :target_start].any():
        raise ValueError(f"unilm_loss: every row's target must start at or after target_start = {target_start} "
                         "(segment_ids[:, :target_start] all 0); a target token before it would not be trained")
    mask = combine_masks(unilm_mask(segment_ids), _padding(valid))
    first = max(target_start - 1, 0)
    logits = model.apply(params, tokens, mask, None, first)  # positions >= first
    weights = jnp.asarray(segment_ids, bool)
    if valid is not None:
        weights = weights & jnp.asarray(valid, bool)
    return token_cross_entropy(logits[:, :-1], tokens[:, first + 1 :], weights[:, first + 1 :])


def permutation_lm_logits(model, params, tokens, perm):
    """Logits of the permutation LM in the shuffled form: ``out[:, k]`` scores the token at
    position ``perm[:, k + 1]`` given those at ``perm[:, :k + 1]``.

    ``tokens [B, T]``, ``perm [B, T]`` (each row a permutation of ``0..T-1``). Inputs are
    ``tokens[perm]`` with position ids ``perm`` under the causal mask.
    """
    if jnp.shape(perm) != jnp.shape(tokens) or not jnp.issubdtype(jnp.result_type(perm), jnp.integer):
        raise argument_error("permutation_lm_logits", "perm", f"an integer array of shape {jnp.shape(tokens)} (that of tokens)",
                             f"shape {jnp.shape(perm)}, dtype {jnp.result_type(perm)}")
    order = _concrete(perm)  # eager calls: a row that is not a permutation trains on a duplicated sequence
    if order is not None and order.size:
        bad = np.flatnonzero((np.sort(order, axis=1) != np.arange(order.shape[1])).any(axis=1))
        if bad.size:
            raise argument_error("permutation_lm_logits", "perm", f"rows that are permutations of 0..{order.shape[1] - 1}",
                                 f"row {bad[0]} = {order[bad[0]].tolist()}")
    shuffled = jnp.take_along_axis(tokens, perm, axis=1)
    return model.apply(params, shuffled, causal_mask(tokens.shape[1]), perm)


def permutation_lm_loss(model, params, tokens, perm):
    """Mean next-token loss along each row's factorisation order ``perm``."""
    logits = permutation_lm_logits(model, params, tokens, perm)
    targets = jnp.take_along_axis(tokens, perm, axis=1)[:, 1:]
    return token_cross_entropy(logits[:, :-1], targets, jnp.ones(targets.shape, bool))
