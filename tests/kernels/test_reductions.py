"""kernels/reductions.py: one variadic reduction equals the separate sums, values and gradients;
the blocked form equals them too and keeps XLA:CPU from writing the summed product out."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels.reductions import blocked_sums, materialize, sums
from zoo.core.config import YNNPACK_DOTS_ONLY


@pytest.mark.parametrize("axes", [(0,), (1, 3), (0, 1, 2)])
def test_sums_equal_separate_sums_values_and_gradients(axes):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 4, 5, 6)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 6)), jnp.float32)

    def terms(x):  # a shared producer (sin x) times four different factors
        shared = jnp.sin(x)
        return [shared * w[i] for i in range(3)] + [shared * x]

    got = sums(terms(x), axes)
    want = [jnp.sum(t, axis=axes) for t in terms(x)]
    assert len(got) == 4
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    probe = [jnp.asarray(rng.normal(size=b.shape), jnp.float32) for b in want]
    loss = lambda f: lambda x: sum(jnp.sum(s * p) for s, p in zip(f(x), probe))  # noqa: E731
    g_got = jax.jit(jax.grad(loss(lambda x: sums(terms(x), axes))))(x)
    g_want = jax.grad(loss(lambda x: [jnp.sum(t, axis=axes) for t in terms(x)]))(x)
    np.testing.assert_allclose(g_got, g_want, rtol=1e-5, atol=1e-5)


def test_terms_of_different_shapes_raise():
    with pytest.raises(ValueError, match=r"`terms` must all have one shape; got shapes \[\(2,\), \(3,\)\]"):
        sums([jnp.ones(2), jnp.ones(3)], (0,))


@pytest.mark.parametrize("n, axis", [(72, 1), (1152, 0), (37, 1), (20, 2), (64, 3)])
def test_blocked_sums_equal_plain_sums_values_and_gradients(n, axis):
    rng = np.random.default_rng(n)
    shape = [3, 4, 5, 2]
    shape[axis] = n
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=shape), jnp.float32)
    terms = lambda x: [x * w, jnp.square(x)]  # noqa: E731
    got = jax.jit(lambda x: blocked_sums(terms(x), axis))(x)
    want = [jnp.sum(t, axis=axis) for t in terms(x)]
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.sqrt(n))
    probe = [jnp.asarray(rng.normal(size=b.shape), jnp.float32) for b in want]
    loss = lambda f: lambda x: sum(jnp.sum(s * p) for s, p in zip(f(x), probe))  # noqa: E731
    g_got = jax.jit(jax.grad(loss(lambda x: blocked_sums(terms(x), axis))))(x)
    g_want = jax.grad(loss(lambda x: [jnp.sum(t, axis=axis) for t in terms(x)]))(x)
    np.testing.assert_allclose(g_got, g_want, rtol=1e-5, atol=1e-5)
    # one term (summed with a hidden zero operand, differentiated as a plain sum)
    (one,) = jax.jit(lambda x: blocked_sums(terms(x)[:1], axis))(x)
    np.testing.assert_allclose(one, want[0], rtol=1e-5, atol=1e-5 * np.sqrt(n))
    g_one = jax.jit(jax.grad(lambda x: jnp.sum(blocked_sums(terms(x)[:1], axis)[0] * probe[0])))(x)
    np.testing.assert_allclose(g_one, jax.grad(lambda x: jnp.sum(jnp.sum(terms(x)[0], axis=axis) * probe[0]))(x),
                               rtol=1e-5, atol=1e-5)  # fmt: skip


def test_blocked_sums_fuse_the_product_into_the_reduction():
    # The reason it exists: with XLA's own reductions (YNNPACK taking dots only, as the EM
    # capsule config sets), a plain sum over 72 becomes a reduce-window that writes the
    # product out.
    x = jnp.ones((8, 72, 16, 16), jnp.float32)
    c = jnp.ones((8, 72, 16), jnp.float32)

    def hlo(fn):
        return jax.jit(fn, compiler_options=YNNPACK_DOTS_ONLY).lower(x, c).compile().as_text()

    plain = hlo(lambda x, c: jnp.sum(c[..., None] * x, axis=1))
    blocked = hlo(lambda x, c: blocked_sums([c[..., None] * x], 1)[0])
    assert "reduce-window" in plain
    assert "reduce-window" not in blocked
    # no fusion of the blocked form outputs a full-size [8, 72, 16, 16] array
    assert not [line for line in blocked.splitlines() if "fusion(" in line and "= f32[8,72,16,16]" in line]


def test_blocked_sums_take_negative_axes_and_reject_bad_ones():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 40, 3)), jnp.float32)
    np.testing.assert_allclose(blocked_sums([x], -2)[0], jnp.sum(x, axis=1), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"blocked_sums: `axis` must lie in \[-3, 3\) for terms of rank 3; got 3"):
        blocked_sums([x], 3)
    with pytest.raises(ValueError, match=r"blocked_sums: `terms` must hold at least one array; got none"):
        blocked_sums([], 0)


def test_materialize_is_exact_values_and_gradients():
    rng = np.random.default_rng(2)
    # magnitudes from 1e-30 to 1e30 and exact zeros: the identity product must not round
    x = rng.normal(size=(3, 5, 16)) * 10.0 ** rng.integers(-30, 30, size=(3, 5, 16))
    x[0, 0, :4] = 0.0
    x = jnp.asarray(x, jnp.float32)
    got = jax.jit(materialize)(x)
    assert got.shape == x.shape and got.dtype == x.dtype
    np.testing.assert_array_equal(got, x)
    probe = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    grad = jax.jit(jax.grad(lambda x: jnp.sum(materialize(x) * probe)))(x)
    np.testing.assert_array_equal(grad, probe)


def test_materialize_keeps_a_chain_out_of_a_broadcasting_consumer():
    # The reason it exists: a pass over a big [64, 72, 16, 16] votes-like array reads a
    # [64, 16, 16] factor per child. Without materialize, XLA:CPU fuses the factor's chain
    # (a * b + c) into the pass and recomputes it for each of the 72 children; with it, the
    # pass reads the written factor. Both option sets the capsule configs use; one consumer
    # and two. (Compiled only, never run.)
    big = jnp.ones((64, 72, 16, 16), jnp.float32)
    a, b, c = (jnp.ones((64, 16, 16), jnp.float32) for _ in range(3))
    chain_op = re.compile(r"f32\[64,16,16\]\{2,1,0\} (multiply|add)\(")

    def passes_with_chain(wrap, two_consumers, options):
        def fn(big, a, b, c):
            factor = wrap(a * b + c)[:, None]
            out = jnp.sum(big * factor, axis=-1)
            return (out, jnp.sum(jnp.square(big) * factor, axis=-2)) if two_consumers else out

        hlo = jax.jit(fn).lower(big, a, b, c).compile(compiler_options=options).as_text()
        fused = re.findall(r"^%fused\S* \(.*?\n}", hlo, re.M | re.S)
        return [f for f in fused if "f32[64,72,16,16]" in f and chain_op.search(f)]

    for two_consumers in (False, True):
        for options in ({}, YNNPACK_DOTS_ONLY):
            assert passes_with_chain(lambda f: f, two_consumers, options)
            assert not passes_with_chain(materialize, two_consumers, options)
