"""Reductions that share one pass over their inputs.

XLA fuses an elementwise producer (a gradient that is a sum of terms, a BatchNorm backward)
into every reduction that reads it. When several reductions read the same big array, or
one reduction reads each element several times, the producer is recomputed each time.
XLA:CPU drops ``lax.optimization_barrier`` before fusion, so the barrier cannot force the
array into memory. One variadic ``lax.reduce`` over all the terms computes each element
of the shared producer once for all its outputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sums(terms, axes):
    """``[jnp.sum(t, axis=axes) for t in terms]`` as one variadic ``lax.reduce``.

    Args:
      terms: a sequence of arrays of one shape.
      axes: the axes to sum over (non-negative ints).
    Returns:
      a tuple of the sums, one per term.
    """
    terms = tuple(terms)
    shapes = {jnp.shape(t) for t in terms}
    if len(shapes) != 1:
        raise ValueError(f"sums: `terms` must all have one shape; got shapes {sorted(shapes)}")
    zeros = tuple(jnp.zeros((), t.dtype) for t in terms)
    return jax.lax.reduce(terms, zeros, lambda xs, ys: tuple(x + y for x, y in zip(xs, ys)), tuple(axes))
