"""Step-indexed, length-bucketed batches: batch ``s`` is a pure function of (seed, s).

That is what lets a resumed run see exactly the batches the uninterrupted run saw.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np


def epoch_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, window: int = 50) -> list[np.ndarray]:
    """Example indices of every full batch of one epoch.

    Shuffles, sorts by length inside windows of ``window * batch_size`` examples (so a
    batch holds similar lengths and little padding), cuts batches, shuffles their order.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    span = window * batch_size
    for w in range(0, len(order), span):
        chunk = order[w : w + span]
        order[w : w + span] = chunk[np.argsort(lengths[chunk], kind="stable")]
    num = len(order) // batch_size
    batches = [order[i * batch_size : (i + 1) * batch_size] for i in range(num)]
    return [batches[i] for i in rng.permutation(num)]


def step_batches(lengths: np.ndarray, batch_size: int, seed: int, start_step: int = 0) -> Iterator[np.ndarray]:
    """Yields the index batch of step ``start_step``, then of every following step."""
    per_epoch = len(lengths) // batch_size
    if per_epoch == 0:
        raise ValueError(f"batch_size {batch_size} exceeds the number of examples ({len(lengths)})")
    epoch, offset = divmod(start_step, per_epoch)
    while True:
        yield from epoch_batches(lengths, batch_size, seed, epoch)[offset:]
        epoch, offset = epoch + 1, 0


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The example order of one epoch: ``default_rng([seed, epoch]).permutation(num_examples)``."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def shuffled_batches(num_examples: int, batch_size: int, seed: int, start_step: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """Yields ``(step, example indices)`` from ``start_step`` on: each epoch is
    :func:`epoch_permutation` cut into full batches (the remainder is dropped), so the batch of
    a step is a pure function of ``(seed, step)``."""
    per_epoch = num_examples // batch_size
    if per_epoch == 0:
        raise ValueError(f"batch_size {batch_size} exceeds the number of examples ({num_examples})")
    epoch, offset = divmod(start_step, per_epoch)
    while True:
        order = epoch_permutation(num_examples, seed, epoch)
        for b in range(offset, per_epoch):
            yield epoch * per_epoch + b, order[b * batch_size : (b + 1) * batch_size]
        epoch, offset = epoch + 1, 0


def padded_length(max_len_in_batch: int, bucket: int) -> int:
    """Rounds up to a multiple of ``bucket`` so only a few shapes get compiled."""
    return max(bucket, -(-max_len_in_batch // bucket) * bucket)


def pad_batch(sequences: list[np.ndarray], length: int, pad: int = 0) -> np.ndarray:
    out = np.full((len(sequences), length), pad, np.int32)
    for i, seq in enumerate(sequences):
        out[i, : min(len(seq), length)] = seq[:length]
    return out


def fixed_size_chunks(arrays, batch_size: int) -> Iterator[tuple[int, int, list[np.ndarray]]]:
    """Evaluation batches of one shape: yields ``(start, n, chunks)`` with ``chunks[j] =
    arrays[j][start : start + batch_size]`` as numpy, the last zero-padded to ``batch_size``
    rows, so a jitted function compiles once; ``n`` is how many rows are real."""
    count = len(arrays[0])
    for start in range(0, count, batch_size):
        chunks = [np.asarray(a[start : start + batch_size]) for a in arrays]
        n = len(chunks[0])
        if n < batch_size:
            chunks = [np.concatenate([c, np.zeros((batch_size - n, *c.shape[1:]), c.dtype)]) for c in chunks]
        yield start, n, chunks
