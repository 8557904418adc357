"""Character-level BLEU and ROUGE-L for generated titles and poems (plain Python, host side).

Texts are compared as sequences of characters (Chinese has no spaces; the usual practice for
character-level evaluation of Chinese generation), one reference per hypothesis.

* :func:`corpus_bleu`: Papineni et al. (2002) corpus BLEU: clipped n-gram precisions summed
  over the corpus for ``n = 1..max_n``, their geometric mean (uniform weights) and the brevity
  penalty ``exp(1 − r/c)`` when the total hypothesis length ``c`` is below the total reference
  length ``r``. No smoothing: a corpus with no matching n-gram of some order scores 0.
* :func:`rouge_l`: the mean over pairs of the LCS F1 ``2·P·R / (P + R)`` with
  ``P = LCS / len(hyp)``, ``R = LCS / len(ref)`` (0 when the LCS is 0).

Both return values in ``[0, 1]`` (tables print them ×100).
"""

from __future__ import annotations

import math
from collections import Counter


def _ngrams(text: str, n: int) -> Counter:
    return Counter(text[i : i + n] for i in range(len(text) - n + 1))


def _check_pairs(fn, hypotheses, references):
    for name, texts in (("hypotheses", hypotheses), ("references", references)):
        if isinstance(texts, str):  # one string would be scored as one hypothesis per character
            raise TypeError(f"{fn}: `{name}` must be a sequence of strings (e.g. [text]); got a str of length {len(texts)}")
    hypotheses, references = list(hypotheses), list(references)
    if len(hypotheses) != len(references):
        raise ValueError(f"{fn}: `references` must have one entry per hypothesis ({len(hypotheses)}); "
                         f"got {len(references)}")
    if not hypotheses:
        raise ValueError(f"{fn}: `hypotheses` must be non-empty; got 0 texts")
    return hypotheses, references


def corpus_bleu(hypotheses, references, max_n: int = 4) -> float:
    """Corpus BLEU-``max_n`` over character n-grams (see the module docstring)."""
    hypotheses, references = _check_pairs("corpus_bleu", hypotheses, references)
    if max_n < 1:
        raise ValueError(f"corpus_bleu: `max_n` must be >= 1; got {max_n}")
    matched, total = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for hyp, ref in zip(hypotheses, references):
        hyp_len, ref_len = hyp_len + len(hyp), ref_len + len(ref)
        for n in range(1, max_n + 1):
            h, r = _ngrams(hyp, n), _ngrams(ref, n)
            matched[n - 1] += sum(min(c, r[g]) for g, c in h.items())
            total[n - 1] += sum(h.values())
    if min(matched) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matched, total)) / max_n
    brevity = 1.0 if hyp_len >= ref_len else math.exp(1.0 - ref_len / hyp_len)
    return brevity * math.exp(log_precision)


def lcs_length(a: str, b: str) -> int:
    """Length of the longest common subsequence (dynamic programming, O(len(a)·len(b)))."""
    previous = [0] * (len(b) + 1)
    for ca in a:
        current = [0]
        for j, cb in enumerate(b):
            current.append(previous[j] + 1 if ca == cb else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(hypotheses, references) -> float:
    """Mean ROUGE-L F1 over pairs (see the module docstring)."""
    hypotheses, references = _check_pairs("rouge_l", hypotheses, references)
    scores = []
    for hyp, ref in zip(hypotheses, references):
        lcs = lcs_length(hyp, ref)
        scores.append(0.0 if lcs == 0 else 2.0 * lcs / (len(hyp) + len(ref)))  # = 2PR/(P+R)
    return sum(scores) / len(scores)
