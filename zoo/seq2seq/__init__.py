"""Seq2seq family: fixed-shape decoding (greedy, sampling with top-k / top-p, beam search) and
the self-terminating output head of post 7500.

Public API::

    from zoo.seq2seq import greedy, sample, beam_search, top_k_mask, top_p_mask
    from zoo.seq2seq import self_terminating_log_probs, self_terminating_step, greedy_stop_bound
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
from zoo.seq2seq.self_terminating import greedy_stop_bound, self_terminating_log_probs, self_terminating_step

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
    "greedy_stop_bound",
    "self_terminating_log_probs",
    "self_terminating_step",
]
