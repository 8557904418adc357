"""Seq2seq family: fixed-shape decoding (greedy, sampling with top-k / top-p, beam search).

Public API::

    from zoo.seq2seq import greedy, sample, beam_search, top_k_mask, top_p_mask
"""

from zoo.seq2seq.decoding import (
    BeamOutput,
    Output,
    beam_search,
    greedy,
    sample,
    top_k_mask,
    top_k_mask_reference,
    top_p_mask,
    top_p_mask_reference,
)

__all__ = [
    "BeamOutput",
    "Output",
    "beam_search",
    "greedy",
    "sample",
    "top_k_mask",
    "top_k_mask_reference",
    "top_p_mask",
    "top_p_mask_reference",
]
