"""Attention masks for LM, seq2seq (UniLM) and permutation LM, and masked attention (post 6933).

"Transformer如戏，全靠Mask": one Transformer becomes a language model, a seq2seq model or a
permutation LM by the mask alone. Every mask here is boolean, ``True`` = the query may attend
to the key, with rows = queries and columns = keys, shaped to broadcast against attention
logits ``[B, H, Tq, Tk]``:

* :func:`padding_mask` ``[B, 1, 1, T]``: keys at positions ``< length``.
* :func:`causal_mask` ``[1, 1, T, T]``: query ``t`` sees keys ``s <= t`` (the LM mask).
* :func:`unilm_mask` ``[B, 1, T, T]``: the author's cumsum rule
  ``idx = cumsum(segment_ids)``, ``mask[i, j] = idx[j] <= idx[i]``: source (segment 0) is
  bidirectional within the source and sees no target; target (segment 1) sees the whole
  source and its own prefix.
* :func:`permutation_mask` ``[B, 1, T, T]``: XLNet's permutation LM; position ``i`` sees
  ``j`` iff ``j`` comes earlier in the factorisation order (``include_self`` adds ``j = i``).
* :func:`combine_masks`: logical AND with broadcasting, ``None`` ignored.

:func:`masked_attention` takes ``q [B, Tq, H, D]``, ``k, v [B, Tk, H, D]`` (the layout of
``jax.nn.dot_product_attention``) and such a mask. Masked logits get a large negative (never
``-inf``), and a query row with no allowed key returns exact zeros — in values and gradients,
never NaN — in every implementation. Implementations: ``"reference"`` and ``"xla"`` (dense, any
backend: :data:`IMPLEMENTATIONS`), ``"cudnn"`` (GPU only, float16/bfloat16) and ``"pallas"``
(:func:`kernels.flash_attention.flash_attention`, which takes structured masks — causal, prefix
LM, key lengths — and skips masked blocks; through this function only without a mask). All four
are :data:`ALL_IMPLEMENTATIONS`.

Each builder has a ``*_reference`` twin written as Python loops over numpy arrays, and
:func:`masked_attention_reference` is the per-head textbook softmax over the allowed keys only;
the tests compare them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from kernels.checks import argument_error as _error, concrete as _concrete

# The dense-mask implementations that run on every backend (the tests and the CPU benchmark
# iterate over these). ALL_IMPLEMENTATIONS is what `masked_attention(impl=...)` accepts:
# "cudnn" needs a GPU, "pallas" takes no dense mask (see `masked_attention`).
IMPLEMENTATIONS = ("reference", "xla")
ALL_IMPLEMENTATIONS = ("reference", "xla", "cudnn", "pallas")

# --------------------------------------------------------------------------- #
# Argument checks
# --------------------------------------------------------------------------- #


def _check_int_array(fn, name, x, rank, what):
    shape = jnp.shape(x)
    if len(shape) != rank:
        raise _error(fn, name, f"{what} (rank {rank})", f"shape {tuple(shape)}")
    dtype = jnp.result_type(x)
    if not (jnp.issubdtype(dtype, jnp.integer) or dtype == jnp.bool_):
        raise _error(fn, name, "an integer array", f"dtype {dtype}")
    return shape


def _check_length(fn, name, t):
    if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)) or t < 1:
        raise _error(fn, name, "a positive Python int (a static length)", repr(t))
    return int(t)


# --------------------------------------------------------------------------- #
# Mask builders
# --------------------------------------------------------------------------- #


def padding_mask(lengths, T):
    """Keys at positions ``< lengths[b]`` are visible: ``mask[b, 0, 0, s] = s < lengths[b]``.

    Args:
      lengths: ``[B]`` integers in ``[0, T]`` (values checked when concrete; under jit only
        the shape and dtype are checked).
      T: static (Python int) sequence length.
    Returns:
      bool ``[B, 1, 1, T]``.
    """
    fn = "padding_mask"
    T = _check_length(fn, "T", T)
    _check_int_array(fn, "lengths", lengths, 1, "[B]")
    vals = _concrete(lengths)
    if vals is not None and vals.size and (vals.min() < 0 or vals.max() > T):
        raise _error(fn, "lengths", f"in [0, T] = [0, {T}]", f"values in [{vals.min()}, {vals.max()}]")
    lengths = jnp.asarray(lengths)
    return (jnp.arange(T)[None, :] < lengths[:, None])[:, None, None, :]


def padding_mask_reference(lengths, T):
    lengths = np.asarray(lengths)
    out = np.zeros((len(lengths), 1, 1, T), bool)
    for b in range(len(lengths)):
        for s in range(T):
            out[b, 0, 0, s] = s < lengths[b]
    return out


def causal_mask(T):
    """The LM mask: query ``t`` sees keys ``s <= t`` (lower triangular, diagonal included).

    Args:
      T: static (Python int) sequence length.
    Returns:
      bool ``[1, 1, T, T]``.
    """
    T = _check_length("causal_mask", "T", T)
    return jnp.tril(jnp.ones((T, T), bool))[None, None]


def causal_mask_reference(T):
    out = np.zeros((1, 1, T, T), bool)
    for t in range(T):
        for s in range(T):
            out[0, 0, t, s] = s <= t
    return out


def unilm_mask(segment_ids):
    """UniLM seq2seq mask by the author's cumsum rule (bert4keras ``UniLM_Mask``).

    ``idx = cumsum(segment_ids, axis=1)``; ``mask[b, 0, i, j] = idx[b, j] <= idx[b, i]``.
    With segment ids ``0…0 1…1`` (source then target) this is exactly: a source query sees
    every source key and no target key; a target query sees every source key and the target
    keys up to and including itself.

    Args:
      segment_ids: ``[B, T]`` of 0 (source) / 1 (target), non-decreasing along ``T``.
        Values are checked eagerly when concrete; under jit only the shape and dtype are
        checked. Padding is not this mask's business: pad with 1 (or any id keeping the rule)
        and AND with :func:`padding_mask`. (bert4keras pads segment ids with 0 after the
        target; that breaks "non-decreasing" and is rejected here.)
    Returns:
      bool ``[B, 1, T, T]``.
    """
    fn = "unilm_mask"
    _check_int_array(fn, "segment_ids", segment_ids, 2, "[B, T]")
    vals = _concrete(segment_ids)
    if vals is not None and vals.size:
        vals = vals.astype(np.int64)
        if not np.isin(vals, (0, 1)).all():
            raise _error(fn, "segment_ids", "0 (source) or 1 (target)", f"values {sorted(set(vals.ravel().tolist()))}")
        if (np.diff(vals, axis=1) < 0).any():
            bad = int(np.nonzero((np.diff(vals, axis=1) < 0).any(axis=1))[0][0])
            raise _error(fn, "segment_ids", "non-decreasing along T (source 0…0 then target 1…1)", f"row {bad} = {vals[bad].tolist()}")
    idx = jnp.cumsum(jnp.asarray(segment_ids, jnp.int32), axis=1)
    return (idx[:, None, :] <= idx[:, :, None])[:, None]


def unilm_mask_reference(segment_ids):
    """The rule as loops over ``idx = cumsum(segment_ids)`` (the tests also check the
    source/target description independently)."""
    seg = np.asarray(segment_ids).astype(np.int64)
    B, T = seg.shape
    out = np.zeros((B, 1, T, T), bool)
    for b in range(B):
        idx = np.cumsum(seg[b])
        for i in range(T):
            for j in range(T):
                out[b, 0, i, j] = idx[j] <= idx[i]
    return out


def permutation_mask(perm, *, include_self=True):
    """XLNet-style permutation LM mask.

    ``perm[b, k]`` is the position that comes ``k``-th in the factorisation order, and
    ``rank = perm⁻¹`` (``rank[perm[k]] = k``). Position ``i`` may attend to position ``j`` iff
    ``rank[j] < rank[i]``, or also ``j == i`` when ``include_self``. This is the causal mask
    with rows and columns permuted; ``perm = arange(T)`` with ``include_self=True`` gives
    :func:`causal_mask`.

    Args:
      perm: ``[B, T]``, each row a permutation of ``0..T-1`` (checked when concrete; under
        jit only the shape and dtype are checked).
      include_self: ``True`` (default, XLNet's content stream and the author's "permuted
        lower-triangular" mask) or ``False`` (XLNet's query stream: a position must not see
        its own content; the first position in the order then has no visible key, and
        :func:`masked_attention` returns zeros there).
    Returns:
      bool ``[B, 1, T, T]``.
    """
    fn = "permutation_mask"
    shape = _check_int_array(fn, "perm", perm, 2, "[B, T]")
    vals = _concrete(perm)
    if vals is not None and vals.size:
        want = np.arange(shape[1])
        for b in range(shape[0]):
            if not np.array_equal(np.sort(vals[b]), want):
                raise _error(fn, "perm", f"a permutation of 0..{shape[1] - 1} in every row", f"row {b} = {vals[b].tolist()}")
    rank = jnp.argsort(jnp.asarray(perm), axis=1)  # inverse permutation
    ri, rj = rank[:, :, None], rank[:, None, :]
    mask = (rj <= ri) if include_self else (rj < ri)
    return mask[:, None]


def permutation_mask_reference(perm, *, include_self=True):
    perm = np.asarray(perm)
    B, T = perm.shape
    out = np.zeros((B, 1, T, T), bool)
    for b in range(B):
        rank = [0] * T
        for k in range(T):
            rank[perm[b, k]] = k
        for i in range(T):
            for j in range(T):
                out[b, 0, i, j] = rank[j] < rank[i] or (include_self and i == j)
    return out


def combine_masks(*masks):
    """Logical AND of boolean masks with broadcasting; ``None`` entries are ignored.

    Returns:
      the broadcast AND, or ``None`` when every entry is ``None`` (or none is given).
    """
    fn = "combine_masks"
    present = []
    for n, m in enumerate(masks):
        if m is None:
            continue
        if jnp.result_type(m) != jnp.bool_:
            raise _error(fn, f"masks[{n}]", "a boolean array", f"dtype {jnp.result_type(m)}")
        present.append((n, m))
    if not present:
        return None
    try:
        np.broadcast_shapes(*(jnp.shape(m) for _, m in present))
    except ValueError:
        shapes = ", ".join(f"masks[{n}] {tuple(jnp.shape(m))}" for n, m in present)
        raise _error(fn, "masks", "broadcast-compatible", shapes) from None
    out = present[0][1]
    for _, m in present[1:]:
        out = jnp.logical_and(out, m)
    return jnp.asarray(out)


def combine_masks_reference(*masks):
    present = [np.asarray(m) for m in masks if m is not None]
    if not present:
        return None
    out = np.ones(np.broadcast_shapes(*(m.shape for m in present)), bool)
    for m in present:
        out = out & m
    return out


# --------------------------------------------------------------------------- #
# Masked attention
# --------------------------------------------------------------------------- #


def _check_attention(fn, q, k, v, mask):
    """Returns ``(B, Tq, Tk, H, D)`` and the mask as a rank-4 bool array (or ``None``)."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        shape = jnp.shape(x)
        if len(shape) != 4:
            raise _error(fn, name, "[B, T, H, D] (rank 4)", f"shape {tuple(shape)}")
        if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
            raise _error(fn, name, "floating point", f"dtype {jnp.result_type(x)}")
    (B, Tq, H, D), ks, vs = jnp.shape(q), jnp.shape(k), jnp.shape(v)
    for axis, what, want in ((0, "batch", B), (2, "heads", H), (3, "head dim", D)):
        if ks[axis] != want:
            raise _error(fn, "k", f"{what} (axis {axis}) = {want} as in q {tuple(jnp.shape(q))}", f"shape {tuple(ks)}")
    if tuple(vs) != tuple(ks):
        raise _error(fn, "v", f"the shape of k {tuple(ks)}", f"shape {tuple(vs)}")
    Tk = ks[1]
    if mask is not None:
        mshape = tuple(jnp.shape(mask))
        if jnp.result_type(mask) != jnp.bool_:
            raise _error(fn, "mask", "a boolean array (True = may attend)", f"dtype {jnp.result_type(mask)}")
        target = (B, H, Tq, Tk)
        ok = len(mshape) <= 4
        if ok:
            try:
                ok = np.broadcast_shapes(mshape, target) == target
            except ValueError:
                ok = False
        if not ok:
            raise _error(fn, "mask", f"broadcastable to [B, H, Tq, Tk] = {target}", f"shape {mshape}")
        mask = jnp.reshape(jnp.asarray(mask), (1,) * (4 - len(mshape)) + mshape)
    return (B, Tq, Tk, H, D), mask


