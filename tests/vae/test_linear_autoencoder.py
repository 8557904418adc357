"""SVD = the optimal linear autoencoder (Eckart–Young), and the derived-words reconstruction."""

import numpy as np
import pytest

from zoo.vae import linear_autoencoder as L


def test_truncated_svd_error_is_the_eckart_young_floor():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(30, 20)).astype(np.float32)
    s = np.linalg.svd(m.astype(np.float64), compute_uv=False)
    for k in (1, 5, 19):
        err = np.sum((m - np.asarray(L.truncated_svd_reconstruction(m, k), np.float64)) ** 2)
        np.testing.assert_allclose(err, np.sum(s[k:] ** 2), rtol=1e-4)


def test_trained_linear_autoencoder_reaches_the_svd_floor():
    """The post's claim: a linear 3-layer autoencoder M ≈ M·C·D learns the truncated SVD."""
    rng = np.random.default_rng(1)
    m = (rng.normal(size=(40, 4)) @ rng.normal(size=(4, 12)) + 0.3 * rng.normal(size=(40, 12))).astype(np.float32)
    k = 3
    floor = np.sum(np.linalg.svd(m.astype(np.float64), compute_uv=False)[k:] ** 2)
    _, _, sse = L.train_linear_autoencoder(m, k, steps=3000, learning_rate=1e-2)
    assert floor <= float(sse) * (1 + 1e-4)  # nothing beats Eckart–Young
    assert float(sse) <= floor * 1.01  # and gradient descent gets there


def test_derived_word_from_a_co_cluster():
    """Words AB, AC, DB: rank 1 puts mass on the missing DC, the one derived word."""
    wm = L.word_matrix([("AB", 4), ("AC", 3), ("DB", 2)])
    assert wm.firsts == ("A", "D") and wm.seconds == ("B", "C")
    np.testing.assert_array_equal(wm.matrix, [[4, 3], [2, 0]])
    (word, value), *_ = L.derived_words(wm, rank=1, top=1)
    u, s, vt = np.linalg.svd(wm.matrix.astype(np.float64))
    assert word == "DC"
    np.testing.assert_allclose(value, s[0] * u[1, 0] * vt[0, 1], rtol=1e-5)


def test_bad_rank_is_refused():
    with pytest.raises(ValueError, match=r"`rank` must be an int in \[1, 2\]"):
        L.truncated_svd_reconstruction(np.ones((2, 3), np.float32), 3)
    with pytest.raises(ValueError, match=r"train_linear_autoencoder: `rank` must be an int in \[1, 2\]"):
        L.train_linear_autoencoder(np.ones((2, 3), np.float32), 0)
    assert L.truncated_svd_reconstruction(np.ones((2, 3), np.float32), np.int64(1)).shape == (2, 3)


def test_jieba_dictionary_words():
    pytest.importorskip("jieba")
    words = L.jieba_dictionary_words(100)
    assert len(words) > 20000 and all(len(w) == 2 and f >= 100 for w, f in words)
