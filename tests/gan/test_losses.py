"""zoo/gan/losses.py against exact oracles: the naive textbook formulas evaluated in
80-digit decimal arithmetic (values, and gradients by central differences), the f-GAN
bound at the optimal critic for known discrete distributions (it equals the f-divergence),
the Fenchel identity of each conjugate, and float64 closed forms for RSGAN/RaSGAN."""

import decimal
import functools
import math
from decimal import Decimal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.gan import losses as L

# Raw outputs from the saturated ends (±80) through the middle; no ±1, where hinge has kinks.
EXTREME_REAL = np.array([-80.0, -30.0, -2.5, 0.0, 0.5, 30.0, 80.0], np.float32)
EXTREME_FAKE = np.array([80.0, 25.0, 3.0, -0.5, 0.25, -40.0, -80.0], np.float32)
# Same batch size everywhere: compiled code is shared between the tests.
MODERATE_REAL, MODERATE_FAKE = (3.0 * np.random.default_rng(0).normal(size=(2, 7))).astype(np.float32)

F_NAMES = ["kl", "reverse_kl", "pearson", "neyman", "hellinger", "js", "tv"]

# --------------------------------------------------------------------------- #
# The oracle: naive formulas in exact-enough decimal arithmetic
# --------------------------------------------------------------------------- #

PREC = 80  # 1 − σ(80) ≈ e^{−80} keeps ~45 digits; FD round-off is ~e^{80}·1e-80/h


# The central differences below move one element at a time, so most terms repeat: caching
# the transcendental functions (always at PREC) makes that O(B) new evaluations, not O(B²).
@functools.cache
def _exp(x):
    return x.exp()


@functools.cache
def _log(x):
    return x.ln()


def _sig(x):
    return 1 / (1 + _exp(-x))


def _tanh(x):
    e = _exp(2 * x)
    return (e - 1) / (e + 1)


def _mean(xs):
    return sum(xs) / len(xs)


def _relu(x):
    return max(x, Decimal(0))


# Nowozin et al. Table 6, as printed: the activation and the conjugate, composed naively.
ACT = {
    "kl": lambda v: v,
    "reverse_kl": lambda v: -_exp(-v),
    "pearson": lambda v: v,
    "neyman": lambda v: 1 - _exp(v),
    "hellinger": lambda v: 1 - _exp(v),
    "js": lambda v: _log(Decimal(2)) - _log(1 + _exp(-v)),
    "tv": lambda v: _tanh(v) / 2,
}
FSTAR = {
    "kl": lambda t: _exp(t - 1),
    "reverse_kl": lambda t: -1 - _log(-t),
    "pearson": lambda t: t * t / 4 + t,
    "neyman": lambda t: 2 - 2 * (1 - t).sqrt(),
    "hellinger": lambda t: t / (1 - t),
    "js": lambda t: -_log(2 - _exp(t)),
    "tv": lambda t: t,
}


def _f_gan_reference(div, saturating):
    act, fstar = ACT[div], FSTAR[div]
    d = lambda r, f: _mean([fstar(act(v)) for v in f]) - _mean([act(v) for v in r])  # noqa: E731
    if saturating:
        return d, lambda r, f: -_mean([fstar(act(v)) for v in f])
    return d, lambda r, f: -_mean([act(v) for v in f])


def _rasgan(r, f):
    rm, fm = _mean(r), _mean(f)
    return -_mean([_log(_sig(x - fm)) for x in r]) - _mean([_log(1 - _sig(x - rm)) for x in f])


REFERENCE = {
    "gan_saturating": (
        lambda r, f: -_mean([_log(_sig(x)) for x in r]) - _mean([_log(1 - _sig(x)) for x in f]),
        lambda r, f: _mean([_log(1 - _sig(x)) for x in f]),
    ),
    "gan": (
        lambda r, f: -_mean([_log(_sig(x)) for x in r]) - _mean([_log(1 - _sig(x)) for x in f]),
        lambda r, f: -_mean([_log(_sig(x)) for x in f]),
    ),
    "hinge": (
        lambda r, f: _mean([_relu(1 - x) for x in r]) + _mean([_relu(1 + x) for x in f]),
        lambda r, f: -_mean(f),
    ),
    "lsgan": (
        lambda r, f: _mean([(x - 1) ** 2 for x in r]) / 2 + _mean([x**2 for x in f]) / 2,
        lambda r, f: _mean([(x - 1) ** 2 for x in f]) / 2,
    ),
    "wgan": (lambda r, f: _mean(f) - _mean(r), lambda r, f: -_mean(f)),
    "rsgan": (
        lambda r, f: -_mean([_log(_sig(a - b)) for a, b in zip(r, f)]),
        lambda r, f: -_mean([_log(_sig(b - a)) for a, b in zip(r, f)]),
    ),
    "rasgan": (_rasgan, lambda r, f: _rasgan(f, r)),
    **{f"f_{d}": _f_gan_reference(d, False) for d in F_NAMES},
    **{f"f_{d}_saturating": _f_gan_reference(d, True) for d in F_NAMES},
}


