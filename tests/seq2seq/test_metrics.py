"""Character BLEU and ROUGE-L against hand-worked values and a brute-force LCS."""

import itertools
import math

import numpy as np
import pytest

from zoo.seq2seq.metrics import corpus_bleu, lcs_length, rouge_l


def brute_lcs(a, b):
    """Longest subsequence of ``a`` (all 2^len(a) of them) that is also a subsequence of ``b``."""

    def is_subsequence(s, t):
        it = iter(t)
        return all(c in it for c in s)

    best = 0
    for r in range(len(a) + 1):
        for idx in itertools.combinations(range(len(a)), r):
            if is_subsequence([a[i] for i in idx], b):
                best = max(best, r)
    return best


def test_lcs_equals_enumeration_on_random_strings():
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = "".join(rng.choice(list("春花秋月"), size=rng.integers(0, 8)))
        b = "".join(rng.choice(list("春花秋月"), size=rng.integers(0, 8)))
        assert lcs_length(a, b) == brute_lcs(a, b), (a, b)


def test_rouge_l_hand_values():
    # LCS("春眠不覺曉", "春眠覺曉夜") = 4: P = 4/5, R = 4/5, F = 0.8
    assert rouge_l(["春眠不覺曉"], ["春眠覺曉夜"]) == pytest.approx(0.8)
    assert rouge_l(["春", "秋"], ["春", "夏"]) == pytest.approx(0.5)
    assert rouge_l([""], ["春"]) == 0.0


def test_corpus_bleu_hand_value():
    # hyp "ABCD", ref "ABCE": p1 = 3/4, p2 = 2/3, p3 = 1/2, p4 = 0 -> BLEU-4 = 0; BLEU-3 below.
    assert corpus_bleu(["ABCD"], ["ABCE"]) == 0.0
    want = math.exp((math.log(3 / 4) + math.log(2 / 3) + math.log(1 / 2)) / 3)
    assert corpus_bleu(["ABCD"], ["ABCE"], max_n=3) == pytest.approx(want)
    # clipping: "AAAA" vs "AB" -> p1 = 1/4; brevity 1 (c = 4 >= r = 2)
    assert corpus_bleu(["AAAA"], ["AB"], max_n=1) == pytest.approx(1 / 4)
    # brevity: "AB" vs "ABCD" -> p1 = 1, BP = exp(1 - 4/2)
    assert corpus_bleu(["AB"], ["ABCD"], max_n=1) == pytest.approx(math.exp(-1.0))
    assert corpus_bleu(["春眠不覺曉"], ["春眠不覺曉"]) == pytest.approx(1.0)


def test_bad_inputs():
    with pytest.raises(ValueError, match="one entry per hypothesis"):
        corpus_bleu(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="non-empty"):
        rouge_l([], [])
    with pytest.raises(ValueError, match="`max_n` must be >= 1"):
        corpus_bleu(["a"], ["a"], max_n=0)


def test_a_single_string_is_refused_not_split_into_characters():
    for fn in (corpus_bleu, rouge_l):
        with pytest.raises(TypeError, match=r"`hypotheses` must be a sequence of strings \(e.g. \[text\]\); got a str of length 5"):
            fn("今天天气好", ["今天天气坏"])
        with pytest.raises(TypeError, match=r"`references` must be a sequence of strings"):
            fn(["今天天气好"], "今天天气坏")
