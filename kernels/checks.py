"""Argument checks shared by the kernels and the families: one error wording everywhere.

``argument_error("masked_attention", "impl", "one of ('reference', 'xla')", "'flash'")`` reads
``masked_attention: `impl` must be one of ('reference', 'xla'); got 'flash'``.
"""

from __future__ import annotations

import jax
import numpy as np


def argument_error(fn: str, name: str, expected, got) -> ValueError:
    """The ValueError for argument ``name`` of ``fn``: what was expected, what was received."""
    return ValueError(f"{fn}: `{name}` must be {expected}; got {got}")


def concrete(x):
    """``x`` as a numpy array when its values are known, ``None`` under tracing (jit/vmap/grad),
    so value checks run eagerly and shape checks alone run under ``jit``."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def token_ids(fn: str, name: str, x, rank: int, vocab: int, what: str):
    """Checks token ids ``x`` for ``fn``: rank ``rank``, an integer dtype and, when concrete,
    ``0 <= id < vocab`` (an id outside it is a NaN or a wrapped lookup); returns them as int32.
    ``what`` names the expected shape in the message, e.g. ``"[B, T]"``."""
    import jax.numpy as jnp

    shape = jnp.shape(x)
    if len(shape) != rank:
        raise argument_error(fn, name, f"an integer array {what} (rank {rank})", f"shape {tuple(shape)}")
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise argument_error(fn, name, f"an integer array {what}", f"dtype {dtype}")
    vals = concrete(x)
    if vals is not None and vals.size:
        lo, hi = int(vals.min()), int(vals.max())
        if lo < 0 or hi >= vocab:
            raise argument_error(fn, name, f"token ids in [0, vocab_size) = [0, {vocab})", f"ids in [{lo}, {hi}]")
    return jnp.asarray(x, jnp.int32)
