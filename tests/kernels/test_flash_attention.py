"""kernels/flash_attention.py in Pallas interpret mode on CPU: values and gradients against the
dense twin (the mask builders + the per-head textbook reference) for every structured mask,
the prefix-LM mask against unilm_mask, block skipping (visited blocks against a brute-force
count, NaN in never-needed keys), empty rows, jit, errors; and masked_attention's
"cudnn" / "pallas" implementations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import attention as A
from kernels import flash_attention as F

B, H, D = 3, 2, 8
BLOCKS = dict(block_q=8, block_k=16)  # unequal blocks; T = 33 is a multiple of neither

# Lengths are jit arguments: one compilation per (shapes, mask structure, dtype).
flash = jax.jit(F.flash_attention, static_argnames=("causal", "scale", "block_q", "block_k", "interpret"))


def qkv(rng, tq, tk, dtype=np.float32, b=B):
    return tuple(jnp.asarray(rng.normal(size=(b, t, H, D)), dtype) for t in (tq, tk, tk))


def lengths(rng, t, b=B):
    """``[0, t, random]`` (then more random ones): the empty and the full case always in."""
    out = rng.integers(1, t, size=b)
    out[:2] = (0, t)
    return out.astype(np.int32)


def check_values_and_grads(rng, q, k, v, kw, atol, blocks=BLOCKS, ref_kv=None):
    """Kernel values and gradients against the reference's (on ``q, *ref_kv`` if given)."""
    ref_kv = (k, v) if ref_kv is None else ref_kv
    got = flash(q, k, v, **kw, **blocks)
    want = F.flash_attention_reference(q, *ref_kv, **kw)
    assert got.shape == q.shape and got.dtype == q.dtype
    f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
    assert np.isfinite(f32(got)).all()
    np.testing.assert_allclose(f32(got), f32(want), atol=atol)

    probe = jnp.asarray(rng.normal(size=q.shape), q.dtype)
    loss = lambda *a: jnp.sum((flash(*a, **kw, **blocks) * probe).astype(jnp.float32))  # noqa: E731
    ref_loss = lambda *a: jnp.sum((F.flash_attention_reference(*a, **kw) * probe).astype(jnp.float32))  # noqa: E731
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
    ref = jax.grad(ref_loss, argnums=(0, 1, 2))(q, *ref_kv)
    for name, g, r in zip("qkv", grads, ref):
        assert g.dtype == q.dtype, name
        assert np.isfinite(f32(g)).all(), name
        np.testing.assert_allclose(f32(g), f32(r), atol=atol, err_msg=f"d{name}")
    return got, grads


