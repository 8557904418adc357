"""kernels/attention.py: every mask builder against its loop twin, the UniLM cumsum rule
against its plain-words description, causality by Jacobian, padding invariance, and the two
attention implementations against the per-head textbook reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import attention as A

B, T, H, D = 3, 7, 2, 4

# One jitted function per (impl, mask shape, dtype); validation runs at trace time.
attend = jax.jit(A.masked_attention, static_argnames=("impl", "scale"))


def random_lengths(rng, b=B, t=T):
    return rng.integers(0, t + 1, size=b).astype(np.int32)


def random_segments(rng, b=B, t=T):
    """Source of length ``s`` (0 allowed) then target: ``0…0 1…1``, plus the split points."""
    splits = rng.integers(0, t + 1, size=b)
    return (np.arange(t)[None, :] >= splits[:, None]).astype(np.int32), splits


def random_perms(rng, b=B, t=T):
    return np.stack([rng.permutation(t) for _ in range(b)]).astype(np.int32)


def qkv(rng, dtype=np.float32, b=B, tq=T, tk=T):
    q = rng.normal(size=(b, tq, H, D)).astype(np.float32)
    k = rng.normal(size=(b, tk, H, D)).astype(np.float32)
    v = rng.normal(size=(b, tk, H, D)).astype(np.float32)
    return tuple(jnp.asarray(x, dtype) for x in (q, k, v))


# --------------------------------------------------------------------------- #
# Mask builders
# --------------------------------------------------------------------------- #


def test_padding_mask_matches_reference_and_jits(rng):
    lengths = np.concatenate([random_lengths(rng), [0, T]]).astype(np.int32)
    want = A.padding_mask_reference(lengths, T)
    got = A.padding_mask(lengths, T)
    assert got.shape == (len(lengths), 1, 1, T) and got.dtype == jnp.bool_
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(jax.jit(A.padding_mask, static_argnums=1)(lengths, T), want)


def test_causal_mask_matches_reference():
    for t in (1, 2, T):
        got = A.causal_mask(t)
        assert got.shape == (1, 1, t, t)
        np.testing.assert_array_equal(got, A.causal_mask_reference(t))


def test_unilm_mask_matches_reference_and_jits(rng):
    seg, _ = random_segments(rng, b=6)
    want = A.unilm_mask_reference(seg)
    np.testing.assert_array_equal(A.unilm_mask(seg), want)
    np.testing.assert_array_equal(jax.jit(A.unilm_mask)(seg), want)  # under jit: shapes only


def test_unilm_cumsum_rule_is_the_source_target_description(rng):
    """Independent of the cumsum: source sees all source and no target; target sees all
    source and the target up to itself."""
    seg, splits = random_segments(rng, b=8)
    seg[0], splits[0] = 0, T  # all source
    seg[1], splits[1] = 1, 0  # all target: plain causal
    mask = np.asarray(A.unilm_mask(seg))[:, 0]
    for b, s in enumerate(splits):
        for i in range(T):
            for j in range(T):
                if i < s:  # source query
                    want = j < s
                else:  # target query
                    want = j < s or j <= i
                assert mask[b, i, j] == want, (b, s, i, j)
    np.testing.assert_array_equal(mask[1], np.asarray(A.causal_mask(T))[0, 0])


@pytest.mark.parametrize("include_self", [True, False])
def test_permutation_mask_matches_reference_and_jits(rng, include_self):
    perm = random_perms(rng, b=5)
    want = A.permutation_mask_reference(perm, include_self=include_self)
    np.testing.assert_array_equal(A.permutation_mask(perm, include_self=include_self), want)
    jitted = jax.jit(A.permutation_mask, static_argnames="include_self")
    np.testing.assert_array_equal(jitted(perm, include_self=include_self), want)


def test_permutation_mask_of_identity_is_causal_and_rows_count_predecessors(rng):
    ident = np.arange(T, dtype=np.int32)[None]
    np.testing.assert_array_equal(A.permutation_mask(ident), A.causal_mask(T))
    perm = random_perms(rng)
    m = np.asarray(A.permutation_mask(perm, include_self=False))[:, 0]
    for b in range(B):  # the k-th position in the order sees exactly k keys
        np.testing.assert_array_equal(m[b].sum(-1)[perm[b]], np.arange(T))


def test_combine_masks(rng):
    lengths = random_lengths(rng)
    seg, _ = random_segments(rng)
    parts = (A.padding_mask(lengths, T), None, A.unilm_mask(seg), A.causal_mask(T))
    got = A.combine_masks(*parts)
    assert got.shape == (B, 1, T, T)
    np.testing.assert_array_equal(got, A.combine_masks_reference(*parts))
    assert A.combine_masks() is None and A.combine_masks(None, None) is None


# --------------------------------------------------------------------------- #
# Attention
# --------------------------------------------------------------------------- #


def make_mask(kind, rng):
    if kind == "none":
        return None
    if kind == "causal":
        return A.causal_mask(T)
    if kind == "unilm":
        return A.unilm_mask(random_segments(rng)[0])
    if kind == "permutation":  # query stream: first-in-order rows are fully masked
        return A.permutation_mask(random_perms(rng), include_self=False)
    if kind == "padding":
        lengths = random_lengths(rng)
        lengths[0] = 0  # one fully padded example
        return A.combine_masks(A.padding_mask(lengths, T), A.causal_mask(T))
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["none", "causal", "unilm", "permutation", "padding"])
@pytest.mark.parametrize("dtype,atol", [(np.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_impls_agree(rng, kind, dtype, atol):
    q, k, v = qkv(rng, dtype)
    mask = make_mask(kind, rng)
    want = A.masked_attention_reference(q, k, v, mask=mask)
    assert want.dtype == dtype
    outs = {impl: attend(q, k, v, mask=mask, impl=impl) for impl in A.IMPLEMENTATIONS}
    for impl, got in outs.items():
        assert got.shape == q.shape and got.dtype == dtype, impl
        assert np.isfinite(np.asarray(got, np.float32)).all(), impl
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), atol=atol, err_msg=impl)


def test_unscaled_attention_and_cross_lengths(rng):
    q, k, v = qkv(rng, tq=3, tk=5)
    mask = A.padding_mask(np.array([5, 2, 1], np.int32), 5)
    want = A.masked_attention_reference(q, k, v, mask=mask, scale=1.0)
    for impl in A.IMPLEMENTATIONS:
        np.testing.assert_allclose(attend(q, k, v, mask=mask, scale=1.0, impl=impl), want, atol=1e-5)
    assert not np.allclose(A.masked_attention_reference(q, k, v, mask=mask), want, atol=1e-3)


@pytest.mark.parametrize("impl", A.IMPLEMENTATIONS)
def test_causality_by_jacobian(rng, impl):
    q, k, v = qkv(rng, b=1, tq=5, tk=5)
    mask = A.causal_mask(5)
    fn = lambda kk, vv: A.masked_attention(q, kk, vv, mask=mask, impl=impl)  # noqa: E731
    jac_k, jac_v = jax.jit(jax.jacrev(fn, argnums=(0, 1)))(k, v)
    t, s = np.indices((5, 5))
    for name, jac in (("k", jac_k), ("v", jac_v)):
        dep = np.abs(np.asarray(jac)[0, :, :, :, 0]).sum(axis=(1, 2, 4, 5))  # [Tq, Tk]
        assert (dep[s > t] == 0).all(), name
        if name == "v":
            assert (dep[s <= t] > 0).all()


@pytest.mark.parametrize("impl", A.IMPLEMENTATIONS)
def test_padded_keys_do_not_change_outputs(rng, impl):
    q, k, v = qkv(rng)
    lengths = np.array([T, 3, 1], np.int32)
    mask = A.padding_mask(lengths, T)
    pad = ~np.asarray(mask)[:, 0, 0, :, None, None]  # [B, T, 1, 1]
    k2 = jnp.where(pad, 100.0 * jnp.asarray(rng.normal(size=k.shape), jnp.float32), k)
    v2 = jnp.where(pad, 100.0 * jnp.asarray(rng.normal(size=v.shape), jnp.float32), v)
    assert not np.allclose(k2, k)
    np.testing.assert_allclose(attend(q, k2, v2, mask=mask, impl=impl), attend(q, k, v, mask=mask, impl=impl), atol=1e-6)


@pytest.mark.parametrize("impl", A.IMPLEMENTATIONS)
def test_fully_masked_rows_are_zero_with_finite_gradients(rng, impl):
    q, k, v = qkv(rng)
    mask = np.asarray(A.combine_masks(A.padding_mask(np.array([0, 4, T], np.int32), T), A.causal_mask(T)))
    mask = mask & ~np.eye(T, dtype=bool)  # query 0 of every example sees nothing, example 0 nothing at all
    empty = ~mask[:, 0].any(-1)  # [B, Tq]
    assert empty[0].all() and empty[:, 0].all() and not empty.all()
    out = np.asarray(attend(q, k, v, mask=mask, impl=impl))
    assert np.isfinite(out).all()
    assert (out[empty] == 0).all() and (np.abs(out[~empty]).sum(-1) > 0).all()

    probe = jnp.asarray(rng.normal(size=q.shape), jnp.float32)
    loss = lambda *a: jnp.sum(A.masked_attention(*a, mask=mask, impl=impl) * probe)  # noqa: E731
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
    ref_loss = lambda *a: jnp.sum(A.masked_attention_reference(*a, mask=mask) * probe)  # noqa: E731
    ref = jax.jit(jax.grad(ref_loss, argnums=(0, 1, 2)))(q, k, v)  # the mask is a closed-over constant
    for g, r in zip(grads, ref):
        assert np.isfinite(np.asarray(g)).all()
        np.testing.assert_allclose(g, r, atol=1e-5)
    gq = np.asarray(grads[0])
    assert (gq[empty] == 0).all()  # an empty row's query gets no gradient
    assert (np.asarray(grads[1])[0] == 0).all() and (np.asarray(grads[2])[0] == 0).all()


# --------------------------------------------------------------------------- #
# Bad inputs
# --------------------------------------------------------------------------- #


def test_bad_attention_inputs_name_the_argument(rng):
    q, k, v = qkv(rng)
    with pytest.raises(ValueError, match=r"`impl`.*'reference'.*'xla'.*got 'cudnn'"):
        A.masked_attention(q, k, v, impl="cudnn")
    with pytest.raises(ValueError, match=r"`k`.*heads"):
        A.masked_attention(q, k[:, :, :1], v[:, :, :1])
    with pytest.raises(ValueError, match=r"`k`.*head dim"):
        A.masked_attention(q, k[..., :2], v[..., :2])
    with pytest.raises(ValueError, match=r"`k`.*batch"):
        A.masked_attention(q, k[:2], v[:2])
    with pytest.raises(ValueError, match=r"`v`.*shape of k"):
        A.masked_attention(q, k, v[:, :3])
    with pytest.raises(ValueError, match=r"`q`.*rank 4"):
        A.masked_attention(q[0], k, v)
    with pytest.raises(ValueError, match=r"`mask`.*broadcastable"):
        A.masked_attention(q, k, v, mask=A.causal_mask(T + 1))
    with pytest.raises(ValueError, match=r"`mask`.*boolean"):
        A.masked_attention(q, k, v, mask=jnp.ones((1, 1, T, T)))
    with pytest.raises(ValueError, match=r"`k`.*heads"):
        A.masked_attention_reference(q, k[:, :, :1], v[:, :, :1])


def test_bad_mask_inputs_name_the_argument():
    with pytest.raises(ValueError, match=r"`lengths`.*\[0, 5\].*got values"):
        A.padding_mask(np.array([2, 6]), 5)
    with pytest.raises(ValueError, match=r"`lengths`.*\[0, 5\]"):
        A.padding_mask(np.array([-1, 2]), 5)
    with pytest.raises(ValueError, match=r"`lengths`.*integer"):
        A.padding_mask(np.array([2.0]), 5)
    with pytest.raises(ValueError, match=r"`T` must be a positive Python int .*; got 0"):
        A.causal_mask(0)
    with pytest.raises(ValueError, match=r"`segment_ids`.*0 \(source\) or 1 \(target\).*\[0, 1, 2\]"):
        A.unilm_mask(np.array([[0, 1, 2]]))
    with pytest.raises(ValueError, match=r"`segment_ids`.*non-decreasing.*row 1"):
        A.unilm_mask(np.array([[0, 1, 1], [0, 1, 0]]))
    with pytest.raises(ValueError, match=r"`segment_ids`.*rank 2"):
        A.unilm_mask(np.array([0, 1]))
    with pytest.raises(ValueError, match=r"`perm`.*permutation.*row 0"):
        A.permutation_mask(np.array([[0, 0, 2]]))
    with pytest.raises(ValueError, match=r"`masks\[1\]`.*boolean"):
        A.combine_masks(None, np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"`masks`.*broadcast"):
        A.combine_masks(A.causal_mask(3), A.causal_mask(4))