def _resolve_scale(scale, D):
    return 1.0 / math.sqrt(D) if scale is None else scale


def _zero_empty_rows(out, mask, dims):
    """``out [B, Tq, H, Dv]`` with rows whose mask ``[.., .., Tq, Tk]`` has no True set to 0."""
    if mask is None:
        return out
    B, Tq, Tk, H, _ = dims
    row_ok = jnp.any(jnp.broadcast_to(mask, (B, H, Tq, Tk)), axis=-1)  # [B, H, Tq]
    return jnp.where(jnp.transpose(row_ok, (0, 2, 1))[..., None], out, jnp.zeros((), out.dtype))


def masked_attention(q, k, v, *, mask=None, scale=None, impl="xla"):
    """``softmax(scale·q·kᵀ, masked) · v`` per head, with exact zeros for fully masked rows.

    Args:
      q: ``[B, Tq, H, D]``.
      k, v: ``[B, Tk, H, D]`` (same heads and head dim as ``q``; no GQA).
      mask: optional bool, broadcastable to ``[B, H, Tq, Tk]`` (``True`` = may attend), e.g.
        from :func:`padding_mask`, :func:`causal_mask`, :func:`unilm_mask`,
        :func:`permutation_mask` or :func:`combine_masks` of them.
      scale: logit scale, default ``1/sqrt(D)``; ``scale=1.0`` is the author's unscaled 2018
        attention layer.
      impl: one of :data:`ALL_IMPLEMENTATIONS`:

        * ``"xla"`` (default; ``jax.nn.dot_product_attention(..., implementation="xla")``,
          logits and softmax in float32 there);
        * ``"reference"`` (einsum in float32, masked logits filled with
          ``finfo(float32).min / 2``, softmax);
        * ``"cudnn"``: ``jax.nn.dot_product_attention(..., implementation="cudnn")``, the cuDNN
          fused kernel. Needs a GPU backend and float16 / bfloat16 inputs (checked eagerly:
          a clear ValueError instead of a failure inside XLA);
        * ``"pallas"``: :func:`kernels.flash_attention.flash_attention`. That kernel takes
          *structured* masks (``causal``, ``prefix_lengths``, ``key_lengths``) and skips masked
          blocks; it cannot take a dense ``mask``, so here only ``mask=None`` is accepted
          (otherwise a ValueError pointing to ``flash_attention``). Interpret mode off GPU.

        :data:`IMPLEMENTATIONS` are the two dense ones that run on every backend.
    Returns:
      ``[B, Tq, H, D]`` in ``q``'s dtype. A query row with no allowed key is exactly zero
      (and so is its gradient) in every implementation; no NaN ever appears.
    """
    fn = "masked_attention"
    if impl not in ALL_IMPLEMENTATIONS:
        raise _error(fn, "impl", f"one of {ALL_IMPLEMENTATIONS}", repr(impl))
    backend = jax.default_backend()
    if impl == "cudnn" and backend != "gpu":
        usable = tuple(i for i in ALL_IMPLEMENTATIONS if i != "cudnn")
        raise _error(fn, "impl", f"one of {usable} on the {backend!r} backend (cuDNN needs a GPU)", repr(impl))
    dims, mask = _check_attention(fn, q, k, v, mask)
    scale = _resolve_scale(scale, dims[-1])
    if impl == "pallas":
        if mask is not None:
            raise _error(fn, "mask", "None for impl='pallas' (the Pallas kernel takes structured masks only: "
                         "call kernels.flash_attention.flash_attention(q, k, v, causal=..., prefix_lengths=..., "
                         "key_lengths=...) directly)", f"a dense mask of shape {tuple(jnp.shape(mask))}")
        from kernels.flash_attention import flash_attention  # a cycle at import time otherwise

        return flash_attention(q, k, v, scale=scale)
    if impl == "xla":
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation="xla")
    elif impl == "cudnn":
        dtypes = {jnp.result_type(x) for x in (q, k, v)}
        if not dtypes <= {jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16)}:
            raise _error(fn, "q", "float16 or bfloat16 (as k and v) for impl='cudnn'",
                         f"dtypes {sorted(str(d) for d in dtypes)}")
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation="cudnn")
    else:
        f32 = jnp.float32
        logits = jnp.einsum("bqhd,bkhd->bhqk", q.astype(f32), k.astype(f32)) * scale
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(f32).min / 2)
        probs = jax.nn.softmax(logits, axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v.astype(f32)).astype(jnp.result_type(q))
    return _zero_empty_rows(out, mask, dims)