def exact_value(fn, r, f):
    with decimal.localcontext() as ctx:
        ctx.prec = PREC
        return float(fn([Decimal(float(x)) for x in r], [Decimal(float(x)) for x in f]))


def exact_gradients(fn, r, f, h="1e-20"):
    """Central differences of ``fn`` in decimal arithmetic (relative ``h²`` error ~1e-40)."""
    with decimal.localcontext() as ctx:
        ctx.prec = PREC
        h = Decimal(h)
        rd, fd = [Decimal(float(x)) for x in r], [Decimal(float(x)) for x in f]
        grads = []
        for args, which in ((rd, 0), (fd, 1)):
            g = []
            for i in range(len(args)):
                plus, minus = list(args), list(args)
                plus[i] += h
                minus[i] -= h
                pair = lambda a: (a, fd) if which == 0 else (rd, a)  # noqa: E731
                g.append(float((fn(*pair(plus)) - fn(*pair(minus))) / (2 * h)))
            grads.append(np.array(g))
        return grads


# --------------------------------------------------------------------------- #
# Every loss: values and gradients against the oracle, finite at the extremes
# --------------------------------------------------------------------------- #


def test_registry_has_exactly_the_documented_names():
    assert set(L.LOSSES) == set(REFERENCE)
    for name, loss in L.LOSSES.items():
        assert loss.name == name and L.get_loss(name) is loss


@functools.cache
def jax_results():
    """Every loss's values on both batches and gradients on the extreme one, in one jit.

    One compile for all of them instead of ~70 op-by-op ones (most of this file's time).
    """

    def everything(extreme_real, extreme_fake, moderate_real, moderate_fake):
        out = {}
        for name, loss in L.LOSSES.items():
            for fn in (loss.d_loss, loss.g_loss):
                value, grads = jax.value_and_grad(fn, argnums=(0, 1))(extreme_real, extreme_fake)
                out[fn.__name__] = dict(moderate=fn(moderate_real, moderate_fake), extreme=value, grads=grads)
        return out

    return jax.jit(everything)(EXTREME_REAL, EXTREME_FAKE, MODERATE_REAL, MODERATE_FAKE)


@pytest.mark.parametrize("name", list(REFERENCE))
def test_loss_matches_exact_formula_and_gradients_are_finite(name):
    loss, refs = L.get_loss(name), REFERENCE[name]
    for fn, ref in zip([loss.d_loss, loss.g_loss], refs):
        got = jax_results()[fn.__name__]
        assert got["extreme"].shape == () and got["extreme"].dtype == jnp.float32
        want = exact_value(ref, MODERATE_REAL, MODERATE_FAKE)
        np.testing.assert_allclose(float(got["moderate"]), want, rtol=1e-5, atol=1e-5)
        want = exact_value(ref, EXTREME_REAL, EXTREME_FAKE)
        np.testing.assert_allclose(float(got["extreme"]), want, rtol=1e-5, atol=1e-5)
        for grad, want in zip(got["grads"], exact_gradients(ref, EXTREME_REAL, EXTREME_FAKE)):
            assert np.all(np.isfinite(grad)), (fn.__name__, grad)
            np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-7)


def test_bf16_outputs_give_a_float32_loss(rng):
    loss = L.get_loss("rasgan")  # the one with batch means inside
    r, f = rng.normal(size=(2, 7)).astype(jnp.bfloat16)
    value = jax.jit(loss.d_loss)(r, f)
    assert value.dtype == jnp.float32
    np.testing.assert_allclose(float(value), exact_value(REFERENCE["rasgan"][0], r, f), rtol=1e-5)


# --------------------------------------------------------------------------- #
# f-GAN: domains, conjugates, closed forms, and the bound at the optimal critic
# --------------------------------------------------------------------------- #

# f and f' on u = p/q > 0, written out here independently of the module.
F_AND_DERIVATIVE = {
    "kl": (lambda u: u * np.log(u), lambda u: 1 + np.log(u)),
    "reverse_kl": (lambda u: -np.log(u), lambda u: -1 / u),
    "pearson": (lambda u: (u - 1) ** 2, lambda u: 2 * (u - 1)),
    "neyman": (lambda u: (1 - u) ** 2 / u, lambda u: 1 - 1 / u**2),
    "hellinger": (lambda u: (np.sqrt(u) - 1) ** 2, lambda u: 1 - 1 / np.sqrt(u)),
    "js": (lambda u: u * np.log(u) - (u + 1) * np.log((u + 1) / 2), lambda u: np.log(2 * u / (u + 1))),
    "tv": (lambda u: np.abs(u - 1) / 2, lambda u: np.sign(u - 1) / 2),
}

