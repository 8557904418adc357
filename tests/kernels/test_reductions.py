"""kernels/reductions.py: one variadic reduction equals the separate sums, values and gradients;
the blocked form equals them too and keeps XLA:CPU from writing the summed product out."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels.reductions import blocked_sums, sums
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
