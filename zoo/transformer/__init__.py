"""Transformer family: one pre-LN Transformer LM made into an LM, a UniLM seq2seq model or a
permutation LM by its attention mask alone (post 6933), with a KV cache for decoding.

Public API::

    from zoo.transformer import (TransformerLM, sinusoidal_positions, make_recompute_logits_fn,
                                 make_cached_logits_fn, cached_prefill, unilm_prefill,
                                 make_unilm_recompute_logits_fn)
    from zoo.transformer import lm_loss, unilm_loss, permutation_lm_logits, permutation_lm_loss

See :mod:`zoo.transformer.model` for the architecture, the cache layout and the decoder
step-function convention (:mod:`zoo.seq2seq.decoding`).
"""

from zoo.transformer.model import (
    Block,
    TransformerLM,
    cached_prefill,
    make_cached_logits_fn,
    make_recompute_logits_fn,
    make_unilm_recompute_logits_fn,
    sinusoidal_positions,
    unilm_prefill,
)
from zoo.transformer.objectives import (
    lm_loss,
    permutation_lm_logits,
    permutation_lm_loss,
    token_cross_entropy,
    unilm_loss,
)

__all__ = [
    "Block",
    "TransformerLM",
    "cached_prefill",
    "make_cached_logits_fn",
    "make_recompute_logits_fn",
    "make_unilm_recompute_logits_fn",
    "sinusoidal_positions",
    "unilm_prefill",
    "lm_loss",
    "permutation_lm_logits",
    "permutation_lm_loss",
    "token_cross_entropy",
    "unilm_loss",
]