# The activation's inverse, T -> v, to build the optimal critic's raw output.
ACT_INVERSE = {
    "kl": lambda t: t,
    "reverse_kl": lambda t: -np.log(-t),
    "pearson": lambda t: t,
    "neyman": lambda t: np.log(1 - t),
    "hellinger": lambda t: np.log(1 - t),
    "js": lambda t: np.log(np.exp(t) / 2) - np.log1p(-np.exp(t) / 2),  # logit(e^t / 2)
    # T = ±½ is attained only at v = ±∞; tanh(±30) is ±1 exactly in float32 and float64.
    "tv": lambda t: 60.0 * t,
}

DOMAIN = {
    "kl": np.isfinite,
    "reverse_kl": lambda t: t < 0,
    "pearson": np.isfinite,
    "neyman": lambda t: t < 1,
    "hellinger": lambda t: t < 1,
    "js": lambda t: t < math.log(2),
    "tv": lambda t: np.abs(t) <= 0.5,
}


def test_f_divergence_table_covers_the_f_gan_losses():
    assert list(L.F_DIVERGENCES) == F_NAMES


@pytest.mark.parametrize("div", F_NAMES)
def test_activation_maps_into_the_conjugate_domain(div):
    # float64: in float32 1 − e^{v} and log 2 + log σ(v) round onto the boundary for
    # v ≲ −17 (resp. ≳ 17); the losses never evaluate f* there, only the closed form.
    with jax.enable_x64(True):
        v = np.linspace(-30.0, 30.0, 40)
        t = np.asarray(L.F_DIVERGENCES[div].activation(jnp.asarray(v)))
        assert np.all(DOMAIN[div](t)), t[~DOMAIN[div](t)]