CASES = {  # name: (Tq, Tk, kwargs builder)
    "none": (33, 33, lambda rng: {}),
    "none-cross": (5, 33, lambda rng: {}),
    "causal": (33, 33, lambda rng: {"causal": True}),
    "prefix": (33, 33, lambda rng: {"prefix_lengths": lengths(rng, 33)}),
    "keys-cross": (5, 33, lambda rng: {"key_lengths": lengths(rng, 33)}),
    "causal+keys": (33, 33, lambda rng: {"causal": True, "key_lengths": lengths(rng, 33)}),
    "prefix+keys": (33, 33, lambda rng: {"prefix_lengths": lengths(rng, 33),
                                         "key_lengths": np.roll(lengths(rng, 33), 1)}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_values_and_gradients_match_reference_float32(rng, case):
    tq, tk, make = CASES[case]
    check_values_and_grads(rng, *qkv(rng, tq, tk), make(rng), atol=1e-5)


@pytest.mark.parametrize("case", ["prefix+keys", "keys-cross"])
def test_values_and_gradients_match_reference_bfloat16(rng, case):
    tq, tk, make = CASES[case]
    check_values_and_grads(rng, *qkv(rng, tq, tk, jnp.bfloat16), make(rng), atol=2e-2)


def test_other_blocks_scale_and_default_blocks(rng):
    q, k, v = qkv(rng, 33, 33)
    kw = {"prefix_lengths": lengths(rng, 33), "scale": 0.5}
    check_values_and_grads(rng, q, k, v, kw, atol=1e-5, blocks=dict(block_q=16, block_k=8))
    np.testing.assert_allclose(F.flash_attention(q, k, v, causal=True),  # defaults: blocks clamped to 64
                               F.flash_attention_reference(q, k, v, causal=True), atol=1e-5)


def test_prefix_mask_is_unilm_mask(rng):
    T = 12
    prefix = np.array([0, T, 5, 1], np.int32)
    seg = (np.arange(T)[None, :] >= prefix[:, None]).astype(np.int32)
    got = np.asarray(F.flash_attention_mask(T, T, prefix_lengths=prefix))
    np.testing.assert_array_equal(got, A.unilm_mask(seg))
    np.testing.assert_array_equal(got, A.unilm_mask_reference(seg))
    i, j = np.indices((T, T))
    for b, p in enumerate(prefix):  # the definition in plain words
        np.testing.assert_array_equal(got[b, 0], (j < p) | (j <= i))
    # causal is implied by the prefix: the same mask with causal=True; prefix 0 is causal
    np.testing.assert_array_equal(F.flash_attention_mask(T, T, causal=True, prefix_lengths=prefix), got)
    np.testing.assert_array_equal(got[0, 0], np.asarray(A.causal_mask(T))[0, 0])
    assert F.flash_attention_mask(T, 7) is None


def brute_force_blocks(mask, B_, tq, tk, bq, bk):
    """``[B, nq, nk]``: does (query block, key block) hold at least one allowed pair?"""
    m = np.ones((B_, tq, tk), bool) if mask is None else np.broadcast_to(np.asarray(mask)[:, 0], (B_, tq, tk))
    nq, nk = -(-tq // bq), -(-tk // bk)
    out = np.zeros((B_, nq, nk), bool)
    for qb in range(nq):
        for kb in range(nk):
            out[:, qb, kb] = m[:, qb * bq:(qb + 1) * bq, kb * bk:(kb + 1) * bk].any(axis=(1, 2))
    return out


@pytest.mark.parametrize("bq,bk", [(8, 16), (16, 8), (16, 16)])
def test_visited_blocks_are_exactly_the_unmasked_ones(rng, bq, bk):
    b = 6
    for tq, tk, kw in [
        (33, 33, {}),
        (20, 47, {"key_lengths": lengths(rng, 47, b)}),
        (33, 33, {"causal": True}),
        (47, 47, {"prefix_lengths": lengths(rng, 47, b)}),
        (47, 47, {"causal": True, "key_lengths": lengths(rng, 47, b)}),
        (47, 47, {"prefix_lengths": lengths(rng, 47, b), "key_lengths": lengths(rng, 47, b)[::-1].copy()}),
    ]:
        need = brute_force_blocks(F.flash_attention_mask(tq, tk, batch=b, **kw), b, tq, tk, bq, bk)
        kb_bound = F.key_block_bounds(tq, tk, batch=b, block_q=bq, block_k=bk, **kw)  # [B, nq]
        qb_count = F.query_block_bounds(tq, tk, batch=b, block_q=bq, block_k=bk, **kw)  # [B, nk]
        nq, nk = need.shape[1:]
        visited_fwd = np.arange(nk)[None, None, :] < kb_bound[:, :, None]
        visited_dkv = np.arange(nq)[None, :, None] >= (nq - qb_count)[:, None, :]
        np.testing.assert_array_equal(visited_fwd, need, err_msg=str(kw))
        np.testing.assert_array_equal(visited_dkv, need, err_msg=str(kw))
    # the work follows the unmasked area: causal visits about half the blocks
    full = F.key_block_bounds(64, 64, block_q=16, block_k=16).sum()
    causal = F.key_block_bounds(64, 64, causal=True, block_q=16, block_k=16).sum()
    assert (full, causal) == (16, 10)


def test_keys_past_the_length_are_never_read(rng):
    """NaN in every key / value past each example's length (whole blocks and the tail of a
    partial one): outputs and gradients stay finite and equal those of clean inputs."""
    q, k, v = qkv(rng, 33, 33)
    kw = {"prefix_lengths": np.array([3, 30, 12], np.int32), "key_lengths": np.array([0, 9, 20], np.int32)}
    dead = np.arange(33)[None, :, None, None] >= kw["key_lengths"][:, None, None, None]
    k_nan, v_nan = (jnp.where(dead, jnp.nan, x) for x in (k, v))
    assert np.isnan(np.asarray(k_nan)).any()
    _, grads = check_values_and_grads(rng, q, k_nan, v_nan, kw, atol=1e-5, ref_kv=(k, v))
    for g in grads[1:]:
        assert (np.asarray(g)[np.broadcast_to(dead, g.shape)] == 0).all()


@pytest.mark.parametrize("name", ["causal", "prefix"])
def test_blocks_the_mask_never_needs_are_never_read(rng, name):
    """Causal and prefix-LM skipping, observed in the kernels themselves: NaN in one key block's
    keys and values leaves the output and dq of every query block that does not need it equal to
    the clean ones (a visited block would turn them NaN: 0 · NaN in p·v and ds·k); NaN in one
    query block leaves dk and dv of every key block that does not need it clean."""
    tq = tk = 33
    bq, bk = BLOCKS["block_q"], BLOCKS["block_k"]
    q, k, v = qkv(rng, tq, tk)
    kw = CASES[name][2](rng)
    need = brute_force_blocks(F.flash_attention_mask(tq, tk, batch=B, **kw), B, tq, tk, bq, bk)  # [B, nq, nk]
    probe = jnp.asarray(rng.normal(size=q.shape), q.dtype)
    loss = lambda *a: jnp.sum(flash(*a, **kw, **BLOCKS) * probe)  # noqa: E731
    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    clean_out, (clean_dq, clean_dk, clean_dv) = flash(q, k, v, **kw, **BLOCKS), grad(q, k, v)
    skipped = 0
    for kb in range(need.shape[2]):
        in_block = (np.arange(tk) // bk == kb)[None, :, None, None]
        k_nan, v_nan = (jnp.where(in_block, jnp.nan, x) for x in (k, v))
        out, (dq, _, _) = flash(q, k_nan, v_nan, **kw, **BLOCKS), grad(q, k_nan, v_nan)
        for b, qb in zip(*np.nonzero(~need[:, :, kb])):
            rows = slice(qb * bq, (qb + 1) * bq)
            np.testing.assert_array_equal(out[b, rows], clean_out[b, rows], err_msg=f"out b={b} qb={qb} kb={kb}")
            np.testing.assert_array_equal(dq[b, rows], clean_dq[b, rows], err_msg=f"dq b={b} qb={qb} kb={kb}")
            skipped += 1
    for qb in range(need.shape[1]):
        q_nan = jnp.where((np.arange(tq) // bq == qb)[None, :, None, None], jnp.nan, q)
        _, dk, dv = grad(q_nan, k, v)
        for b, kb in zip(*np.nonzero(~need[:, qb, :])):
            cols = slice(kb * bk, (kb + 1) * bk)
            np.testing.assert_array_equal(dk[b, cols], clean_dk[b, cols], err_msg=f"dk b={b} qb={qb} kb={kb}")
            np.testing.assert_array_equal(dv[b, cols], clean_dv[b, cols], err_msg=f"dv b={b} qb={qb} kb={kb}")
    assert skipped >= 3  # the mask leaves blocks to skip, so the test observes skipping


def test_fully_masked_rows_are_zero_in_values_and_gradients(rng):
    q, k, v = qkv(rng, 33, 33)
    kw = {"causal": True, "key_lengths": np.array([0, 33, 3], np.int32)}
    got, (dq, dk, dv) = check_values_and_grads(rng, q, k, v, kw, atol=1e-5)
    for x in (got, dq, dk, dv):
        assert (np.asarray(x)[0] == 0).all()
    assert (np.abs(np.asarray(got)[1:]).sum(-1) > 0).all()


def test_jit_matches_eager(rng):
    q, k, v = qkv(rng, 33, 33)
    kl = lengths(rng, 33)
    eager = F.flash_attention(q, k, v, causal=True, key_lengths=kl, **BLOCKS)
    np.testing.assert_allclose(flash(q, k, v, causal=True, key_lengths=kl, **BLOCKS), eager, atol=1e-6)
    plain_jit = jax.jit(F.flash_attention)(q, k, v)
    np.testing.assert_allclose(plain_jit, F.flash_attention_reference(q, k, v), atol=1e-5)


def test_bad_inputs_name_the_argument(rng):
    q, k, v = qkv(rng, 8, 8)
    kl = np.array([1, 2, 3], np.int32)
    cases = [
        (dict(q=q[0]), r"`q`.*rank 4"),
        (dict(k=k[:, :, :1], v=v[:, :, :1]), r"`k`.*heads"),
        (dict(k=k[..., :4], v=v[..., :4]), r"`k`.*head dim"),
        (dict(k=k[:2], v=v[:2]), r"`k`.*batch"),
        (dict(key_lengths=kl[:2]), r"`key_lengths`.*\[B\] = \[3\].*shape \(2,\)"),
        (dict(key_lengths=kl[None]), r"`key_lengths`.*rank 1"),
        (dict(prefix_lengths=kl.astype(np.float32)), r"`prefix_lengths`.*integer.*float32"),
        (dict(key_lengths=np.array([0, 9, 1])), r"`key_lengths`.*\[0, 8\].*\[0, 9\]"),
        (dict(prefix_lengths=np.array([-1, 2, 1])), r"`prefix_lengths`.*\[0, 8\]"),
        (dict(block_q=12), r"`block_q`.*power of two.*12"),
        (dict(block_k=0), r"`block_k`.*power of two.*0"),
        (dict(causal=True, k=k[:, :5], v=v[:, :5]), r"`causal`.*Tq == Tk.*Tq = 8, Tk = 5"),
        (dict(prefix_lengths=kl, k=k[:, :5], v=v[:, :5]), r"`prefix_lengths`.*Tq == Tk"),
    ]
    for over, pattern in cases:
        args = {"q": q, "k": k, "v": v, **over}
        with pytest.raises(ValueError, match=pattern):
            F.flash_attention(args.pop("q"), args.pop("k"), args.pop("v"), **args)


def test_masked_attention_cudnn_and_pallas(rng):
    q, k, v = qkv(rng, 8, 8)
    assert A.IMPLEMENTATIONS == ("reference", "xla")
    assert A.ALL_IMPLEMENTATIONS == ("reference", "xla", "cudnn", "pallas")
    if jax.default_backend() != "gpu":
        with pytest.raises(ValueError, match=r"`impl`.*'reference'.*'xla'.*'pallas'.*cuDNN needs a GPU.*got 'cudnn'"):
            A.masked_attention(q, k, v, impl="cudnn")
    with pytest.raises(ValueError, match=r"`mask`.*None for impl='pallas'.*flash_attention.*got a dense mask"):
        A.masked_attention(q, k, v, mask=A.causal_mask(8), impl="pallas")
    with pytest.raises(ValueError, match=r"`impl`.*'cudnn', 'pallas'\); got 'triton'"):
        A.masked_attention(q, k, v, impl="triton")
    np.testing.assert_allclose(A.masked_attention(q, k, v, impl="pallas", scale=0.3),
                               A.masked_attention(q, k, v, impl="xla", scale=0.3), atol=1e-5)