def masked_attention_reference(q, k, v, *, mask=None, scale=None):
    """Head by head: the textbook softmax over the *allowed* keys only, in float32.

    No large negative is involved: on each row the weights are ``exp(s − max over allowed)``
    on the allowed keys and exactly 0 elsewhere, divided by their sum; a row with no allowed
    key is 0. The mask must be concrete (this twin is for eager tests, not for jit); values
    are differentiable in ``q``, ``k``, ``v``.
    """
    fn = "masked_attention_reference"
    (B, Tq, Tk, H, D), _ = _check_attention(fn, q, k, v, mask)
    scale = _resolve_scale(scale, D)
    m = np.ones((B, H, Tq, Tk), bool)
    if mask is not None:
        m = m & np.asarray(mask)  # broadcasting; raises if traced (a concrete mask is required)
    f32, out_dtype = jnp.float32, jnp.result_type(q)
    q, k, v = (jnp.asarray(x).astype(f32) for x in (q, k, v))
    per_batch = []
    for b in range(B):
        per_head = []
        for h in range(H):
            allowed = m[b, h]  # [Tq, Tk], numpy
            has_key = allowed.any(axis=1, keepdims=True)  # [Tq, 1]
            s = (q[b, :, h] @ k[b, :, h].T) * scale  # [Tq, Tk]
            row_max = jnp.max(jnp.where(allowed, s, -jnp.inf), axis=1, keepdims=True)
            row_max = jnp.where(has_key, row_max, 0.0)
            w = jnp.where(allowed, jnp.exp(jnp.where(allowed, s, row_max) - row_max), 0.0)
            p = w / jnp.where(has_key, jnp.sum(w, axis=1, keepdims=True), 1.0)
            per_head.append(p @ v[b, :, h])  # [Tq, D]; all-zero rows of p give zeros
        per_batch.append(jnp.stack(per_head, axis=1))  # [Tq, H, D]
    return jnp.stack(per_batch).astype(out_dtype)
