"""kernels/reductions.py: one variadic reduction equals the separate sums, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels.reductions import sums


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
