"""Seq2seq family: fixed-shape decoding (greedy, sampling with top-k / top-p, beam search) and
the self-terminating output head of post 7500.

Public API::

    from zoo.seq2seq import greedy, sample, beam_search, top_k_mask, top_p_mask
    from zoo.seq2seq import self_terminating_log_probs, self_terminating_step, greedy_stop_bound
    from zoo.seq2seq import LSTMSeq2Seq, make_lstm_logits_fn, lstm_prefill, make_lstm_recompute_logits_fn
    from zoo.seq2seq import corpus_bleu, rouge_l

The poem tasks (``zoo train unilm_title | lstm_title | poem_lm``) live in :mod:`zoo.seq2seq.task`.
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
from zoo.seq2seq.lstm import (
    LSTMSeq2Seq,
    lstm_prefill,
    make_lstm_logits_fn,
    make_lstm_recompute_logits_fn,
    seq2seq_loss,
)
from zoo.seq2seq.metrics import corpus_bleu, rouge_l
from zoo.seq2seq.self_terminating import greedy_stop_bound, self_terminating_log_probs, self_terminating_step

__all__ = [
    "BeamOutput",
    "LSTMSeq2Seq",
    "corpus_bleu",
    "lstm_prefill",
    "make_lstm_logits_fn",
    "make_lstm_recompute_logits_fn",
    "rouge_l",
    "seq2seq_loss",
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
