"""kernels/routing.py against its loop references, plus the invariants routing must keep."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import routing
from tests.helpers import count_compilations

RTOL, ATOL = 2e-5, 2e-6


def random_votes(rng, b=None, i=None, j=None, d=None, scale=1.0):
    """Fresh votes of random small shape [B, I, J, D]."""
    shape = (
        b or int(rng.integers(1, 4)),
        i or int(rng.integers(1, 7)),
        j or int(rng.integers(2, 5)),
        d or int(rng.integers(2, 6)),
    )
    return (scale * rng.normal(size=shape)).astype(np.float32)


def assert_close(a, b, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def assert_tree_close(a, b, rtol=RTOL, atol=ATOL):
    jax.tree.map(functools.partial(assert_close, rtol=rtol, atol=atol), a, b)


# --------------------------------------------------------------------------- #
# squash
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("c", [1.0, 0.5])
def test_squash_matches_formula_and_norms_in_unit_interval(rng, c):
    s = (3 * rng.normal(size=(5, 7, 8))).astype(np.float32)
    s[0, 0] = 0.0
    v = routing.squash(s, c=c)
    assert_close(v, routing.squash_reference(s, c=c))
    norms = np.linalg.norm(np.asarray(v), axis=-1)
    assert norms.min() >= 0 and norms.max() < 1
    # Direction is kept; the length is ‖s‖²/(c+‖s‖²) up to eps.
    n = np.linalg.norm(s, axis=-1)
    assert_close(norms, n**2 / (c + n**2), atol=1e-3)


def test_squash_gradient_finite_at_zero():
    for c in (1.0, 0.5):
        jac = jax.jacfwd(lambda x: routing.squash(x, c=c))(jnp.zeros(4))
        assert np.all(np.isfinite(jac))
        grad = jax.grad(lambda x: jnp.sum(routing.squash(x, c=c)))(jnp.zeros((3, 4)))
        assert np.all(np.isfinite(grad))
        # At 0 the map is (sqrt(eps)/(c+eps))·I: the Jacobian is that diagonal.
        assert_close(jac, np.eye(4) * np.sqrt(1e-7) / (c + 1e-7), atol=1e-9)


def test_squash_gradient_matches_finite_differences(rng):
    s = rng.normal(size=(6,)).astype(np.float64)
    f = lambda x: jnp.sum(jnp.sin(routing.squash(x, c=0.5)))  # noqa: E731
    with jax.enable_x64(True):
        grad = np.asarray(jax.grad(f)(jnp.asarray(s)))
        h = 1e-6
        fd = np.array([(f(s + h * e) - f(s - h * e)) / (2 * h) for e in np.eye(6)])
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)


# --------------------------------------------------------------------------- #
# votes
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("shared", [True, False])
def test_capsule_votes_matches_reference(rng, shared):
    b, i, din, j, dout = 2, 5, 3, 4, 6
    u = rng.normal(size=(b, i, din)).astype(np.float32)
    w = rng.normal(size=(din, j, dout) if shared else (i, din, j, dout)).astype(np.float32)
    assert_close(routing.capsule_votes(u, w), routing.capsule_votes_reference(u, w))


def test_capsule_votes_rejects_bad_weights(rng):
    u = np.zeros((2, 5, 3), np.float32)
    with pytest.raises(ValueError, match=r"capsule_votes: `weights` must have shape .*got shape \(4, 3, 2\)"):
        routing.capsule_votes(u, np.zeros((4, 3, 2), np.float32))
    with pytest.raises(ValueError, match=r"`u` must have shape \[B, I, Din\]"):
        routing.capsule_votes(np.zeros((5, 3), np.float32), np.zeros((3, 2, 2), np.float32))


# --------------------------------------------------------------------------- #
# dynamic routing
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("variant", routing.VARIANTS)
@pytest.mark.parametrize("num_iters", [1, 2, 3])
def test_dynamic_routing_matches_reference(rng, variant, num_iters):
    for _ in range(3):  # several fresh random shapes
        u_hat = random_votes(rng)
        fast = routing.dynamic_routing(u_hat, num_iters=num_iters, variant=variant, return_coupling=True)
        ref = routing.dynamic_routing_reference(u_hat, num_iters=num_iters, variant=variant, return_coupling=True)
        assert_tree_close(fast, ref)


@pytest.mark.parametrize("variant", routing.VARIANTS)
def test_dynamic_routing_gradients_match_reference(rng, variant):
    u_hat = random_votes(rng, b=2, i=4, j=3, d=4)
    probe = rng.normal(size=(2, 3, 4)).astype(np.float32)

    def loss(fn, x):
        return jnp.sum(fn(x, num_iters=3, variant=variant) * probe)

    g_fast = jax.grad(functools.partial(loss, routing.dynamic_routing))(u_hat)
    g_ref = jax.grad(functools.partial(loss, routing.dynamic_routing_reference))(u_hat)
    assert_close(g_fast, g_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", routing.VARIANTS)
def test_coupling_sums_to_one_and_outputs_inside_unit_ball(rng, variant):
    u_hat = random_votes(rng, b=3, i=9, j=5, d=8, scale=4.0)
    v, c = routing.dynamic_routing(u_hat, variant=variant, return_coupling=True)
    assert c.shape == (3, 9, 5) and v.shape == (3, 5, 8)
    assert_close(np.sum(c, axis=-1), np.ones((3, 9)))
    norms = np.linalg.norm(np.asarray(v), axis=-1)
    assert norms.min() >= 0 and norms.max() < 1


@pytest.mark.parametrize("variant", routing.VARIANTS)
@pytest.mark.parametrize("case", ["zero", "identical"])
def test_dynamic_routing_degenerate_votes_have_finite_gradients(rng, variant, case):
    if case == "zero":
        u_hat = np.zeros((2, 6, 4, 8), np.float32)
    else:
        u_hat = np.broadcast_to(rng.normal(size=(1, 1, 1, 8)), (2, 6, 4, 8)).astype(np.float32)
    v, c = routing.dynamic_routing(u_hat, variant=variant, return_coupling=True)
    assert np.all(np.isfinite(v)) and np.all(np.isfinite(c))
    grad = jax.grad(lambda x: jnp.sum(jnp.linalg.norm(routing.dynamic_routing(x, variant=variant) + 1e-3, axis=-1)))(u_hat)
    assert np.all(np.isfinite(grad))


def test_su_variant_assigns_logits_sabour_accumulates(rng):
    """With 1 iteration both are squash(mean vote); they differ from the 3rd iteration on."""
    u_hat = random_votes(rng, b=2, i=6, j=3, d=4)
    one = {v: routing.dynamic_routing(u_hat, num_iters=1, variant=v, squash_c=1.0) for v in routing.VARIANTS}
    assert_close(one["sabour"], one["su"])
    assert_close(one["su"], routing.squash(u_hat.sum(axis=1) / 3, c=1.0))  # uniform coupling 1/J
    three = {v: routing.dynamic_routing(u_hat, num_iters=3, variant=v, squash_c=1.0) for v in routing.VARIANTS}
    assert np.max(np.abs(np.asarray(three["sabour"]) - np.asarray(three["su"]))) > 1e-3


@pytest.mark.parametrize("variant", routing.VARIANTS)
def test_zero_votes_pad_dynamic_routing_exactly(rng, variant):
    """Inputs with different numbers of capsules batch by zero votes, anywhere among the real ones:
    a zero vote adds nothing to the outputs' sums or to the logits, so the outputs, the real
    capsules' couplings and the gradients are those of the unpadded input; a padded capsule's
    couplings stay uniform."""
    u_hat = random_votes(rng, b=3, i=5, j=4, d=6)
    real = np.sort(rng.choice(9, size=5, replace=False))
    padded = np.zeros((3, 9, 4, 6), np.float32)
    padded[:, real] = u_hat
    probe = rng.normal(size=(3, 4, 6)).astype(np.float32)

    def routed(votes):
        return routing.dynamic_routing(votes, variant=variant, return_coupling=True)

    (v, c), (v_pad, c_pad) = routed(u_hat), routed(padded)
    assert_close(v_pad, v)
    assert_close(c_pad[:, real], c)
    assert_close(np.delete(np.asarray(c_pad), real, axis=1), np.full((3, 4, 4), 0.25))
    grad = jax.grad(lambda x: jnp.sum(routed(x)[0] * probe))
    assert_close(np.asarray(grad(padded))[:, real], grad(u_hat), rtol=1e-4, atol=1e-5)


def test_dynamic_routing_jit_vmap_invariance_and_no_recompile(rng):
    u_hat = random_votes(rng, b=4, i=6, j=3, d=5)
    eager = routing.dynamic_routing(u_hat, variant="su")
    jitted = jax.jit(functools.partial(routing.dynamic_routing, variant="su"))
    assert_close(jitted(u_hat), eager)
    per_sample = jax.vmap(lambda x: routing.dynamic_routing(x[None], variant="su")[0])(u_hat)
    assert_close(per_sample, eager)
    jitted(u_hat + 1.0)  # warm
    with count_compilations() as compiled:
        jitted(u_hat * 2.0)
    assert compiled == []


def test_dynamic_routing_rejects_bad_input():
    with pytest.raises(ValueError, match=r"dynamic_routing: `u_hat` must have shape \[B, I, J, D\].*got shape \(3, 4, 5\)"):
        routing.dynamic_routing(np.zeros((3, 4, 5), np.float32))
    with pytest.raises(ValueError, match=r"`variant` must be one of \('sabour', 'su'\); got 'hinton'"):
        routing.dynamic_routing(np.zeros((1, 2, 3, 4), np.float32), variant="hinton")
    with pytest.raises(ValueError, match=r"`num_iters` must be an int >= 1; got 0"):
        routing.dynamic_routing(np.zeros((1, 2, 3, 4), np.float32), num_iters=0)
    with pytest.raises(ValueError, match=r"`u_hat` must be floating point; got dtype int32"):
        routing.dynamic_routing(np.zeros((1, 2, 3, 4), np.int32))


# --------------------------------------------------------------------------- #
# capsule_routing: votes and routing in chunks of input capsules
# --------------------------------------------------------------------------- #


def routing_problem(rng, b, i, din, j, dout):
    u = rng.normal(size=(b, i, din)).astype(np.float32)
    weights = (0.5 * rng.normal(size=(i, din, j, dout))).astype(np.float32)
    return u, weights


@pytest.mark.parametrize("variant", routing.VARIANTS)
def test_capsule_routing_equals_votes_then_routing_and_the_loop_reference(rng, variant):
    for _ in range(3):  # fresh random shapes
        b, i, din, j, dout = (int(n) for n in rng.integers([1, 1, 1, 2, 2], [4, 7, 5, 5, 6]))
        u, weights = routing_problem(rng, b, i, din, j, dout)
        fast = routing.capsule_routing(u, weights, variant=variant, return_coupling=True)
        composed = routing.dynamic_routing(routing.capsule_votes(u, weights), variant=variant, return_coupling=True)
        ref = routing.dynamic_routing_reference(routing.capsule_votes_reference(u, weights), variant=variant,
                                                return_coupling=True)  # fmt: skip
        assert fast[0].shape == (b, j, dout) and fast[1].shape == (b, i, j)
        assert_tree_close(fast, composed)
        assert_tree_close(fast, ref)


@pytest.mark.parametrize("variant", routing.VARIANTS)
def test_capsule_routing_gradients_equal_the_reference(rng, variant):
    u, weights = routing_problem(rng, 3, 5, 4, 3, 6)
    probe = rng.normal(size=(3, 3, 6)).astype(np.float32)

    def loss(fast, u, w):
        if fast:
            v = routing.capsule_routing(u, w, variant=variant)
        else:
            v = routing.dynamic_routing_reference(routing.capsule_votes_reference(u, w), variant=variant)
        return jnp.sum(v * probe)

    g_fast = jax.jit(jax.grad(functools.partial(loss, True), argnums=(0, 1)))(u, weights)
    g_ref = jax.grad(functools.partial(loss, False), argnums=(0, 1))(u, weights)
    assert_tree_close(g_fast, g_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", routing.VARIANTS)
@pytest.mark.parametrize(("chunk_size", "num_iters"), [(1, 3), (2, 1), (2, 2), (3, 4), (4, 3)])
def test_capsule_routing_in_chunks_equals_the_reference(rng, variant, chunk_size, num_iters):
    # I = 7: chunks of 1 (seven scan steps), 2 and 4 (one and three zero capsules padded), 3.
    u, weights = routing_problem(rng, 2, 7, 3, 4, 5)
    probe = rng.normal(size=(2, 4, 5)).astype(np.float32)
    fast = routing.capsule_routing(u, weights, variant=variant, num_iters=num_iters, chunk_size=chunk_size,
                                   return_coupling=True)  # fmt: skip
    ref = routing.dynamic_routing_reference(routing.capsule_votes_reference(u, weights), variant=variant,
                                            num_iters=num_iters, return_coupling=True)  # fmt: skip
    assert fast[1].shape == (2, 7, 4)
    assert_tree_close(fast, ref)

    def loss(fast, u, w):
        if fast:
            v = routing.capsule_routing(u, w, variant=variant, num_iters=num_iters, chunk_size=chunk_size)
        else:
            v = routing.dynamic_routing_reference(routing.capsule_votes_reference(u, w), variant=variant,
                                                  num_iters=num_iters)  # fmt: skip
        return jnp.sum(v * probe)

    g_fast = jax.jit(jax.grad(functools.partial(loss, True), argnums=(0, 1)))(u, weights)
    g_ref = jax.grad(functools.partial(loss, False), argnums=(0, 1))(u, weights)
    assert_tree_close(g_fast, g_ref, rtol=1e-4, atol=1e-5)


def test_capsule_routing_forward_mode_equals_the_reference(rng):
    # plain autodiff through the scans: jax.jvp works too (no custom_vjp in the path)
    u, weights = routing_problem(rng, 2, 5, 3, 3, 4)
    du, dw = rng.normal(size=u.shape).astype(np.float32), rng.normal(size=weights.shape).astype(np.float32)
    fast = jax.jvp(lambda u, w: routing.capsule_routing(u, w, chunk_size=2), (u, weights), (du, dw))
    ref = jax.jvp(lambda u, w: routing.dynamic_routing_reference(routing.capsule_votes_reference(u, w)),
                  (u, weights), (du, dw))  # fmt: skip
    assert_tree_close(fast, ref, rtol=1e-4, atol=1e-5)


def test_capsule_routing_gradients_keep_the_inputs_dtypes(rng):
    u, weights = routing_problem(rng, 2, 4, 3, 3, 5)
    grads = jax.grad(lambda u, w: jnp.sum(routing.capsule_routing(u, w).astype(jnp.float32)), argnums=(0, 1))(
        jnp.asarray(u, jnp.bfloat16), jnp.asarray(weights))
    assert [g.dtype for g in grads] == [jnp.bfloat16, jnp.float32]


def test_capsule_routing_rejects_bad_input():
    u = np.zeros((2, 5, 4), np.float32)
    with pytest.raises(ValueError, match=r"capsule_routing: `weights` must have shape \[I, Din, J, Dout\] = \[5, 4, J, Dout\]; got shape \(4, 3, 6\)"):
        routing.capsule_routing(u, np.zeros((4, 3, 6), np.float32))
    with pytest.raises(ValueError, match=r"capsule_routing: `weights` must have shape .*got shape \(6, 4, 3, 6\)"):
        routing.capsule_routing(u, np.zeros((6, 4, 3, 6), np.float32))
    with pytest.raises(ValueError, match=r"capsule_routing: `u` must have shape \[B, I, Din\].*got shape \(5, 4\)"):
        routing.capsule_routing(u[0], np.zeros((5, 4, 3, 6), np.float32))
    with pytest.raises(ValueError, match=r"`variant` must be one of"):
        routing.capsule_routing(u, np.zeros((5, 4, 3, 6), np.float32), variant="x")
    for bad in (0, 2.0, True):
        message = f"capsule_routing: `chunk_size` must be an int >= 1; got {bad!r}"
        with pytest.raises(ValueError, match=re.escape(message)):
            routing.capsule_routing(u, np.zeros((5, 4, 3, 6), np.float32), chunk_size=bad)


# --------------------------------------------------------------------------- #
# EM routing
# --------------------------------------------------------------------------- #


def em_problem(rng, b=2, i=5, j=3, p=4, per_parent_beta=True):
    votes = rng.normal(size=(b, i, j, p)).astype(np.float32)
    a_in = rng.uniform(0.05, 1.0, size=(b, i)).astype(np.float32)
    shape = (j,) if per_parent_beta else ()
    beta_u = rng.normal(size=shape).astype(np.float32)
    beta_a = rng.normal(size=shape).astype(np.float32)
    return votes, a_in, beta_u, beta_a


@pytest.mark.parametrize("num_iters", [1, 2, 3])
@pytest.mark.parametrize("per_parent_beta", [True, False])
def test_em_routing_matches_reference(rng, num_iters, per_parent_beta):
    for _ in range(2):
        args = em_problem(rng, i=int(rng.integers(1, 6)), j=int(rng.integers(2, 5)), per_parent_beta=per_parent_beta)
        kw = dict(num_iters=num_iters, inverse_temperature=0.5, return_responsibilities=True)
        assert_tree_close(routing.em_routing(*args, **kw), routing.em_routing_reference(*args, **kw), rtol=1e-4, atol=1e-5)


def test_em_routing_gradients_match_reference(rng):
    # one sample: the reference differentiates thousands of eager scalar ops per sample, and
    # the value tests above already cover batches
    votes, a_in, beta_u, beta_a = em_problem(rng, b=1)
    probe_m = rng.normal(size=(1, 3, 4)).astype(np.float32)
    probe_a = rng.normal(size=(1, 3)).astype(np.float32)

    def loss(fn, *args):
        mean, act = fn(*args, num_iters=3, inverse_temperature=0.5)
        return jnp.sum(mean * probe_m) + jnp.sum(act * probe_a)

    def both(*args):
        g_fast = jax.grad(functools.partial(loss, routing.em_routing), argnums=(0, 1, 2, 3))(*args)
        g_ref = jax.grad(functools.partial(loss, routing.em_routing_reference), argnums=(0, 1, 2, 3))(*args)
        return g_fast, g_ref

    assert_tree_close(*both(votes, a_in, beta_u, beta_a), rtol=1e-4, atol=1e-5)  # float32: rounding only
    with jax.enable_x64(True):  # in float64 the two orders of summation agree to rounding of 1e-16
        assert_tree_close(*both(*(np.asarray(x, np.float64) for x in (votes, a_in, beta_u, beta_a))), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("num_iters", [1, 2, 3])
def test_em_routing_hand_vjp_equals_autodiff_of_its_forward_pass(rng, num_iters):
    # The hand-written backward pass against jax.grad of the same forward pass, float64, with
    # cotangents on all three outputs, scalar and per-parent betas, both amount scalings, and
    # children (or whole samples) with zero activation (the amount-floor branch).
    with jax.enable_x64(True):
        for trial in range(4):
            b, i, j, p = (int(rng.integers(1, 4)), int(rng.integers(1, 7)), int(rng.integers(1, 5)),
                          int(rng.integers(1, 6)))  # fmt: skip
            votes = rng.normal(size=(b, i, j, p))
            a_in = rng.uniform(0.0, 1.0, size=(b, i))
            if trial == 1:
                a_in[0] = 0.0
            if trial == 2:
                a_in[:, 0] = 0.0
            beta_shape = (j,) if trial % 2 else ()
            beta_u, beta_a = rng.normal(size=beta_shape), rng.normal(size=beta_shape)
            probes = rng.normal(size=(b, j, p)), rng.normal(size=(b, j)), rng.normal(size=(b, i, j))
            static = (num_iters, float(rng.uniform(0.1, 2.0)), 1e-4, bool(trial % 3))

            def loss(fn, *args):
                return sum(jnp.sum(out * probe) for out, probe in zip(fn(*args), probes, strict=True))

            hand = functools.partial(loss, lambda *args: routing._em_routing_vjp(*args, *static))
            auto = functools.partial(loss, lambda *args: routing._em_iterations(*args, *static)[0])
            args = (votes, a_in, beta_u, beta_a, None, None)
            g_hand = jax.jit(jax.grad(hand, argnums=(0, 1, 2, 3)))(*args)  # jitted: eager dispatch took 30 s
            g_auto = jax.jit(jax.grad(auto, argnums=(0, 1, 2, 3)))(*args)
            for got, want in zip(g_hand, g_auto, strict=True):
                assert got.shape == want.shape and got.dtype == want.dtype
                # zero activations put 1/tiny = 1e12 into some entries: tolerances scale with them
                scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
                np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10 * scale)


def test_em_responsibilities_sum_to_one_and_activations_in_unit_interval(rng):
    votes, a_in, beta_u, beta_a = em_problem(rng, b=3, i=12, j=6, p=16)
    mean, act, resp = routing.em_routing(votes, a_in, beta_u, beta_a, inverse_temperature=0.1, return_responsibilities=True)
    assert mean.shape == (3, 6, 16) and act.shape == (3, 6) and resp.shape == (3, 12, 6)
    assert_close(np.sum(resp, axis=-1), np.ones((3, 12)))
    assert np.all((np.asarray(act) > 0) & (np.asarray(act) < 1))


@pytest.mark.parametrize("case", ["offset", "outlier_child", "tight_clusters"])
def test_em_routing_float32_error_on_ill_conditioned_votes(rng, case):
    # The M-step's one-pass variance after the first iteration (S2 − 2δS1 + δ²S0 about the
    # last means) against float64: votes far from 0 with a small spread, a first child far
    # from the rest, and tight clusters far apart (the means move by ~300σ between
    # iterations, where the one-pass formula loses about eps·(δ/σ)²). Measured max relative
    # errors over seeds 0-2 (means, activations, responsibilities): offset <= 7e-4 (the
    # two-pass formula it replaced: 3.5e-3), outlier child <= 8.4e-4 (the same), tight
    # clusters <= 3.5e-5 (two-pass: 4e-6). A shift at the first child's vote instead of the
    # first iteration's mean gave 9e-2 on the outlier case (batch 64).
    b, i, j, p = 4, 24, 6, 16
    noise = rng.normal(size=(b, i, j, p))
    if case == "offset":
        votes = 100.0 + 0.01 * noise
    elif case == "outlier_child":
        votes = 0.05 * noise
        votes[:, 0] += 5.0
    else:
        centres = 3.0 * rng.normal(size=(b, 4, j, p))
        votes = centres[:, rng.integers(0, 4, size=i)] + 0.01 * noise
    a_in = rng.uniform(0.05, 1.0, size=(b, i))
    beta_u, beta_a = rng.normal(size=(j,)), rng.normal(size=(j,))
    kw = dict(num_iters=3, inverse_temperature=0.01, return_responsibilities=True)
    with jax.enable_x64(True):
        want = routing.em_routing(votes, a_in, beta_u, beta_a, **kw)
    got = routing.em_routing(*(np.asarray(x, np.float32) for x in (votes, a_in, beta_u, beta_a)), **kw)
    bounds = {"offset": 5e-3, "outlier_child": 2e-3, "tight_clusters": 1e-4}[case]
    for name, g, w in zip(("mean", "activations", "responsibilities"), got, want, strict=True):
        w = np.asarray(w)
        err = np.max(np.abs(np.asarray(g, np.float64) - w)) / np.max(np.abs(w))
        assert err <= bounds, (case, name, err)


@pytest.mark.parametrize("case", ["identical_votes", "single_child", "zero_activations", "huge_votes"])
def test_em_routing_degenerate_inputs_stay_finite(rng, case):
    votes, a_in, beta_u, beta_a = em_problem(rng, b=2, i=6, j=4, p=16)
    if case == "identical_votes":
        votes = np.broadcast_to(votes[:, :1, :1], votes.shape).copy()
    elif case == "single_child":
        votes, a_in = votes[:, :1], a_in[:, :1]
    elif case == "zero_activations":
        a_in = np.zeros_like(a_in)
    else:
        votes = votes * 1e4

    def loss(v, a):
        mean, act, resp = routing.em_routing(v, a, beta_u, beta_a, inverse_temperature=0.1, return_responsibilities=True)
        return jnp.sum(mean) + jnp.sum(act), (mean, act, resp)

    (_, (mean, act, resp)), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(votes, a_in)
    for x in (mean, act, resp, *grads):
        assert np.all(np.isfinite(np.asarray(x))), case
    assert np.all((np.asarray(act) >= 0) & (np.asarray(act) <= 1))
    assert_close(np.sum(resp, axis=-1), np.ones(resp.shape[:2]))


@pytest.mark.parametrize("estimate", ["exact", "zeros", "off_by_noise"])
def test_em_routing_initial_mean_changes_only_rounding(rng, estimate):
    # initial_mean is only the shift of the first M-step's sums: the exact first means, a
    # crude one (zeros) or a perturbed one give the same outputs and gradients up to float32
    # rounding; no gradient flows into it.
    votes, a_in, beta_u, beta_a = em_problem(rng, b=3, i=9, j=4, p=16)
    votes = votes + 2.0  # means away from 0, so a zero shift is a real change
    weight = a_in / 4.0
    exact = np.einsum("bi,bijp->bjp", weight / weight.sum(1, keepdims=True), votes)
    shift = {"exact": exact, "zeros": np.zeros_like(exact),
             "off_by_noise": exact + rng.normal(size=exact.shape).astype(np.float32)}[estimate]  # fmt: skip
    probes = rng.normal(size=(3, 4, 16)), rng.normal(size=(3, 4)), rng.normal(size=(3, 9, 4))
    kw = dict(num_iters=3, inverse_temperature=0.1, return_responsibilities=True)

    def loss(v, a, bu, ba, shift):
        out = routing.em_routing(v, a, bu, ba, initial_mean=shift, **kw)
        return sum(jnp.sum(o * pr) for o, pr in zip(out, probes, strict=True)), out

    (_, got), g_got = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True))(
        votes, a_in, beta_u, beta_a, shift)  # fmt: skip
    (_, want), g_want = jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)(votes, a_in, beta_u, beta_a, None)
    assert_tree_close(got, want, rtol=1e-4, atol=1e-5)
    assert_tree_close(g_got[:4], g_want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(g_got[4], np.zeros_like(shift))
    with pytest.raises(ValueError, match=r"em_routing: `initial_mean` must have shape \[B, J, P\] = \(3, 4, 16\); got shape \(3, 4\)"):
        routing.em_routing(votes, a_in, beta_u, beta_a, initial_mean=shift[..., 0])


@pytest.mark.parametrize("with_initial_mean", [False, True])
def test_em_routing_vote_factors_give_the_same_routing(rng, with_initial_mean):
    # vote_factors only change how the M-steps' sums over children are computed (a scan over
    # groups that recomputes the votes from their factors): outputs and gradients equal the
    # votes-only path's, in float64 to 1e-10 (summation order is all that differs), on fresh
    # random shapes; the factors get no gradient.
    with jax.enable_x64(True):
        for _ in range(3):
            b, g, c, j = (int(rng.integers(1, 4)), int(rng.integers(1, 4)), int(rng.integers(1, 4)),
                          int(rng.integers(1, 5)))  # fmt: skip
            poses, transforms = rng.normal(size=(b, g, c, 4, 4)), rng.normal(size=(g, c, j, 4, 4))
            votes = np.einsum("bgcxy,gcjyz->bgcjxz", poses, transforms).reshape(b, g * c, j, 16)
            a_in = rng.uniform(0.05, 1.0, size=(b, g * c))
            beta_u, beta_a = rng.normal(size=(j,)), rng.normal(size=())
            shift = rng.normal(size=(b, j, 16)) if with_initial_mean else None
            probes = rng.normal(size=(b, j, 16)), rng.normal(size=(b, j)), rng.normal(size=(b, g * c, j))
            kw = dict(num_iters=3, inverse_temperature=float(rng.uniform(0.1, 1.0)), return_responsibilities=True)

            def loss(v, a, bu, ba, factors):
                out = routing.em_routing(v, a, bu, ba, initial_mean=shift, vote_factors=factors, **kw)
                return sum(jnp.sum(o * pr) for o, pr in zip(out, probes, strict=True)), out

            grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True))
            (_, got), g_got = grad(votes, a_in, beta_u, beta_a, (poses, transforms))
            (_, want), g_want = jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)(
                votes, a_in, beta_u, beta_a, None)  # fmt: skip
            assert_tree_close(got, want, rtol=1e-10, atol=1e-10)
            assert_tree_close(g_got[:4], g_want, rtol=1e-9, atol=1e-9)
            for g_factor in g_got[4]:
                np.testing.assert_array_equal(g_factor, np.zeros_like(g_factor))
    # float32, the model's shape class (groups of kernel offsets): within float32 rounding
    poses = rng.normal(size=(5, 9, 2, 4, 4)).astype(np.float32)
    transforms = rng.normal(size=(9, 2, 3, 4, 4)).astype(np.float32)
    votes = np.einsum("bgcxy,gcjyz->bgcjxz", poses, transforms).reshape(5, 18, 3, 16)
    a_in = rng.uniform(0.0, 1.0, size=(5, 18)).astype(np.float32)
    args = (votes, a_in, np.float32(0.1), np.float32(0.2))
    assert_tree_close(routing.em_routing(*args, vote_factors=(poses, transforms)), routing.em_routing(*args),
                      rtol=1e-4, atol=1e-5)  # fmt: skip


def test_em_routing_rejects_bad_vote_factors(rng):
    poses, transforms = rng.normal(size=(2, 3, 2, 4, 4)), rng.normal(size=(3, 2, 4, 4, 4))
    votes = np.einsum("bgcxy,gcjyz->bgcjxz", poses, transforms).reshape(2, 6, 4, 16).astype(np.float32)
    a_in = rng.uniform(size=(2, 6)).astype(np.float32)
    args = (votes, a_in, 0.0, 0.0)
    with pytest.raises(ValueError, match=r"em_routing: `vote_factors` must be a pair"):
        routing.em_routing(*args, vote_factors=poses)
    with pytest.raises(ValueError, match=re.escape("em_routing: `vote_factors[0] (poses)` must have shape [B, G, C, 4, 4] "
                                                   "with B = 2 and G·C = I = 6; got shape (2, 3, 3, 4, 4)")):
        routing.em_routing(*args, vote_factors=(np.zeros((2, 3, 3, 4, 4)), transforms))
    with pytest.raises(ValueError, match=re.escape("em_routing: `vote_factors[1] (transforms)` must have shape "
                                                   "[G, C, J, 4, 4] = (3, 2, 4, 4, 4) for votes with P = 16 (P is 16); "
                                                   "got shape (3, 2, 5, 4, 4)")):
        routing.em_routing(*args, vote_factors=(poses, np.zeros((3, 2, 5, 4, 4))))
    with pytest.raises(ValueError, match=r"\(P is 8\)"):
        routing.em_routing(votes[..., :8], a_in, 0.0, 0.0, vote_factors=(poses, transforms))


def test_zero_activations_pad_em_routing_exactly_without_amount_normalisation(rng):
    """Children of activation 0 (any votes) weigh nothing in the M-steps, so padding with them keeps
    the parents unchanged, when the amount is not rescaled by J/I (``normalize_amount=False``; with
    it, I counts the padded children)."""
    votes, a_in, beta_u, beta_a = em_problem(rng, b=2, i=5, j=3, p=16)
    real = np.sort(rng.choice(8, size=5, replace=False))
    votes_pad = rng.normal(size=(2, 8, 3, 16)).astype(np.float32)
    votes_pad[:, real] = votes
    a_pad = np.zeros((2, 8), np.float32)
    a_pad[:, real] = a_in
    kw = dict(normalize_amount=False, inverse_temperature=0.5)
    want = routing.em_routing(votes, a_in, beta_u, beta_a, **kw)
    assert_tree_close(routing.em_routing(votes_pad, a_pad, beta_u, beta_a, **kw), want, rtol=1e-4, atol=1e-5)
    _, rescaled = routing.em_routing(votes_pad, a_pad, beta_u, beta_a, inverse_temperature=0.5)
    _, unpadded = routing.em_routing(votes, a_in, beta_u, beta_a, inverse_temperature=0.5)
    assert np.max(np.abs(np.asarray(rescaled) - np.asarray(unpadded))) > 1e-4


def test_em_routing_jit_vmap_invariance(rng):
    votes, a_in, beta_u, beta_a = em_problem(rng, b=3)
    eager = routing.em_routing(votes, a_in, beta_u, beta_a)
    jitted = jax.jit(routing.em_routing)(votes, a_in, beta_u, beta_a)
    per_sample = jax.vmap(lambda v, a: jax.tree.map(lambda x: x[0], routing.em_routing(v[None], a[None], beta_u, beta_a)))(
        votes, a_in
    )
    assert_tree_close(jitted, eager)
    assert_tree_close(per_sample, eager)


def test_em_routing_rejects_bad_input(rng):
    votes, a_in, beta_u, beta_a = em_problem(rng)
    with pytest.raises(ValueError, match=r"em_routing: `activations_in` must have shape \[B, I\] = \(2, 5\); got shape \(2, 4\)"):
        routing.em_routing(votes, a_in[:, :4], beta_u, beta_a)
    with pytest.raises(ValueError, match=r"`beta_a` must have shape \[\] or \[J\] = \(3,\); got shape \(4,\)"):
        routing.em_routing(votes, a_in, beta_u, np.zeros(4, np.float32))
    with pytest.raises(ValueError, match=r"`min_var` must be > 0"):
        routing.em_routing(votes, a_in, beta_u, beta_a, min_var=0.0)
    logits = np.asarray(a_in) * 4 - 2  # pre-sigmoid values in place of activations
    with pytest.raises(ValueError, match=r"`activations_in` must lie in \[0, 1\] \(probabilities, not logits\); got values in \[-"):
        routing.em_routing(votes, logits, beta_u, beta_a)
    # under jit the values are unknown: the shape checks alone run (the value check is eager-only)
    jax.jit(routing.em_routing)(votes, a_in, beta_u, beta_a)


# --------------------------------------------------------------------------- #
# convolutional capsules
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("stride", [1, 2])
def test_conv_capsule_votes_matches_reference(rng, stride):
    poses = rng.normal(size=(2, 5, 6, 3, 4, 4)).astype(np.float32)
    weights = rng.normal(size=(3, 3, 3, 2, 4, 4)).astype(np.float32)
    fast = routing.conv_capsule_votes(poses, weights, stride=stride)
    ref = routing.conv_capsule_votes_reference(poses, weights, stride=stride)
    assert fast.shape == ref.shape == (2, (5 - 3) // stride + 1, (6 - 3) // stride + 1, 27, 2, 16)
    assert_close(fast, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_conv_capsule_initial_mean_is_the_weighted_mean_of_the_votes(rng, stride):
    # The first M-step's means by one matmul against the votes of the loop reference,
    # weighted by the patch's activations; a patch with zero activations gets 0 (floored
    # amount), as em_routing's first M-step gives it.
    poses = rng.normal(size=(2, 5, 6, 3, 4, 4)).astype(np.float32)
    activations = rng.uniform(0.05, 1.0, size=(2, 5, 6, 3)).astype(np.float32)
    activations[1] = 0.0
    weights = rng.normal(size=(3, 3, 3, 2, 4, 4)).astype(np.float32)
    got = jax.jit(functools.partial(routing.conv_capsule_initial_mean, stride=stride))(poses, activations, weights)
    votes = np.asarray(routing.conv_capsule_votes_reference(poses, weights, stride=stride))  # [B, H', W', I, D, 16]
    a = np.asarray(routing.extract_patches(activations, 3, stride)).reshape(votes.shape[:4])
    total = a.sum(-1, keepdims=True)
    want = np.einsum("bhwi,bhwidp->bhwdp", np.where(total > 0, a / np.maximum(total, 1e-30), 0.0), votes)
    assert got.shape == want.shape == (2, (5 - 3) // stride + 1, (6 - 3) // stride + 1, 2, 16)
    assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(got[1]) == 0.0)
    # the same as em_routing's own first pass: one iteration's means agree with and without it
    b, ho, wo = votes.shape[:3]
    flat = dict(votes=votes.reshape(b * ho * wo, 27, 2, 16), activations_in=a.reshape(b * ho * wo, 27),
                beta_u=0.0, beta_a=0.0, num_iters=1)  # fmt: skip
    assert_tree_close(routing.em_routing(**flat, initial_mean=np.asarray(got).reshape(b * ho * wo, 2, 16)),
                      routing.em_routing(**flat), rtol=1e-5, atol=1e-5)  # fmt: skip
    with pytest.raises(ValueError, match=r"conv_capsule_initial_mean: `activations` must have shape \[B, H, W, C\] = \(2, 5, 6, 3\); got shape \(2, 5, 6\)"):
        routing.conv_capsule_initial_mean(poses, activations[..., 0], weights)


@pytest.mark.parametrize("batch_shape", [(2, 3), ()])
def test_pose_products_vjp_equals_autodiff_of_the_einsum(rng, batch_shape):
    """The hand-written backward of the votes against autodiff of the plain contraction,
    with two batch axes or none, and a cotangent that is not a function of the output."""
    patches = rng.normal(size=(*batch_shape, 5, 3, 4, 4)).astype(np.float32)
    weights = rng.normal(size=(5, 3, 2, 4, 4)).astype(np.float32)
    probe = rng.normal(size=(*batch_shape, 5, 3, 2, 4, 4)).astype(np.float32)

    def einsum(p, w):
        return jnp.einsum("...kcxy,kcdyz->...kcdxz", p, w)

    assert_close(jax.jit(routing.pose_products)(patches, weights), einsum(patches, weights), rtol=1e-5, atol=1e-5)
    want = jax.grad(lambda p, w: jnp.sum(einsum(p, w) * probe), argnums=(0, 1))(patches, weights)
    got = jax.jit(jax.grad(lambda p, w: jnp.sum(routing.pose_products(p, w) * probe), argnums=(0, 1)))(patches, weights)
    for a, b in zip(got, want):
        assert_close(a, b, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match=r"`weights` must have shape \[K, C, D, 4, 4\] with K, C = \(5, 3\); got shape \(1, 3, 2, 4, 4\)"):
        routing.pose_products(patches, weights[:1])
    bad = re.escape(str((*batch_shape, 5, 3, 4, 3)))
    with pytest.raises(ValueError, match=r"`patches` must have shape \[\.\.\., K, C, 4, 4\]; got shape " + bad):
        routing.pose_products(patches[..., :3], weights)


def test_conv_capsule_votes_rejects_bad_weights():
    with pytest.raises(ValueError, match=r"`weights` must have shape \[K, K, C, D, 4, 4\] with C = 3"):
        routing.conv_capsule_votes(np.zeros((1, 5, 5, 3, 4, 4), np.float32), np.zeros((3, 3, 2, 2, 4, 4), np.float32))
