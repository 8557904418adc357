"""Linear-chain CRF family: the kernels in ``kernels.crf`` plus a character tagger.

Public API::

    from zoo.crf import Tagger, log_partition, viterbi, nll, marginals, allowed_transitions
"""

from kernels.crf import (
    TransitionConstraints,
    allowed_transitions,
    crf_log_likelihood,
    crf_log_partition as log_partition,
    crf_marginals as marginals,
    crf_viterbi as viterbi,
)
from zoo.crf.model import Tagger, TaggerOutput
from zoo.crf.spans import chunks, span_f1


def nll(emissions, transitions, lengths, tags, **kwargs):
    """Mean negative log-likelihood over the batch (the author's CRF loss)."""
    return -crf_log_likelihood(emissions, transitions, lengths, tags, **kwargs).mean()


__all__ = [
    "Tagger",
    "TaggerOutput",
    "TransitionConstraints",
    "allowed_transitions",
    "chunks",
    "log_partition",
    "marginals",
    "nll",
    "span_f1",
    "viterbi",
]
