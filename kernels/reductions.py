"""Reductions that share one pass over their inputs.

XLA fuses an elementwise producer (a gradient that is a sum of terms, a BatchNorm backward)
into every reduction that reads it. When several reductions read the same big array, or
one reduction reads each element several times, the producer is recomputed each time.
XLA:CPU drops ``lax.optimization_barrier`` before fusion, so the barrier cannot force the
array into memory. One variadic ``lax.reduce`` over all the terms computes each element
of the shared producer once for all its outputs. The converse case, a small producer that
a big consumer would recompute per element, is :func:`materialize`'s.
"""

from __future__ import annotations

import functools

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


def materialize(x):
    """``x`` unchanged, but computed once and written to memory before its consumers run.

    Why: XLA fuses a chain of cheap elementwise ops into each consumer. Where a consumer
    broadcasts ``x`` over a large axis (a routing pass reads a ``[B, J, P]`` factor for each
    of the ``I`` children), the chain is recomputed for every element of the big tensor.
    ``lax.optimization_barrier`` cannot stop that on XLA:CPU (see the module docstring), and
    neither can a product with the identity (XLA:CPU fuses small dots into their consumer,
    and under ``YNNPACK_DOTS_ONLY`` wrote the broadcast out in full). A reduction is not fused
    into its consumers, so ``x`` is summed with zeros over a new axis of two: ``x + 0``,
    equal to ``x`` in every entry (NaN and infinities included; ``-0.0`` becomes ``0.0``).

    Args:
      x: an array.
    Returns:
      ``x``, same shape and dtype.
    """
    return jnp.sum(jnp.stack([x, jnp.zeros_like(x)]), axis=0, dtype=x.dtype)


# XLA:CPU rewrites a reduction over a dimension longer than this into a reduce-window of
# this size followed by a reduce (pairwise-style accuracy), and the reduce-window does not
# fuse its elementwise producer: the product being summed is written out in full first.
_CPU_REDUCE_WINDOW = 32


def _split(n: int) -> int:
    """The largest divisor of ``n`` that is at most the window (1 if none is at least 8)."""
    best = max(d for d in range(1, min(n, _CPU_REDUCE_WINDOW) + 1) if n % d == 0)
    return best if best >= 8 else 1


def blocked_sums(terms, axis: int):
    """``[jnp.sum(t, axis=axis) for t in terms]`` as two nested variadic sums, so that the
    elementwise producer of ``terms`` fuses into the reduction.

    The axis (length ``n``) is split as ``n = outer · inner`` with ``inner`` at most 32 (XLA:CPU's
    reduction window) and summed in two stages, with an optimisation barrier between them
    so XLA does not merge the stages back into one long reduction. A single term gets a
    second, zero operand: a variadic reduction is one XLA loop fusion with its producer,
    under any YNNPACK setting, where a single-operand sum goes to YNNPACK (by default),
    which writes a broadcast operand out first, or to XLA's own reduction emitter, slower
    here. For the EM routing's sums over 72 children of a [1600, 72, 16, 16] product, on the
    2-core CPU (ad hoc, median of 7): 11-13 ms, against 113-129 ms for ``jnp.sum`` with
    jaxlib's default YNNPACK setting and 49 ms with ``YNNPACK_DOTS_ONLY`` (23 ms blocked
    without the zero operand). When ``n <= 32`` or has no divisor between 8 and 32 the
    stages are one :func:`sums`.

    Args:
      terms: a non-empty sequence of arrays of one shape.
      axis: the axis to sum over (negative counts from the end).
    Returns:
      a tuple of the sums, one per term.
    """
    terms = tuple(terms)
    if not terms:
        raise ValueError("blocked_sums: `terms` must hold at least one array; got none")
    ndim = jnp.ndim(terms[0])
    if not -ndim <= axis < ndim:
        raise ValueError(f"blocked_sums: `axis` must lie in [-{ndim}, {ndim}) for terms of rank {ndim}; got {axis}")
    axis = axis % ndim
    if len(terms) == 1:  # see the docstring: a zero second operand
        return (_blocked_sum(terms[0], axis),)
    n = jnp.shape(terms[0])[axis]
    inner = _split(n) if n > _CPU_REDUCE_WINDOW else 1
    if inner == 1:
        return sums(terms, (axis,))
    shape = jnp.shape(terms[0])
    split = shape[:axis] + (n // inner, inner) + shape[axis + 1 :]
    partial = sums([t.reshape(split) for t in terms], (axis + 1,))
    return sums(jax.lax.optimization_barrier(partial), (axis,))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _blocked_sum(x, axis: int):
    """One term's blocked sum, with the zero operand. Its derivative is the plain sum: JAX's
    differentiation of a variadic reduction fails on the zero operand's symbolic-zero tangent."""
    return blocked_sums([x, jnp.zeros_like(x)], axis)[0]


@_blocked_sum.defjvp
def _blocked_sum_jvp(axis, primals, tangents):
    (x,), (dx,) = primals, tangents
    return _blocked_sum(x, axis), jnp.sum(dx, axis=axis)
