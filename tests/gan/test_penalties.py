"""zoo/gan/penalties.py against central finite differences in float64: per-example input
gradients and norms of a small nonlinear critic, each penalty as its formula on those
norms, the interpolation segment, and finite gradients where ∇D = 0."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.gan import penalties as P

SHAPE = (4, 2, 3)  # [B, ...] with two non-batch axes: norms run over both


def mlp_params(rng, d=6, hidden=5, scale=1.0):
    return dict(
        w1=rng.normal(size=(d, hidden)) / np.sqrt(d),
        b1=0.1 * rng.normal(size=hidden),
        w2=scale * rng.normal(size=hidden),
    )


def mlp(params, x):
    """A 2-layer tanh critic on flattened examples: ``[B, ...] -> [B]``."""
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["w1"] + params["b1"])
    return h @ params["w2"]


def mlp_numpy(params, x):
    """The same critic in numpy float64, for the finite differences."""
    return np.tanh(x.reshape(x.shape[0], -1) @ params["w1"] + params["b1"]) @ params["w2"]


def fd_gradients(params, x, h=1e-6):
    """Central differences, one coordinate at a time for all examples at once (they are independent)."""
    flat = np.asarray(x, np.float64).reshape(x.shape[0], -1)
    grads = np.zeros_like(flat)
    for j in range(flat.shape[1]):
        step = np.zeros_like(flat)
        step[:, j] = h
        up, down = mlp_numpy(params, flat + step), mlp_numpy(params, flat - step)
        grads[:, j] = (up - down) / (2 * h)
    return grads.reshape(x.shape)


def fd_norms(params, x):
    g = fd_gradients(params, x)
    return np.sqrt(np.sum(g.reshape(g.shape[0], -1) ** 2, axis=1))


# One jit per test below, not op-by-op: a handful of compiles instead of dozens.
@jax.jit
def _gradients_and_norms(params, x):
    d_fn = lambda x: mlp(params, x)  # noqa: E731
    return P.input_gradients(d_fn, x), P.gradient_norms(d_fn, x)


@jax.jit
def _all_penalties(params, key, real, fake):
    d_fn = lambda x: mlp(params, x)  # noqa: E731
    return dict(
        x_hat=P.interpolates(key, real, fake),
        wgan_gp=P.wgan_gp(d_fn, key, real, fake),
        wgan_gp_3=P.wgan_gp(d_fn, key, real, fake, weight=3.0),
        one_sided=P.wgan_gp_one_sided(d_fn, key, real, fake),
        wgan_div=P.wgan_div(d_fn, key, real, fake),
        wgan_div_k15_p3=P.wgan_div(d_fn, key, real, fake, k=1.5, p=3.0),
        wgan_div_real_and_fake=P.wgan_div(d_fn, key, real, fake, at="real_and_fake"),
        r1=P.zero_centred_gp(d_fn, real, 5.0),
    )


def test_input_gradients_and_norms_match_central_differences(rng):
    with jax.enable_x64(True):
        params, x = mlp_params(rng), rng.normal(size=SHAPE)
        grads, norms = _gradients_and_norms(params, x)
        assert grads.shape == SHAPE and norms.shape == SHAPE[:1]
        np.testing.assert_allclose(grads, fd_gradients(params, x), rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(norms, fd_norms(params, x), rtol=1e-7)


def test_each_penalty_is_its_formula_on_the_finite_difference_norms(rng):
    with jax.enable_x64(True):
        key = jax.random.key(0)
        real, fake = rng.normal(size=(2,) + SHAPE)
        params = mlp_params(rng)
        x_hat = np.asarray(_all_penalties(params, key, real, fake)["x_hat"])
        # Rescale the critic so the median slope at the interpolates is 1: the one-sided
        # penalty then has both active and inactive terms.
        params["w2"] = params["w2"] / np.median(fd_norms(params, x_hat))
        n_hat, n_real, n_fake = (fd_norms(params, x) for x in (x_hat, real, fake))
        assert np.any(n_hat < 1) and np.any(n_hat > 1)
        got = _all_penalties(params, key, real, fake)
        want = dict(
            wgan_gp=10 * np.mean((n_hat - 1) ** 2),
            wgan_gp_3=3 * np.mean((n_hat - 1) ** 2),
            one_sided=10 * np.mean(np.maximum(n_hat - 1, 0)),
            wgan_div=2 * np.mean(n_hat**6),
            wgan_div_k15_p3=1.5 * np.mean(n_hat**3),
            wgan_div_real_and_fake=2 * np.mean((n_real**6 + n_fake**6) / 2),
            r1=5 * np.mean(n_real**2),
        )
        for name, value in want.items():
            assert got[name].shape == (), name
            np.testing.assert_allclose(float(got[name]), value, rtol=1e-6, err_msg=name)


def test_interpolates_lie_on_the_segment_with_one_weight_per_example(rng):
    with jax.enable_x64(True):  # float64 like the tests above: their compiled ops are reused
        real = rng.normal(size=SHAPE)
        fake = real + rng.choice([-1.0, 1.0], size=SHAPE) * rng.uniform(0.5, 2.0, size=SHAPE)
        key = jax.random.key(1)
        x_hat = np.asarray(P.interpolates(key, real, fake))
        eps = ((x_hat - fake) / (real - fake)).reshape(SHAPE[0], -1)  # x̂ = ε·real + (1 − ε)·fake
        np.testing.assert_allclose(eps, eps[:, :1] * np.ones_like(eps), atol=1e-12)  # one ε per example
        assert np.all((eps >= 0) & (eps <= 1))
        assert np.ptp(eps[:, 0]) > 1e-3  # not one ε for the whole batch
        np.testing.assert_array_equal(P.interpolates(key, real, fake), x_hat)
        assert not np.allclose(P.interpolates(jax.random.key(2), real, fake), x_hat)


def test_linear_critic_gives_the_closed_form_penalties():
    """D(x) = 0.4·Σx: every input gradient is 0.4·1, with norm 0.4·√6 < 1."""

    @jax.jit
    def penalties(key, real, fake):
        d_fn = lambda x: 0.4 * jnp.sum(x, axis=(1, 2))  # noqa: E731
        return jnp.stack(
            [
                P.wgan_gp_one_sided(d_fn, key, real, fake),
                P.wgan_gp(d_fn, key, real, fake),
                P.wgan_div(d_fn, key, real, fake),
                P.zero_centred_gp(d_fn, real, 2.0),
            ]
        )

    with jax.enable_x64(True):
        got = penalties(jax.random.key(3), np.ones(SHAPE), np.zeros(SHAPE))
    norm = 0.4 * np.sqrt(6.0)
    assert float(got[0]) == 0.0
    np.testing.assert_allclose(got[1:], [10 * (norm - 1) ** 2, 2 * norm**6, 2 * norm**2], rtol=1e-9)


def test_penalties_differentiate_in_the_critic_params_and_stay_finite_where_the_slope_is_zero():
    """D_w(x) = w·Σx²: ∇ₓD = 2w·x, so at x = c every norm is n = 2w·‖c‖ and each penalty
    is a closed form in w, with an exact derivative in w (a second-order derivative of D).
    At x = 0 the slope vanishes; the eps inside the sqrt keeps d‖∇D‖ finite (it is 0).

    float32, as in training. All penalties go through one jitted forward-mode Jacobian
    (one compile, reused for both points); forward mode keeps each penalty's row apart, so
    the last row, the two-sided penalty without eps, can be NaN without touching the others.
    """
    key, w = jax.random.key(4), np.float32(1.5)

    def d_fn(w):
        return lambda x: w * jnp.sum(x**2, axis=(1, 2))

    def penalties(w, real, fake):
        return jnp.stack(
            [
                P.wgan_gp(d_fn(w), key, real, fake),
                P.wgan_gp_one_sided(d_fn(w), key, real, fake),
                P.wgan_div(d_fn(w), key, real, fake),
                P.wgan_div(d_fn(w), key, real, fake, at="real_and_fake"),
                P.zero_centred_gp(d_fn(w), real, 10.0),
                P.wgan_gp(d_fn(w), key, real, fake, eps=0.0),
            ]
        )

    value_and_jacobian = jax.jit(lambda *a: (penalties(*a), jax.jacfwd(penalties, argnums=(0, 1, 2))(*a)))

    # Away from zero: real = fake = c puts every interpolate at c, whatever ε.
    c = np.full(SHAPE, 0.3, np.float32)
    values, (d_w, _, _) = value_and_jacobian(w, c, c)
    root_s = np.sqrt(np.sum(c[0].astype(np.float64) ** 2))  # ‖c_b‖, the same for every b
    n = 2 * 1.5 * root_s
    assert n > 1  # so the one-sided penalty is active
    want = [10 * (n - 1) ** 2, 10 * (n - 1), 2 * n**6, 2 * n**6, 10 * n**2, 10 * (n - 1) ** 2]
    want_d_w = [20 * (n - 1) * 2 * root_s, 10 * 2 * root_s, 12 * n**5 * 2 * root_s, 12 * n**5 * 2 * root_s]
    want_d_w += [20 * n * 2 * root_s, 20 * (n - 1) * 2 * root_s]
    np.testing.assert_allclose(values, want, rtol=1e-5)
    np.testing.assert_allclose(d_w, want_d_w, rtol=1e-5)

    # At zero.
    zeros = np.zeros(SHAPE, np.float32)
    _, (d_w, d_real, d_fake) = value_and_jacobian(w, zeros, zeros)
    for jac in (d_w, d_real, d_fake):
        assert np.all(np.isfinite(jac[:5])), jac
    np.testing.assert_array_equal(d_w[:5], 0.0)  # no slope at all, so nothing to push on w
    assert np.isnan(d_w[5])  # without the eps the same derivative is 0/0


# --------------------------------------------------------------------------- #
# Errors
# --------------------------------------------------------------------------- #


def test_bad_arguments_raise_with_the_names_and_shapes():
    d_fn = lambda x: jnp.sum(x, axis=1)  # noqa: E731
    key, a, b = jax.random.key(6), np.zeros((4, 3), np.float32), np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match=r"wgan_gp: `fake` must be of the shape of `real`, \(4, 3\); got shape \(4, 2"):
        P.wgan_gp(d_fn, key, a, b)
    with pytest.raises(ValueError, match=r"interpolates: `fake` must be .*\(4, 3\); got shape \(4, 2\)"):
        P.interpolates(key, a, b)
    with pytest.raises(ValueError, match=r"`d_fn\(x\)` must be of shape \[B\] = \(4,\); got shape \(4, 1"):
        P.gradient_norms(lambda x: x[:, :1], a)
    with pytest.raises(ValueError, match=r"input_gradients: `x` must be a batch .*got shape \(\)"):
        P.zero_centred_gp(d_fn, np.float32(1.0), 1.0)
    with pytest.raises(ValueError, match=r"`x` must be floating point .*got dtype int32"):
        P.input_gradients(d_fn, np.zeros((4, 3), np.int32))
    with pytest.raises(ValueError, match=r"wgan_div: `at` must be one of .*got 'fake'"):
        P.wgan_div(d_fn, key, a, a, at="fake")
    with pytest.raises(ValueError, match=r"wgan_div: `p` must be > 0; got 0.0"):
        P.wgan_div(d_fn, key, a, a, p=0.0)
