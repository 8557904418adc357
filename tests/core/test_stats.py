"""Paired comparison of two classifiers: the exact sign test against enumerating every
outcome, the counts and standard error against per-example definitions, and the errors."""

import itertools

import numpy as np
import pytest

from zoo.core.stats import exact_sign_test_p, paired_accuracy


@pytest.mark.parametrize("trials", range(0, 11))
def test_sign_test_equals_enumeration_of_all_outcomes(trials):
    # Oracle: all 2^n equally likely sequences of fair flips; the p-value is the share whose
    # head count lies at least as far from n/2 as the observed one.
    heads = [sum(seq) for seq in itertools.product((0, 1), repeat=trials)]
    for successes in range(trials + 1):
        far = abs(successes - trials / 2)
        expected = sum(abs(h - trials / 2) >= far for h in heads) / len(heads)
        assert exact_sign_test_p(successes, trials) == pytest.approx(expected, rel=1e-15, abs=0)


def test_sign_test_large_counts_stay_finite_and_symmetric():
    # 2^600 overflows a float; the integer ratio must not.
    p = exact_sign_test_p(250, 600)
    assert 0.0 < p < 1e-4 and p == exact_sign_test_p(350, 600)
    assert exact_sign_test_p(300, 600) == 1.0
    assert exact_sign_test_p(np.int64(250), np.int64(600)) == p  # numpy ints: no int64 overflow


def test_paired_accuracy_matches_per_example_definitions():
    rng = np.random.default_rng(0)
    for n in (1, 7, 500):
        a, b = rng.random(n) < 0.8, rng.random(n) < 0.7
        r = paired_accuracy(a, b)
        only_a = sum(x and not y for x, y in zip(a, b))
        only_b = sum(y and not x for x, y in zip(a, b))
        assert (r["n"], r["only_a"], r["only_b"]) == (n, only_a, only_b)
        assert r["accuracy_a"] == pytest.approx(a.mean()) and r["accuracy_b"] == pytest.approx(b.mean())
        d = a.astype(float) - b.astype(float)  # per-example differences in {-1, 0, 1}
        assert r["difference"] == pytest.approx(d.mean(), abs=1e-15)
        assert r["difference_se"] == pytest.approx(d.std() / np.sqrt(n), abs=1e-15)
        assert r["p_value"] == exact_sign_test_p(only_a, only_a + only_b)


def test_identical_models_have_no_evidence_of_a_difference():
    a = np.arange(20) % 3 == 0
    r = paired_accuracy(a, a.copy())
    assert (r["only_a"], r["only_b"], r["difference"], r["difference_se"], r["p_value"]) == (0, 0, 0.0, 0.0, 1.0)


@pytest.mark.parametrize(
    "a, b, match",
    [
        (np.ones(3, bool), np.ones(4, bool), "correct_b.*shape"),
        (np.ones(3), np.ones(3, bool), "correct_a.*bool"),
        (np.ones((2, 2), bool), np.ones((2, 2), bool), "correct_a.*1-D"),
        (np.ones(0, bool), np.ones(0, bool), "non-empty"),
    ],
)
def test_paired_accuracy_bad_inputs_name_the_argument(a, b, match):
    with pytest.raises(ValueError, match=match):
        paired_accuracy(a, b)


@pytest.mark.parametrize("args, match", [((3, 2), "successes.*<= trials"), ((-1, 2), "successes"), ((1, 2.0), "trials")])
def test_sign_test_bad_inputs_name_the_argument(args, match):
    with pytest.raises(ValueError, match=match):
        exact_sign_test_p(*args)
