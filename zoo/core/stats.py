"""Comparing two classifiers on the same test set.

Two runs scored on the same 10,000 images are a *paired* sample: an unpaired standard error
(about 0.26 points at 92.7% accuracy) counts the images both models get right or both get
wrong, which cannot tell them apart. Only the discordant images can, and under the null
hypothesis "equal accuracy" each discordant image is a fair coin between the two models
(McNemar's test). :func:`paired_accuracy` returns the counts, the difference with its
paired standard error, and the exact two-sided p-value of that coin-flip test, computed with
integers (no normal approximation: discordant counts of a few hundred are common here).

What it does not measure: seed-to-seed spread. Two trainings that differ only in their seed
also differ on the test set by a few tenths of a point; a schedule comparison needs several
seeds (or pairs of runs that share one) besides this test.
"""

from __future__ import annotations

import math

import numpy as np


def exact_sign_test_p(successes: int, trials: int) -> float:
    """Two-sided p-value of ``successes`` in ``trials`` fair coin flips: the probability of
    a count at least as far from ``trials / 2`` (for this symmetric binomial, twice the
    smaller tail, capped at 1). Exact: a ratio of integers."""
    for name, v in (("successes", successes), ("trials", trials)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
            raise ValueError(f"exact_sign_test_p: `{name}` must be an int >= 0; got {v!r}")
    successes, trials = int(successes), int(trials)  # numpy ints would overflow in 2**trials
    if successes > trials:
        raise ValueError(f"exact_sign_test_p: `successes` must be <= trials = {trials}; got {successes}")
    if trials == 0:
        return 1.0
    tail = sum(math.comb(trials, k) for k in range(min(successes, trials - successes) + 1))
    return min(1.0, 2 * tail / 2**trials)  # int / int is correctly rounded in Python


def paired_accuracy(correct_a, correct_b) -> dict[str, float]:
    """McNemar's comparison of two classifiers on the same examples.

    Args:
      correct_a, correct_b: ``[N]`` booleans, whether model A (B) classified example i correctly.

    Returns:
      ``accuracy_a``, ``accuracy_b``; ``only_a`` / ``only_b``: examples only A (B) gets right;
      ``difference`` = accuracy_a − accuracy_b; ``difference_se``: its paired standard error,
      ``sqrt(only_a + only_b − (only_a − only_b)² / N) / N``; ``p_value``: the exact two-sided
      McNemar p-value (:func:`exact_sign_test_p` of ``only_a`` in ``only_a + only_b``).
    """
    a, b = np.asarray(correct_a), np.asarray(correct_b)
    for name, v in (("correct_a", a), ("correct_b", b)):
        if v.ndim != 1 or v.dtype != np.bool_:
            raise ValueError(f"paired_accuracy: `{name}` must be a 1-D bool array; got shape {v.shape}, dtype {v.dtype}")
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired_accuracy: `correct_b` must have correct_a's shape {a.shape} (non-empty); got {b.shape}")
    n = a.size
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    var = (only_a + only_b - (only_a - only_b) ** 2 / n) / n**2
    return {
        "n": n,
        "accuracy_a": float(a.mean()),
        "accuracy_b": float(b.mean()),
        "only_a": only_a,
        "only_b": only_b,
        "difference": (only_a - only_b) / n,
        "difference_se": math.sqrt(max(var, 0.0)),
        "p_value": exact_sign_test_p(only_a, only_a + only_b),
    }


__all__ = ["exact_sign_test_p", "paired_accuracy"]