@pytest.mark.parametrize("div", F_NAMES)
def test_conjugate_satisfies_the_fenchel_identity(div):
    """``f*(f'(u)) = u·f'(u) − f(u)`` for u > 0: the tangent at u meets the axis at −f*."""
    f, fprime = F_AND_DERIVATIVE[div]
    u = np.geomspace(0.05, 20.0, 40)  # symmetric in log u with an even count: misses 1, where TV's f' jumps
    with jax.enable_x64(True):
        got = np.asarray(L.F_DIVERGENCES[div].conjugate(jnp.asarray(fprime(u))))
    np.testing.assert_allclose(got, u * fprime(u) - f(u), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("div", F_NAMES)
def test_closed_form_equals_the_naive_composition(div):
    d = L.F_DIVERGENCES[div]
    # float64 naive composition, where it is still accurate (|v| ≤ 15).
    with jax.enable_x64(True):
        v = jnp.linspace(-15.0, 15.0, 40)
        np.testing.assert_allclose(d.conjugate_of_activation(v), d.conjugate(d.activation(v)), rtol=1e-8, atol=1e-12)
    # float32 closed form over the whole range, against the composition in exact arithmetic.
    v = EXTREME_REAL
    got = np.asarray(d.conjugate_of_activation(jnp.asarray(v)))
    assert np.all(np.isfinite(got))
    want = [exact_value(lambda r, f: FSTAR[div](ACT[div](r[0])), [x], [x]) for x in v]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


P_COUNTS = np.array([1, 2, 3, 1])  # p = P_COUNTS/7, q = Q_COUNTS/7 on four points
Q_COUNTS = np.array([2, 1, 1, 3])
REAL_POINT, FAKE_POINT = np.repeat(np.arange(4), P_COUNTS), np.repeat(np.arange(4), Q_COUNTS)


def optimal_raw_output(div):
    """v with act(v) = T* = f'(p/q) at each of the four points, ``[4]``."""
    _, fprime = F_AND_DERIVATIVE[div]
    return ACT_INVERSE[div](fprime(P_COUNTS / Q_COUNTS)).astype(np.float32)


@functools.cache
def bounds_at_the_optimum():
    """``−d_loss`` and its gradient in each point's v, for every f-GAN loss, in one jit."""

    def everything(vs):
        out = {}
        for div, v in vs.items():
            d_loss = L.get_loss(f"f_{div}").d_loss
            out[div] = jax.value_and_grad(lambda v: -d_loss(v[REAL_POINT], v[FAKE_POINT]))(v)
        return out

    return jax.jit(everything)({div: optimal_raw_output(div) for div in F_NAMES})


@pytest.mark.parametrize("div", F_NAMES)
def test_bound_at_the_optimal_critic_is_the_f_divergence(div):
    """With T = f'(p/q) the bound E_p T − E_q f*(T) is exactly D_f(P‖Q) = Σ q f(p/q).

    Batches whose empirical distributions are p and q make ``−d_loss`` that bound; the
    optimum is also stationary, so the bound's gradient in each point's v vanishes there.
    """
    f, _ = F_AND_DERIVATIVE[div]
    p, q = P_COUNTS / 7, Q_COUNTS / 7
    bound, grad_v = bounds_at_the_optimum()[div]
    np.testing.assert_allclose(float(bound), np.sum(q * f(p / q)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad_v, 0.0, atol=1e-5)


def test_f_js_is_the_gan_loss_shifted_by_log_2():
    """Nowozin's JS (without the ½) bounds 2·JSD, and its D loss is GAN's minus 2 log 2."""
    got = jax_results()
    for batch in ("moderate", "extreme"):
        gan_d, gan_g = got["gan_d_loss"][batch], got["gan_g_loss"][batch]
        np.testing.assert_allclose(got["f_js_d_loss"][batch], gan_d - 2 * math.log(2), rtol=1e-5)
        np.testing.assert_allclose(got["f_js_g_loss"][batch], gan_g - math.log(2), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- #
# Relativistic losses
# --------------------------------------------------------------------------- #


def _log_sigmoid64(x):
    return -np.logaddexp(0.0, -x)


def test_rsgan_and_rasgan_equal_their_float64_closed_forms(rng):
    r, f = (3.0 * rng.normal(size=(2, 7))).astype(np.float32)
    r64, f64 = r.astype(np.float64), f.astype(np.float64)
    rs, ras = L.get_loss("rsgan"), L.get_loss("rasgan")
    np.testing.assert_allclose(rs.d_loss(r, f), -np.mean(_log_sigmoid64(r64 - f64)), rtol=1e-5)
    np.testing.assert_allclose(rs.g_loss(r, f), -np.mean(_log_sigmoid64(f64 - r64)), rtol=1e-5)
    d_ras = -np.mean(_log_sigmoid64(r64 - f64.mean())) - np.mean(_log_sigmoid64(-(f64 - r64.mean())))
    g_ras = -np.mean(_log_sigmoid64(f64 - r64.mean())) - np.mean(_log_sigmoid64(-(r64 - f64.mean())))
    np.testing.assert_allclose(ras.d_loss(r, f), d_ras, rtol=1e-5)
    np.testing.assert_allclose(ras.g_loss(r, f), g_ras, rtol=1e-5)


def test_rsgan_pairs_by_index_and_rasgan_only_sees_the_means(rng):
    r, f = (3.0 * rng.normal(size=(2, 7))).astype(np.float32)
    shuffled = f[::-1].copy()
    rs, ras = L.get_loss("rsgan"), L.get_loss("rasgan")
    assert abs(float(rs.d_loss(r, f)) - float(rs.d_loss(r, shuffled))) > 1e-3
    np.testing.assert_allclose(ras.d_loss(r, f), ras.d_loss(r, shuffled), rtol=1e-6)
    assert np.isfinite(float(ras.d_loss(r, f[:4])))  # batches of different sizes are fine


# --------------------------------------------------------------------------- #
# Errors
# --------------------------------------------------------------------------- #


def test_get_loss_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"get_loss: `name` must be one of .*got 'nope'") as info:
        L.get_loss("nope")
    for name in L.LOSSES:
        assert name in str(info.value)


@pytest.mark.parametrize("name", ["gan", "wgan", "f_kl", "rasgan"])
def test_bad_shapes_name_the_argument_and_both_shapes(name):
    loss = L.get_loss(name)
    ok = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match=rf"{name}.d_loss: `d_real` must be .*\[B\].*got shape \(4, 1\)"):
        loss.d_loss(np.zeros((4, 1), np.float32), ok)
    with pytest.raises(ValueError, match=rf"{name}.g_loss: `d_fake` must be .*\[B\].*got shape \(\)"):
        loss.g_loss(ok, np.float32(0.0))
    with pytest.raises(ValueError, match=r"`d_fake` must be .*got shape \(0,\)"):
        loss.d_loss(ok, np.zeros(0, np.float32))
    with pytest.raises(ValueError, match=r"`d_real` must be floating point; got dtype int32"):
        loss.d_loss(np.zeros(4, np.int32), ok)
    with pytest.raises(ValueError, match=r"got shape \(2, 2\)"):  # static shapes: also under jit
        jax.jit(loss.d_loss)(ok, np.zeros((2, 2), np.float32))


def test_rsgan_needs_equal_batch_sizes():
    expected = r"rsgan.d_loss: `d_fake` must be of the shape of `d_real`, \(3,\).*got shape \(4,\)"
    with pytest.raises(ValueError, match=expected):
        L.get_loss("rsgan").d_loss(np.zeros(3, np.float32), np.zeros(4, np.float32))
