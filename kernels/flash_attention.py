"""Flash attention in Pallas (GPU, Triton style) with *structured* masks and block skipping.

:func:`flash_attention` computes ``softmax(scale·q·kᵀ, masked) · v`` per head with the online
softmax of FlashAttention: one program per (query block, batch, head) keeps a running max, a
running sum and a float32 accumulator while it loops over key blocks. The mask is never
materialised; it is given by three structured arguments, ANDed together (``True`` = query
``i`` may attend key ``j``):

* ``causal``: ``j <= i`` (needs ``Tq == Tk``);
* ``prefix_lengths [B]`` (UniLM / prefix LM): ``j < prefix_lengths[b]`` OR ``j <= i``, i.e.
  bidirectional inside the prefix and causal after it. This is :func:`kernels.attention.unilm_mask`
  with segment ids ``0`` before the prefix length and ``1`` from it on. It implies causality
  for the rest, so ``causal`` is ignored when it is given (needs ``Tq == Tk``);
* ``key_lengths [B]``: ``j < key_lengths[b]`` (padding).

Block skipping. Every allowed region starts at key 0, so the key blocks a query block needs
are exactly ``[0, n)`` with ``n = ceil(end / block_k)``, ``end = min(key_length,
max(prefix_length, last query of the block + 1))`` under a causal / prefix mask and
``end = key_length`` otherwise (:func:`_key_block_end`). The forward and the ``dq`` kernel
loop over these ``n`` blocks only (``lax.fori_loop`` with a traced upper bound computed in the
kernel from the per-example lengths); the ``dk, dv`` kernel loops over query blocks
``[first, nq)`` only (:func:`_query_block_start`): blocks above the diagonal, beyond the prefix
or past the key length are never read. Work is proportional to the unmasked area (up to block
granularity). :func:`key_block_bounds` and :func:`query_block_bounds` return these counts, the
tests check them against a brute-force count of blocks with at least one allowed pair.

Backward: a Pallas kernel too (``jax.custom_vjp``): ``delta = Σ o·do`` in XLA, then one kernel
for ``dq`` (loop over key blocks, as the forward) and one for ``dk, dv`` (loop over query
blocks), both recomputing the probabilities from the saved logsumexp and skipping the same
blocks.

Fully masked query rows (only possible with ``key_lengths[b] = 0``) give exact zeros, in values
and gradients. Inputs whose lengths are not multiples of the blocks are zero-padded inside and
the padding is masked (padded keys) or dropped (padded queries); the head dim is zero-padded
to a power of two (at least 16, Triton's minimum for ``tl.dot``). float32 and bfloat16 inputs,
float32 accumulation.

``interpret=None`` runs the kernel natively on a GPU backend and in Pallas interpret mode
elsewhere (slow, for tests on CPU). :func:`flash_attention_reference` is the dense twin: the
boolean mask from the builders of :mod:`kernels.attention` and
:func:`kernels.attention.masked_attention_reference`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from kernels.attention import (
    _check_attention,
    _check_int_array,
    _resolve_scale,
    causal_mask,
    combine_masks,
    masked_attention_reference,
    padding_mask,
    unilm_mask,
)
from kernels.checks import argument_error as _error, concrete as _concrete

try:  # the Triton compiler parameters; absent from some jax builds
    from jax.experimental.pallas import triton as _plgpu
except ImportError:  # pragma: no cover
    _plgpu = None

__all__ = ["flash_attention", "flash_attention_reference", "flash_attention_mask", "key_block_bounds",
           "query_block_bounds"]

# A finite "minus infinity" for masked logits: the online-softmax max never becomes -inf, so
# exp(m_old - m_new) is never NaN. Masked probabilities are set to 0 explicitly anyway.
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
_MIN_BLOCK = 16  # Triton's tl.dot needs every dimension >= 16


class _Config(NamedTuple):
    """Static (hashable) kernel configuration."""

    scale: float
    causal: bool  # causal or prefix LM (the prefix lengths are 0 for plain causal)
    block_q: int
    block_k: int
    tq: int  # real (unpadded) query length
    interpret: bool


# --------------------------------------------------------------------------- #
# The structured mask, in the kernels and for the bounds
# --------------------------------------------------------------------------- #


def _allowed(rows, cols, prefix, klen, causal):
    """bool ``[len(rows), len(cols)]``: ``j < klen`` and, if causal, ``j < prefix or j <= i``."""
    ok = (cols < klen)[None, :]
    if causal:
        ok = ok & ((cols[None, :] <= rows[:, None]) | (cols < prefix)[None, :])
    return ok


def _cdiv(x, d):
    return lax.div(x + (d - 1), d)  # x >= 0; `//` on traced int32 is not lowered by Triton


def _key_block_end(qb, prefix, klen, cfg: _Config):
    """Key blocks ``[0, end)`` hold every allowed key of query block ``qb`` (and each of them
    at least one allowed pair): keys ``< klen`` and, if causal, ``< max(prefix, last row + 1)``."""
    end = klen
    if cfg.causal:
        row_end = jnp.minimum((qb + 1) * cfg.block_q, cfg.tq)  # last real query + 1
        end = jnp.minimum(end, jnp.maximum(row_end, prefix))
    return _cdiv(jnp.maximum(end, 0), cfg.block_k)


def _query_block_start(kb, prefix, klen, num_q_blocks, cfg: _Config):
    """Query blocks ``[start, num_q_blocks)`` are the ones that attend some key of key block
    ``kb`` (``num_q_blocks`` when the block is past the key length)."""
    first_key = kb * cfg.block_k
    if cfg.causal:  # keys inside the prefix are seen by every query, later ones from the diagonal
        start = lax.div(jnp.where(first_key < prefix, 0, first_key), cfg.block_q)
    else:
        start = jnp.zeros_like(first_key)
    return jnp.where(first_key < klen, start, num_q_blocks)


# --------------------------------------------------------------------------- #
# Kernels
# --------------------------------------------------------------------------- #


def _dot(a, b):
    return jnp.dot(a, b, preferred_element_type=jnp.float32)


def _dot_t(a, b):
    """``a · bᵀ`` in float32."""
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _dot_tn(a, b):
    """``aᵀ · b`` in float32."""
    return lax.dot_general(a, b, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def _load_kv(k_ref, v_ref, start, cols, klen, block):
    k = k_ref[pl.ds(start, block), :]
    v = v_ref[pl.ds(start, block), :]
    return _zero_past(k, cols, klen), _zero_past(v, cols, klen)


def _zero_past(x, cols, klen):
    """Keys / values past the key length are never weighted, but 0 · NaN = NaN: zero them."""
    return jnp.where((cols < klen)[:, None], x, jnp.zeros((), x.dtype))


def _forward_kernel(prefix_ref, klen_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, *, cfg: _Config):
    qb, b = pl.program_id(0), pl.program_id(1)
    prefix, klen = prefix_ref[b], klen_ref[b]
    bq, bk = cfg.block_q, cfg.block_k
    q = q_ref[...]  # [bq, D]
    rows = qb * bq + jnp.arange(bq)

    def body(kb, carry):
        acc, m_prev, l_prev = carry
        start = pl.multiple_of(kb * bk, bk)
        cols = start + jnp.arange(bk)
        k, v = _load_kv(k_ref, v_ref, start, cols, klen, bk)
        allowed = _allowed(rows, cols, prefix, klen, cfg.causal)
        s = jnp.where(allowed, _dot_t(q, k) * cfg.scale, _MASK_VALUE)
        m_next = jnp.maximum(m_prev, jnp.max(s, axis=1))
        p = jnp.where(allowed, jnp.exp(s - m_next[:, None]), 0.0)
        correction = jnp.exp(m_prev - m_next)
        l_next = correction * l_prev + jnp.sum(p, axis=1)
        acc = correction[:, None] * acc + _dot(p.astype(v.dtype), v)
        return acc, m_next, l_next

    init = (jnp.zeros((bq, q.shape[-1]), jnp.float32), jnp.full((bq,), _MASK_VALUE, jnp.float32),
            jnp.zeros((bq,), jnp.float32))
    upper = _key_block_end(qb, prefix, klen, cfg)
    acc, m, l = lax.fori_loop(0, upper, body, init)
    has_key = l > 0.0  # False only for rows without any allowed key: output 0
    o_ref[...] = (acc / jnp.where(has_key, l, 1.0)[:, None]).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(has_key, m + jnp.log(jnp.where(has_key, l, 1.0)), 0.0)


def _probs_and_ds(q, k, v, do, lse, delta, rows, cols, prefix, klen, cfg):
    """Recomputed probabilities ``p`` and ``ds = p·(do·vᵀ − delta)`` (without the scale)."""
    allowed = _allowed(rows, cols, prefix, klen, cfg.causal)
    s = _dot_t(q, k) * cfg.scale
    p = jnp.where(allowed, jnp.exp(jnp.where(allowed, s, 0.0) - lse[:, None]), 0.0)
    ds = p * (_dot_t(do, v) - delta[:, None])
    return p, ds


def _dq_kernel(prefix_ref, klen_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, *, cfg: _Config):
    qb, b = pl.program_id(0), pl.program_id(1)
    prefix, klen = prefix_ref[b], klen_ref[b]
    bq, bk = cfg.block_q, cfg.block_k
    q, do, lse, delta = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]
    rows = qb * bq + jnp.arange(bq)

    def body(kb, dq):
        start = pl.multiple_of(kb * bk, bk)
        cols = start + jnp.arange(bk)
        k, v = _load_kv(k_ref, v_ref, start, cols, klen, bk)
        _, ds = _probs_and_ds(q, k, v, do, lse, delta, rows, cols, prefix, klen, cfg)
        return dq + _dot(ds.astype(k.dtype), k)

    dq = lax.fori_loop(0, _key_block_end(qb, prefix, klen, cfg), body, jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = (dq * cfg.scale).astype(dq_ref.dtype)


def _dkv_kernel(prefix_ref, klen_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *,
                cfg: _Config, num_q_blocks: int):
    kb, b = pl.program_id(0), pl.program_id(1)
    prefix, klen = prefix_ref[b], klen_ref[b]
    bq, bk = cfg.block_q, cfg.block_k
    start_k = kb * bk
    cols = start_k + jnp.arange(bk)
    k, v = _zero_past(k_ref[...], cols, klen), _zero_past(v_ref[...], cols, klen)

    def body(qb, carry):
        dk, dv = carry
        start = pl.multiple_of(qb * bq, bq)
        rows = start + jnp.arange(bq)
        q = q_ref[pl.ds(start, bq), :]
        do = do_ref[pl.ds(start, bq), :]
        lse, delta = lse_ref[pl.ds(start, bq)], delta_ref[pl.ds(start, bq)]
        p, ds = _probs_and_ds(q, k, v, do, lse, delta, rows, cols, prefix, klen, cfg)
        dv = dv + _dot_tn(p.astype(do.dtype), do)
        dk = dk + _dot_tn(ds.astype(q.dtype), q)
        return dk, dv

    zeros = jnp.zeros(k.shape, jnp.float32)
    lower = _query_block_start(kb, prefix, klen, num_q_blocks, cfg)
    dk, dv = lax.fori_loop(lower, num_q_blocks, body, (zeros, zeros))
    dk_ref[...] = (dk * cfg.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


# --------------------------------------------------------------------------- #
# pallas_call wrappers (on padded arrays: T multiple of the blocks, D a power of two)
# --------------------------------------------------------------------------- #


def _compiler_params(head_dim):
    if _plgpu is None:
        return None
    return _plgpu.CompilerParams(num_warps=4 if head_dim <= 64 else 8, num_stages=2)


def _length_spec(n):
    return pl.BlockSpec((n,), lambda *_: (0,))


def _forward(q, k, v, prefix, klen, cfg: _Config):
    B, Tq, H, D = q.shape
    Tk, nb = k.shape[1], prefix.shape[0]
    bq = cfg.block_q
    o, lse = pl.pallas_call(
        functools.partial(_forward_kernel, cfg=cfg),
        grid=(Tq // bq, B, H),
        in_specs=[
            _length_spec(nb), _length_spec(nb),
            pl.BlockSpec((None, bq, None, D), lambda i, b, h: (b, i, h, 0)),
            pl.BlockSpec((None, Tk, None, D), lambda i, b, h: (b, 0, h, 0)),
            pl.BlockSpec((None, Tk, None, D), lambda i, b, h: (b, 0, h, 0)),
        ],
        out_specs=[
            pl.BlockSpec((None, bq, None, D), lambda i, b, h: (b, i, h, 0)),
            pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, i)),
        ],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((B, H, Tq), jnp.float32)],
        compiler_params=_compiler_params(D),
        interpret=cfg.interpret,
        name="flash_attention_forward",
    )(prefix, klen, q, k, v)
    return o, lse


def _backward(q, k, v, prefix, klen, o, lse, do, cfg: _Config):
    B, Tq, H, D = q.shape
    Tk, nb = k.shape[1], prefix.shape[0]
    bq, bk = cfg.block_q, cfg.block_k
    delta = jnp.einsum("bqhd,bqhd->bhq", o.astype(jnp.float32), do.astype(jnp.float32))
    do = do.astype(q.dtype)
    whole_q = pl.BlockSpec((None, Tq, None, D), lambda i, b, h: (b, 0, h, 0))
    whole_k = pl.BlockSpec((None, Tk, None, D), lambda i, b, h: (b, 0, h, 0))
    q_block = pl.BlockSpec((None, bq, None, D), lambda i, b, h: (b, i, h, 0))
    k_block = pl.BlockSpec((None, bk, None, D), lambda i, b, h: (b, i, h, 0))
    row_block = pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, i))
    whole_rows = pl.BlockSpec((None, None, Tq), lambda i, b, h: (b, h, 0))
    lengths = [_length_spec(nb), _length_spec(nb)]

    dq = pl.pallas_call(
        functools.partial(_dq_kernel, cfg=cfg),
        grid=(Tq // bq, B, H),
        in_specs=lengths + [q_block, whole_k, whole_k, q_block, row_block, row_block],
        out_specs=q_block,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=_compiler_params(D),
        interpret=cfg.interpret,
        name="flash_attention_dq",
    )(prefix, klen, q, k, v, do, lse, delta)
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, cfg=cfg, num_q_blocks=Tq // bq),
        grid=(Tk // bk, B, H),
        in_specs=lengths + [whole_q, k_block, k_block, whole_q, whole_rows, whole_rows],
        out_specs=[k_block, k_block],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=_compiler_params(D),
        interpret=cfg.interpret,
        name="flash_attention_dkv",
    )(prefix, klen, q, k, v, do, lse, delta)
    return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _flash(q, k, v, prefix, klen, cfg):
    return _forward(q, k, v, prefix, klen, cfg)[0]


def _flash_fwd(q, k, v, prefix, klen, cfg):
    o, lse = _forward(q, k, v, prefix, klen, cfg)
    return o, (q, k, v, prefix, klen, o, lse)


def _flash_bwd(cfg, res, do):
    q, k, v, prefix, klen, o, lse = res
    dq, dk, dv = _backward(q, k, v, prefix, klen, o, lse, do, cfg)
    return dq, dk, dv, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


# --------------------------------------------------------------------------- #
# Public API
# --------------------------------------------------------------------------- #


def _check_block(fn, name, block):
    if isinstance(block, (bool, np.bool_)) or not isinstance(block, (int, np.integer)) or block < 1 \
            or block & (block - 1):
        raise _error(fn, name, "a positive power of two (Python int)", repr(block))
    return int(block)


def _effective_block(block, T):
    """``block`` clamped to the (power-of-two rounded) length, but at least 16 (Triton)."""
    return min(block, max(_MIN_BLOCK, pl.next_power_of_2(T)))


def _check_lengths(fn, name, x, B, Tk):
    if x is None:
        return None
    shape = _check_int_array(fn, name, x, 1, f"[B] = [{B}]")
    if shape[0] != B:
        raise _error(fn, name, f"[B] = [{B}] (the batch of q)", f"shape {tuple(shape)}")
    vals = _concrete(x)
    if vals is not None and vals.size and (vals.min() < 0 or vals.max() > Tk):
        raise _error(fn, name, f"in [0, Tk] = [0, {Tk}]", f"values in [{vals.min()}, {vals.max()}]")
    return jnp.asarray(x).astype(jnp.int32)


def _check_structure(fn, B, Tq, Tk, causal, prefix_lengths, key_lengths):
    """Checked ``(causal, prefix [B] int32, key lengths [B] int32)``; ``causal`` is True with
    a prefix, the prefix 0 for plain causal, the key lengths ``Tk`` when not given."""
    if not isinstance(causal, (bool, np.bool_)):
        raise _error(fn, "causal", "a Python bool", repr(causal))
    prefix = _check_lengths(fn, "prefix_lengths", prefix_lengths, B, Tk)
    klen = _check_lengths(fn, "key_lengths", key_lengths, B, Tk)
    causal = bool(causal) or prefix is not None
    if causal and Tq != Tk:
        what = "prefix_lengths" if prefix is not None else "causal"
        raise _error(fn, what, "used with Tq == Tk (a causal / prefix-LM mask is square)",
                     f"Tq = {Tq}, Tk = {Tk}")
    prefix = jnp.zeros((B,), jnp.int32) if prefix is None else prefix
    klen = jnp.full((B,), Tk, jnp.int32) if klen is None else jnp.minimum(jnp.maximum(klen, 0), Tk)
    return causal, prefix, klen


def _pad_axis(x, axis, size):
    if x.shape[axis] == size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, widths)


def _pad_batch(x):
    """Lengths padded to a power-of-two size (Triton block shapes)."""
    return _pad_axis(x, 0, pl.next_power_of_2(x.shape[0]))


def flash_attention(q, k, v, *, causal=False, prefix_lengths=None, key_lengths=None, scale=None,
                    block_q=64, block_k=64, interpret=None):
    """Pallas flash attention with a structured mask; fully masked key blocks are skipped.

    Args:
      q: ``[B, Tq, H, D]`` float (float32 or bfloat16; accumulation in float32).
      k, v: ``[B, Tk, H, D]``, same dtype family, heads and head dim as ``q``.
      causal: query ``i`` sees keys ``j <= i`` (requires ``Tq == Tk``).
      prefix_lengths: optional ``[B]`` integers in ``[0, Tk]``: the prefix-LM / UniLM mask
        ``j < prefix_lengths[b] or j <= i`` (bidirectional prefix, causal rest; equal to
        :func:`kernels.attention.unilm_mask` with segment ids 0 before the prefix length and 1
        after). It implies causality after the prefix, so ``causal`` is ignored when given
        (requires ``Tq == Tk``).
      key_lengths: optional ``[B]`` integers in ``[0, Tk]``: keys ``j < key_lengths[b]`` only
        (padding). ``0`` gives all-zero outputs for that example.
      scale: logit scale, default ``1/sqrt(D)``.
      block_q, block_k: query / key block sizes, positive powers of two (clamped to the
        padded sequence length, but not below 16).
      interpret: ``None`` = Pallas interpret mode unless the default backend is a GPU.

    Length values are checked when concrete; under ``jit`` only shapes and dtypes are checked
    (out-of-range traced lengths are clamped to ``[0, Tk]``).

    Returns:
      ``[B, Tq, H, D]`` in ``q``'s dtype; rows with no allowed key are exactly 0. Differentiable
      in ``q, k, v`` (``jax.custom_vjp`` with Pallas backward kernels that skip the same blocks).
    """
    fn = "flash_attention"
    (B, Tq, Tk, H, D), _ = _check_attention(fn, q, k, v, None)
    if jnp.result_type(k) != jnp.result_type(q) or jnp.result_type(v) != jnp.result_type(q):
        raise _error(fn, "k", f"the dtype of q ({jnp.result_type(q)}), as v",
                     f"k {jnp.result_type(k)}, v {jnp.result_type(v)}")
    block_q = _check_block(fn, "block_q", block_q)
    block_k = _check_block(fn, "block_k", block_k)
    causal, prefix, klen = _check_structure(fn, B, Tq, Tk, causal, prefix_lengths, key_lengths)
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    bq, bk = _effective_block(block_q, Tq), _effective_block(block_k, Tk)
    cfg = _Config(scale=float(_resolve_scale(scale, D)), causal=causal, block_q=bq, block_k=bk, tq=Tq,
                  interpret=bool(interpret))
    Dp = max(_MIN_BLOCK, pl.next_power_of_2(D))
    tq_pad, tk_pad = pl.cdiv(Tq, bq) * bq, pl.cdiv(Tk, bk) * bk
    q, k, v = (jnp.asarray(x) for x in (q, k, v))
    qp = _pad_axis(_pad_axis(q, 1, tq_pad), 3, Dp)
    kp = _pad_axis(_pad_axis(k, 1, tk_pad), 3, Dp)
    vp = _pad_axis(_pad_axis(v, 1, tk_pad), 3, Dp)
    out = _flash(qp, kp, vp, _pad_batch(prefix), _pad_batch(klen), cfg)
    return out[:, :Tq, :, :D]


def _bounds_config(fn, Tq, Tk, batch, causal, prefix_lengths, key_lengths, block_q, block_k):
    block_q = _check_block(fn, "block_q", block_q)
    block_k = _check_block(fn, "block_k", block_k)
    for x in (prefix_lengths, key_lengths):
        if x is not None and jnp.ndim(x) == 1:
            batch = int(jnp.shape(x)[0])
    causal, prefix, klen = _check_structure(fn, batch, Tq, Tk, causal, prefix_lengths, key_lengths)
    bq, bk = _effective_block(block_q, Tq), _effective_block(block_k, Tk)
    cfg = _Config(scale=1.0, causal=causal, block_q=bq, block_k=bk, tq=Tq, interpret=True)
    return cfg, prefix, klen


def key_block_bounds(Tq, Tk, *, batch=1, causal=False, prefix_lengths=None, key_lengths=None,
                     block_q=64, block_k=64):
    """Number of key blocks the forward (and ``dq``) kernel visits, per (example, query block).

    The same function the kernel evaluates; returns int numpy ``[B, ceil(Tq / block_q)]``
    (``B`` from the lengths when given, else ``batch``) for the *effective* block sizes (see
    :func:`flash_attention`). Key block ``kb`` is visited iff ``kb < bound``.
    """
    cfg, prefix, klen = _bounds_config("key_block_bounds", Tq, Tk, batch, causal, prefix_lengths,
                                       key_lengths, block_q, block_k)
    qb = jnp.arange(pl.cdiv(Tq, cfg.block_q))
    per = jax.vmap(lambda p, kl: jnp.broadcast_to(_key_block_end(qb, p, kl, cfg), qb.shape))(prefix, klen)
    return np.asarray(per)


def query_block_bounds(Tq, Tk, *, batch=1, causal=False, prefix_lengths=None, key_lengths=None,
                       block_q=64, block_k=64):
    """Number of query blocks the ``dk, dv`` kernel visits, per (example, key block): int numpy
    ``[B, ceil(Tk / block_k)]`` (it visits query blocks ``[nq - count, nq)``)."""
    cfg, prefix, klen = _bounds_config("query_block_bounds", Tq, Tk, batch, causal, prefix_lengths,
                                       key_lengths, block_q, block_k)
    nq = pl.cdiv(Tq, cfg.block_q)
    kb = jnp.arange(pl.cdiv(Tk, cfg.block_k))
    per = jax.vmap(lambda p, kl: nq - _query_block_start(kb, p, kl, nq, cfg))(prefix, klen)
    return np.asarray(per)


def flash_attention_mask(Tq, Tk, *, batch=1, causal=False, prefix_lengths=None, key_lengths=None):
    """The dense boolean mask ``[B or 1, 1, Tq, Tk]`` of the structured arguments, built with
    :func:`causal_mask`, :func:`unilm_mask`, :func:`padding_mask` and :func:`combine_masks`
    (``None`` without any mask)."""
    fn = "flash_attention_mask"
    for x in (prefix_lengths, key_lengths):
        if x is not None and jnp.ndim(x) == 1:
            batch = int(jnp.shape(x)[0])
    causal, _, _ = _check_structure(fn, batch, Tq, Tk, causal, prefix_lengths, key_lengths)
    parts = []
    if prefix_lengths is not None:
        seg = (jnp.arange(Tk)[None, :] >= jnp.asarray(prefix_lengths)[:, None]).astype(jnp.int32)
        parts.append(unilm_mask(seg))
    elif causal:
        parts.append(causal_mask(Tq))
    if key_lengths is not None:
        parts.append(padding_mask(key_lengths, Tk))
    return combine_masks(*parts)


def flash_attention_reference(q, k, v, *, causal=False, prefix_lengths=None, key_lengths=None, scale=None):
    """Dense twin of :func:`flash_attention`: :func:`flash_attention_mask` and
    :func:`kernels.attention.masked_attention_reference` (eager, concrete lengths)."""
    B, Tq = jnp.shape(q)[:2]
    mask = flash_attention_mask(Tq, jnp.shape(k)[1], batch=B, causal=causal, prefix_lengths=prefix_lengths,
                                key_lengths=key_lengths)
    return masked_attention_reference(q, k, v, mask=mask, scale=scale)
