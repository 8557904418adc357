"""SVD as a linear autoencoder, and the author's "derived words" (post 4208, SVD分解(一)).

A three-layer *linear* autoencoder ``M ≈ M·C·D`` (``C [n, k]`` encodes, ``D [k, n]``
decodes) can do no better than the rank-``k`` truncated SVD of ``M``: by Eckart–Young the
smallest squared error of any rank-``k`` matrix is ``Σ_{i>k} s_i²``, and the SVD attains it.
:func:`train_linear_autoencoder` trains ``C, D`` with optax and the tests check it reaches
that floor.

The experiment: every two-character word of frequency ``>= min_frequency`` in jieba's
dictionary (``jieba/dict.txt``, installed by ``scripts/setup.sh``) gives a matrix
``M[first character, second character] = frequency``. Its rank-``k`` reconstruction, with
negative values cut to 0 (the post reads that as a ReLU), puts mass on pairs that are *not*
words: the "derived words" (the post lists 龙蔗 67.8, 龙薯 30.6, 怨怒 29.8, …; the post does
not give ``k``). SVD reads as a co-clustering of first and second characters, so a derived
word pairs a first character with a second character that its co-cluster uses.
"""

from __future__ import annotations

import importlib.resources
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kernels.checks import argument_error as _error


class WordMatrix(NamedTuple):
    matrix: np.ndarray  # float32 [len(firsts), len(seconds)]: frequency of the word first+second
    firsts: tuple[str, ...]
    seconds: tuple[str, ...]


def jieba_dictionary_words(min_frequency: int = 100) -> list[tuple[str, int]]:
    """``(word, frequency)`` for the two-character words of jieba's ``dict.txt``."""
    try:
        path = importlib.resources.files("jieba") / "dict.txt"
    except ModuleNotFoundError:
        raise ModuleNotFoundError("jieba is not installed; run `bash scripts/setup.sh` (it installs jieba==0.42.1)") from None
    words = []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) >= 2 and len(parts[0]) == 2 and int(parts[1]) >= min_frequency:
            words.append((parts[0], int(parts[1])))
    return words


def word_matrix(words) -> WordMatrix:
    """First character × second character frequency matrix (characters in first-seen order)."""
    firsts = tuple(dict.fromkeys(w[0] for w, _ in words))
    seconds = tuple(dict.fromkeys(w[1] for w, _ in words))
    fi = {c: i for i, c in enumerate(firsts)}
    si = {c: i for i, c in enumerate(seconds)}
    m = np.zeros((len(firsts), len(seconds)), np.float32)
    for w, f in words:
        m[fi[w[0]], si[w[1]]] += f
    return WordMatrix(m, firsts, seconds)


def _check_matrix_and_rank(fn, matrix, rank):
    if matrix.ndim != 2:
        raise _error(fn, "matrix", "a 2-D array", f"shape {tuple(matrix.shape)}")
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 1 <= rank <= min(matrix.shape):
        raise _error(fn, "rank", f"an int in [1, {min(matrix.shape)}]", repr(rank))
    return int(rank)


def truncated_svd_reconstruction(matrix, rank: int):
    """The best rank-``rank`` approximation ``U_k S_k V_kᵀ`` of ``matrix [n, m]`` (Eckart–Young)."""
    matrix = jnp.asarray(matrix)
    rank = _check_matrix_and_rank("truncated_svd_reconstruction", matrix, rank)
    u, s, vt = jnp.linalg.svd(matrix, full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vt[:rank]


def derived_words(wm: WordMatrix, rank: int, top: int = 30) -> list[tuple[str, float]]:
    """The ``top`` non-words with the largest reconstructed frequency (negatives cut to 0)."""
    recon = np.maximum(np.asarray(truncated_svd_reconstruction(wm.matrix, rank)), 0.0)
    recon[wm.matrix > 0] = 0.0  # known words are not "derived"
    flat = np.argsort(-recon, axis=None)[:top]
    rows, cols = np.unravel_index(flat, recon.shape)
    return [(wm.firsts[r] + wm.seconds[c], float(recon[r, c])) for r, c in zip(rows, cols)]


def train_linear_autoencoder(matrix, rank: int, *, steps: int = 2000, learning_rate: float = 1e-2, seed: int = 0):
    """Fits ``M ≈ M·C·D`` (``C [m, k]``, ``D [k, m]``, rows of ``M`` as examples) by Adam on the
    mean squared error; returns ``(C, D, final squared error Σ (M − MCD)²)``."""
    matrix = jnp.asarray(matrix, jnp.float32)
    rank = _check_matrix_and_rank("train_linear_autoencoder", matrix, rank)
    m = matrix.shape[1]
    kc, kd = jax.random.split(jax.random.key(seed))
    params = {"C": jax.random.normal(kc, (m, rank)) / np.sqrt(m), "D": jax.random.normal(kd, (rank, m)) / np.sqrt(rank)}

    def sse(p):
        return jnp.sum(jnp.square(matrix - matrix @ p["C"] @ p["D"]))

    tx = optax.adam(learning_rate)

    def step(carry, _):
        p, state = carry
        grads = jax.grad(lambda q: sse(q) / matrix.size)(p)
        updates, state = tx.update(grads, state, p)
        return (optax.apply_updates(p, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
    return params["C"], params["D"], sse(params)


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description="The derived words of post 4208 from jieba's dictionary.")
    parser.add_argument("--min-frequency", type=int, default=100)
    parser.add_argument("--rank", type=int, nargs="+", default=[100])
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args(argv)
    wm = word_matrix(jieba_dictionary_words(args.min_frequency))
    print(f"{int((wm.matrix > 0).sum())} two-character words of frequency >= {args.min_frequency}: "
          f"{len(wm.firsts)} first x {len(wm.seconds)} second characters")
    for rank in args.rank:
        words = derived_words(wm, rank, args.top)
        print(f"rank {rank}: " + " ".join(f"{w} {v:.1f}" for w, v in words))


if __name__ == "__main__":
    main()
