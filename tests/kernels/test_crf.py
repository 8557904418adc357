"""kernels/crf.py against exact oracles: brute-force enumeration of all K^T paths."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import crf
from tests.helpers import count_compilations

ATOL = 1e-5
SCHEMES = {
    "BIO": ["O", "B-X", "I-X", "B-Y"],
    "BIOES": ["O", "B-X", "I-X", "E-X", "S-X"],
    "BMES": ["b", "m", "e", "s"],
}


def random_problem(rng, b=6, t=5, k=4, with_start_end=True, scale=2.0):
    """Fresh random CRF inputs; lengths always include 1 and T."""
    emissions = (scale * rng.normal(size=(b, t, k))).astype(np.float32)
    transitions = (scale * rng.normal(size=(k, k))).astype(np.float32)
    lengths = rng.integers(1, t + 1, size=b).astype(np.int32)
    lengths[0], lengths[-1] = 1, t
    tags = rng.integers(0, k, size=(b, t)).astype(np.int32)
    start = end = None
    if with_start_end:
        start = rng.normal(size=k).astype(np.float32)
        end = rng.normal(size=k).astype(np.float32)
    return emissions, transitions, lengths, tags, start, end


def cases():
    """(with_start_end, scheme or None, method) combinations."""
    return [
        pytest.param(with_se, scheme, method, id=f"se={with_se}-{scheme}-{method}")
        for with_se, scheme, method in itertools.product(
            [False, True], [None, *SCHEMES], list(crf.METHODS)
        )
    ]


def valid_tags(rng, allowed, lengths, t):
    """Random gold paths that respect the constraints: a random walk over allowed moves."""
    tags = np.zeros((len(lengths), t), np.int32)
    for b, n in enumerate(lengths):
        for _ in range(1000):
            path = [rng.choice(np.flatnonzero(allowed.start))]
            for i in range(1, n):
                nxt = allowed.pairs[path[-1]] & (allowed.end if i == n - 1 else True)
                if not nxt.any():
                    break
                path.append(rng.choice(np.flatnonzero(nxt)))
            if len(path) == n and allowed.end[path[-1]]:
                tags[b, :n] = path
                break
        else:
            raise AssertionError("no valid path found")
    return tags


@pytest.mark.parametrize("with_se,scheme,method", cases())
def test_log_partition_viterbi_marginals_match_brute_force(rng, with_se, scheme, method):
    k = len(SCHEMES[scheme]) if scheme else 4
    e, tr, lengths, _, st, en = random_problem(rng, k=k, with_start_end=with_se)
    allowed = crf.allowed_transitions(scheme, SCHEMES[scheme]) if scheme else None
    oracle = crf.crf_brute_force(e, tr, lengths, start=st, end=en, allowed=allowed)
    kw = dict(start=st, end=en, allowed=allowed)

    log_z = crf.crf_log_partition(e, tr, lengths, method=method, **kw)
    np.testing.assert_allclose(log_z, oracle["log_z"], atol=ATOL, rtol=1e-6)

    marginals = crf.crf_marginals(e, tr, lengths, method=method, **kw)
    np.testing.assert_allclose(marginals, oracle["marginals"], atol=ATOL)

    tags, score = crf.crf_viterbi(e, tr, lengths, **kw)
    np.testing.assert_array_equal(tags, oracle["best_tags"])
    np.testing.assert_allclose(score, oracle["best_score"], atol=ATOL, rtol=1e-6)


@pytest.mark.parametrize("with_se,scheme,method", cases())
def test_sequence_score_and_likelihood_gradients(rng, with_se, scheme, method):
    """d log p(y|x) / d emissions = onehot(y) − marginals; d / d transitions = counts − pair marginals."""
    k = len(SCHEMES[scheme]) if scheme else 4
    e, tr, lengths, tags, st, en = random_problem(rng, k=k, with_start_end=with_se)
    allowed = crf.allowed_transitions(scheme, SCHEMES[scheme]) if scheme else None
    if allowed is not None:
        tags = valid_tags(rng, allowed, lengths, e.shape[1])
    kw = dict(start=st, end=en, allowed=allowed)

    score = crf.crf_sequence_score(e, tr, lengths, tags, **kw)
    np.testing.assert_allclose(
        score, crf.crf_sequence_score_reference(e, tr, lengths, tags, **kw), atol=ATOL, rtol=1e-6
    )

    def total_ll(e, tr, st, en):
        return jnp.sum(crf.crf_log_likelihood(e, tr, lengths, tags, method=method, start=st, end=en, allowed=allowed))

    argnums = (0, 1, 2, 3) if with_se else (0, 1)
    grads = jax.grad(total_ll, argnums=argnums)(e, tr, st, en)
    grad_e, grad_tr = grads[:2]
    oracle = crf.crf_brute_force(e, tr, lengths, **kw)
    valid = np.arange(e.shape[1])[None, :] < lengths[:, None]
    onehot = np.eye(k)[tags] * valid[..., None]
    np.testing.assert_allclose(grad_e, onehot - oracle["marginals"], atol=ATOL)
    if with_se:
        # d / d start = gold first tags − first-position marginals; d / d end the same at each last position.
        last = lengths - 1
        batch = np.arange(len(lengths))
        np.testing.assert_allclose(grads[2], (onehot[:, 0] - oracle["marginals"][:, 0]).sum(0), atol=ATOL)
        expected_end = (onehot[batch, last] - oracle["marginals"][batch, last]).sum(0)
        np.testing.assert_allclose(grads[3], expected_end, atol=ATOL)

    # Pair marginals by brute force: P(y_t = i, y_{t+1} = j), summed over t and batch.
    expected_tr = np.zeros((k, k))
    ref_e, ref_tr, ref_st, ref_en = crf._reference_inputs(e, tr, st, en, allowed)
    for b, n in enumerate(lengths):
        paths = np.array(list(itertools.product(range(k), repeat=int(n))))
        s = ref_st[paths[:, 0]] + ref_en[paths[:, -1]] + ref_e[b, np.arange(n), paths].sum(1)
        if n > 1:
            s = s + ref_tr[paths[:, :-1], paths[:, 1:]].sum(1)
        p = np.exp(s - oracle["log_z"][b])
        for t in range(int(n) - 1):
            np.add.at(expected_tr, (paths[:, t], paths[:, t + 1]), -p)
            expected_tr[tags[b, t], tags[b, t + 1]] += 1
    if allowed is not None:
        expected_tr[~allowed.pairs] = 0.0  # forbidden entries are constants
    np.testing.assert_allclose(grad_tr, expected_tr, atol=1e-4)


def test_reference_twins_match_fast_path_on_larger_inputs(rng):
    e, tr, lengths, tags, st, en = random_problem(rng, b=8, t=40, k=9, scale=5.0)
    kw = dict(start=st, end=en)
    np.testing.assert_allclose(
        crf.crf_log_partition(e, tr, lengths, **kw),
        crf.crf_log_partition_reference(e, tr, lengths, **kw),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        crf.crf_marginals(e, tr, lengths, **kw),
        crf.crf_marginals_reference(e, tr, lengths, **kw),
        atol=1e-4,
    )
    tags_fast, score_fast = crf.crf_viterbi(e, tr, lengths, **kw)
    tags_ref, score_ref = crf.crf_viterbi_reference(e, tr, lengths, **kw)
    np.testing.assert_array_equal(tags_fast, tags_ref)
    np.testing.assert_allclose(score_fast, score_ref, rtol=1e-5)


def test_scan_and_associative_agree_on_long_sequences(rng):
    e, tr, lengths, tags, st, en = random_problem(rng, b=4, t=300, k=5)
    kw = dict(start=st, end=en)
    a = crf.crf_log_partition(e, tr, lengths, method="scan", **kw)
    b = crf.crf_log_partition(e, tr, lengths, method="associative", **kw)
    np.testing.assert_allclose(a, b, rtol=2e-5)
    np.testing.assert_allclose(a, crf.crf_log_partition_reference(e, tr, lengths, **kw), rtol=2e-5)


def test_large_score_gaps_stay_exact(rng):
    """Confident models: scores spanning hundreds of nats take the exact-logsumexp branch
    of the forward and of the hand-written backward; both must stay finite and exact."""
    e, tr, lengths, tags, _, _ = random_problem(rng, b=4, t=30, k=9, scale=80.0)
    allowed = crf.allowed_transitions("BMES", ["O", "B-A", "M-A", "E-A", "S-A", "B-B", "M-B", "E-B", "S-B"])
    tags = valid_tags(rng, allowed, lengths, e.shape[1])
    ll, grads = jax.value_and_grad(
        lambda e: jnp.sum(crf.crf_log_likelihood(e, tr, lengths, tags, allowed=allowed))
    )(e)
    assert np.isfinite(ll) and np.all(np.isfinite(grads))
    np.testing.assert_allclose(
        crf.crf_log_partition(e, tr, lengths, allowed=allowed),
        crf.crf_log_partition_reference(e, tr, lengths, allowed=allowed),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        crf.crf_marginals(e, tr, lengths, allowed=allowed),
        crf.crf_marginals_reference(e, tr, lengths, allowed=allowed),
        atol=1e-4,
    )
    # Transition gradients: hand-written VJP (scan) against autodiff (associative).
    grad_tr = {
        method: jax.grad(lambda tr: jnp.sum(crf.crf_log_partition(e, tr, lengths, allowed=allowed, method=method)))(tr)
        for method in crf.METHODS
    }
    np.testing.assert_allclose(grad_tr["scan"], grad_tr["associative"], atol=1e-4)


def test_long_sequences_do_not_drift_in_float32(rng):
    """log Z of T=1024 accumulates 1023 shifts; compensated summation keeps it at eps level."""
    e, tr, lengths, _, st, en = random_problem(rng, b=4, t=1024, k=4, scale=1.0)
    fast = np.asarray(crf.crf_log_partition(e, tr, lengths, start=st, end=en), np.float64)
    ref = crf.crf_log_partition_reference(e, tr, lengths, start=st, end=en)
    np.testing.assert_allclose(fast, ref, rtol=3e-7)


def test_jit_and_vmap_do_not_change_results(rng):
    e, tr, lengths, tags, st, en = random_problem(rng)
    eager = crf.crf_log_likelihood(e, tr, lengths, tags, start=st, end=en)
    jitted = jax.jit(lambda *a: crf.crf_log_likelihood(*a, start=st, end=en))(e, tr, lengths, tags)
    np.testing.assert_allclose(jitted, eager, atol=ATOL)
    # vmap over an extra leading axis of independent batches.
    stacked = [np.stack([x, x[::-1]]) for x in (e, lengths, tags)]
    mapped = jax.vmap(lambda e, l, y: crf.crf_log_likelihood(e, tr, l, y, start=st, end=en))(*stacked)
    np.testing.assert_allclose(mapped[0], eager, atol=ATOL)
    np.testing.assert_allclose(mapped[1], eager[::-1], atol=ATOL)
    v_tags, _ = jax.vmap(lambda e, l: crf.crf_viterbi(e, tr, l))(stacked[0], stacked[1])
    np.testing.assert_array_equal(v_tags[0], crf.crf_viterbi(e, tr, lengths)[0])


def test_second_call_with_same_shapes_does_not_recompile(rng):
    e, tr, lengths, tags, st, en = random_problem(rng, b=3, t=7, k=5)
    crf.crf_log_likelihood(e, tr, lengths, tags)
    crf.crf_viterbi(e, tr, lengths)
    crf.crf_marginals(e, tr, lengths)
    e2, tr2, lengths2, tags2, _, _ = random_problem(rng, b=3, t=7, k=5)
    with count_compilations() as compiled:
        jax.block_until_ready(crf.crf_log_likelihood(e2, tr2, lengths2, tags2))
        jax.block_until_ready(crf.crf_viterbi(e2, tr2, lengths2))
        jax.block_until_ready(crf.crf_marginals(e2, tr2, lengths2))
    assert compiled == []


def test_count_compilations_sees_a_new_shape(rng):
    """Guards the guard: a fresh shape must register as a compilation."""
    e, tr, lengths, tags, _, _ = random_problem(rng, b=2, t=11, k=3)
    with count_compilations() as compiled:
        jax.block_until_ready(crf.crf_log_partition(e, tr, lengths))
    assert compiled


def test_lower_precision_emissions_accumulate_in_float32(rng):
    e, tr, lengths, tags, _, _ = random_problem(rng)
    out = crf.crf_log_partition(jnp.asarray(e, jnp.bfloat16), tr, lengths)
    assert out.dtype == jnp.float32
    ref = crf.crf_log_partition_reference(np.asarray(jnp.asarray(e, jnp.bfloat16), np.float32), tr, lengths)
    np.testing.assert_allclose(out, ref, rtol=1e-5)


@pytest.mark.parametrize(
    "make_args,match",
    [
        (lambda e, tr, l, y: (e[0], tr, l, y), r"`emissions` must have shape \[B, T, K\] \(rank 3\); got shape \(5, 4\)"),
        (lambda e, tr, l, y: (e, tr[:3], l, y), r"`transitions` must have shape \[K, K\] = \(4, 4\).*got shape \(3, 4\)"),
        (lambda e, tr, l, y: (e, tr, np.zeros_like(l), y), r"`lengths` must lie in 1..T = 1..5; got values \[0"),
        (lambda e, tr, l, y: (e, tr, l + 5, y), r"`lengths` must lie in 1..T = 1..5; got values"),
        (lambda e, tr, l, y: (e, tr, l.astype(np.float32), y), r"`lengths` must be an integer array; got dtype float32"),
        (lambda e, tr, l, y: (e, tr, l, np.full_like(y, 4)), r"`tags` must lie in 0..K-1 = 0..3 within each length; got values \[4"),
        (lambda e, tr, l, y: (e, tr, l, np.full_like(y, -1)), r"`tags` must lie in 0..K-1 = 0..3"),
        (lambda e, tr, l, y: (e, tr, l, y.astype(np.float32)), r"`tags` must be an integer array; got dtype float32"),
        (lambda e, tr, l, y: (e, tr, l, y[:, :2]), r"`tags` must have shape \[B, T\] = \(6, 5\); got shape \(6, 2\)"),
        (lambda e, tr, l, y: (e.astype(np.int32), tr, l, y), r"`emissions` must be floating point; got dtype int32"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(rng, make_args, match):
    e, tr, lengths, tags, _, _ = random_problem(rng, with_start_end=False)
    with pytest.raises(ValueError, match=match):
        crf.crf_log_likelihood(*make_args(e, tr, lengths, tags))


def test_bad_start_method_and_constraints_raise(rng):
    e, tr, lengths, _, _, _ = random_problem(rng)
    with pytest.raises(ValueError, match=r"`start` must have shape \[K\] = \(4,\); got shape \(3,\)"):
        crf.crf_viterbi(e, tr, lengths, start=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"`method` must be one of \('scan', 'associative'\); got 'loop'"):
        crf.crf_log_partition(e, tr, lengths, method="loop")
    with pytest.raises(ValueError, match=r"`allowed` \(start, end, pairs\) must have shapes"):
        crf.crf_viterbi(e, tr, lengths, allowed=crf.allowed_transitions("BIO", ["O", "B-X", "I-X"]))
    with pytest.raises(ValueError, match=r"label 'X-PER' does not fit scheme 'BIO'"):
        crf.allowed_transitions("BIO", ["O", "X-PER"])
    with pytest.raises(ValueError, match=r"scheme must be one of"):
        crf.allowed_transitions("IOB9", ["O"])


def test_padded_tag_values_are_ignored(rng):
    e, tr, lengths, tags, st, en = random_problem(rng)
    padded = tags.copy()
    padded[np.arange(e.shape[1])[None, :] >= lengths[:, None]] = -100  # torch-style pad
    np.testing.assert_allclose(
        crf.crf_log_likelihood(e, tr, lengths, padded), crf.crf_log_likelihood(e, tr, lengths, tags)
    )


def test_allowed_transitions_tables():
    bio = crf.allowed_transitions("BIO", ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])
    assert bio.start.tolist() == [True, True, False, True, False]
    assert bio.end.all()
    assert bio.pairs[1, 2] and bio.pairs[2, 2] and not bio.pairs[0, 2] and not bio.pairs[1, 4]
    bmes = crf.allowed_transitions("BMES", ["O", "B-PER", "M-PER", "E-PER", "S-PER"])
    assert bmes.start.tolist() == [True, True, False, False, True]
    assert bmes.end.tolist() == [True, False, False, True, True]
    # Inside a chunk only M/E of the same type may follow; after E/S/O anything but M/E.
    assert bmes.pairs[1].tolist() == [False, False, True, True, False]
    assert bmes.pairs[3].tolist() == [True, True, False, False, True]
    seg = crf.allowed_transitions("bmes", ["s", "b", "m", "e"])
    assert seg.pairs.sum() == 8  # s->{s,b}, b->{m,e}, m->{m,e}, e->{s,b}


def test_crf_is_differentiable_under_vmap_with_constraints(rng):
    """Constraints enter as constants: no gradient flows into forbidden entries; per-problem
    gradients under ``jax.vmap`` over a stack of problems equal the ones computed one by one."""
    allowed = crf.allowed_transitions("BIO", SCHEMES["BIO"])
    problems = [random_problem(rng) for _ in range(3)]
    e = np.stack([p[0] for p in problems])
    tr = np.stack([p[1] for p in problems])
    lengths = np.stack([p[2] for p in problems])
    tags = np.stack([valid_tags(rng, allowed, p[2], e.shape[2]) for p in problems])

    def grad_one(e, tr, lengths, tags):
        return jax.grad(lambda tr: jnp.sum(crf.crf_log_likelihood(e, tr, lengths, tags, allowed=allowed)))(tr)

    batched = jax.vmap(grad_one)(e, tr, lengths, tags)
    for i in range(len(problems)):
        np.testing.assert_allclose(batched[i], grad_one(e[i], tr[i], lengths[i], tags[i]), atol=ATOL)
        assert np.all(np.asarray(batched[i])[~allowed.pairs] == 0)
        assert np.any(np.asarray(batched[i])[allowed.pairs] != 0)
