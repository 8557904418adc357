"""Gaussian-mixture EM: monotone likelihood, exact half-steps, the numpy twin, scikit-learn
from the same start, dead components, vmap, bad inputs, and the benchmark's quick run."""

import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.mixture import em

COV_TYPES = ("full", "diag")


def mixture_data(rng, n=600, k=3, d=3, spread=6.0):
    """A well-separated mixture: k blobs with random correlated covariances."""
    centers = rng.normal(size=(k, d)) * spread
    labels = rng.integers(0, k, n)
    mix = rng.normal(size=(k, d, d)) * 0.6 + np.eye(d)
    x = np.einsum("nd,nde->ne", rng.normal(size=(n, d)), mix[labels]) + centers[labels]
    return x, centers


def random_init(rng, x, k):
    return x[rng.choice(len(x), k, replace=False)]


def sklearn_fit(x, init, covariance_type, **kwargs):
    from sklearn.mixture import GaussianMixture

    w, m, c = (np.asarray(a, np.float64) for a in init)
    w = w / w.sum()  # float32 weights sum to 1 only to ~1e-7; scikit-learn checks float64 normalisation
    prec = np.linalg.inv(c) if covariance_type == "full" else 1.0 / c
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GaussianMixture(len(w), covariance_type=covariance_type, weights_init=w, means_init=m, precisions_init=prec,
                               **kwargs).fit(x)  # fmt: skip


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_log_likelihood_never_decreases(rng, covariance_type):
    x, _ = mixture_data(rng, k=4)
    x = x.astype(np.float32)
    state, trace = em.fit_gmm(x, 4, covariance_type=covariance_type, init_means=random_init(rng, x, 4), tol=0.0,
                              max_iters=25, return_trace=True)  # fmt: skip
    trace = np.asarray(trace, np.float64)
    assert int(state.num_iters) == 25 and not bool(state.converged)  # tol 0: runs to max_iters
    assert np.all(np.isfinite(trace))
    assert np.all(np.diff(trace) >= -1e-5 * np.abs(trace[1:])), np.diff(trace)  # float32 rounding only
    assert float(state.log_likelihood) == trace[-1]
    # With a tolerance: stops early, NaN after the last iteration, the stopping rule holds.
    state, trace = em.fit_gmm(x, 4, covariance_type=covariance_type, init_means=random_init(rng, x, 4), tol=1e-3,
                              max_iters=60, return_trace=True)  # fmt: skip
    n, trace = int(state.num_iters), np.asarray(trace)
    assert bool(state.converged) and 1 < n < 60
    assert np.all(np.isfinite(trace[:n])) and np.all(np.isnan(trace[n:]))
    assert abs(trace[n - 1] - trace[n - 2]) < 1e-3 <= abs(trace[n - 2] - trace[n - 3]) if n > 2 else True


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_responsibilities_sum_to_one(rng, covariance_type):
    x, _ = mixture_data(rng)
    w, m, c = em.initial_parameters(x.astype(np.float32), random_init(rng, x, 3), covariance_type)
    log_resp, ll = em.e_step(x.astype(np.float32), w, m, c, covariance_type)
    assert log_resp.shape == (len(x), 3)
    np.testing.assert_allclose(np.exp(np.asarray(log_resp, np.float64)).sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(float(ll), float(jnp.mean(em.log_prob(x.astype(np.float32), w, m, c, covariance_type))),
                               rtol=1e-6)  # fmt: skip


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_log_prob_matches_direct_formula(rng, covariance_type):
    from scipy.stats import multivariate_normal

    k, d = 3, 4
    x = rng.normal(size=(50, d)) * 2
    weights = rng.dirichlet(np.ones(k))
    means = rng.normal(size=(k, d))
    if covariance_type == "full":
        a = rng.normal(size=(k, d, d))
        covs = a @ np.swapaxes(a, 1, 2) + 0.3 * np.eye(d)
        dens = [multivariate_normal(means[j], covs[j]).pdf(x) for j in range(k)]
    else:
        covs = rng.uniform(0.3, 3.0, size=(k, d))
        dens = [multivariate_normal(means[j], np.diag(covs[j])).pdf(x) for j in range(k)]
    expected = np.log(sum(w * p for w, p in zip(weights, dens)))
    with jax.enable_x64(True):
        got64 = em.log_prob(x, weights, means, covs, covariance_type)
        assert got64.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(got64), expected, rtol=1e-10)
    got32 = em.log_prob(x.astype(np.float32), weights, means, covs, covariance_type)
    assert got32.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got32), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_matches_numpy_reference(rng, covariance_type):
    x, _ = mixture_data(rng, n=400, k=3, d=3, spread=2.5)  # overlapping: several iterations
    init_means = random_init(rng, x, 3)
    ref, ref_trace = em.fit_gmm_reference(x, 3, covariance_type=covariance_type, init_means=init_means, tol=1e-4)
    assert ref.num_iters > 3
    with jax.enable_x64(True):
        got, trace = em.fit_gmm(x, 3, covariance_type=covariance_type, init_means=init_means, tol=1e-4, return_trace=True)
        assert got.means.dtype == jnp.float64
    assert int(got.num_iters) == ref.num_iters and bool(got.converged) == ref.converged
    for name in ("weights", "means", "covariances"):
        np.testing.assert_allclose(np.asarray(getattr(got, name)), getattr(ref, name), rtol=1e-9, atol=1e-10, err_msg=name)
    np.testing.assert_allclose(float(got.log_likelihood), ref.log_likelihood, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(trace), ref_trace, rtol=1e-12)
    # float32 fit from the same start lands on the same answer to float32 accuracy.
    got32 = em.fit_gmm(x.astype(np.float32), 3, covariance_type=covariance_type, init_means=init_means, tol=1e-4)
    np.testing.assert_allclose(np.asarray(got32.means), ref.means, atol=2e-3)
    assert abs(float(got32.log_likelihood) - ref.log_likelihood) < 1e-4


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_matches_sklearn_from_same_init(rng, covariance_type):
    x, _ = mixture_data(rng, n=1000, k=4, d=3)
    x32 = x.astype(np.float32)
    init = em.initial_parameters(x32, random_init(rng, x, 4), covariance_type)
    got = em.fit_gmm(x32, 4, covariance_type=covariance_type, init=dict(zip(("weights", "means", "covariances"), init)),
                     tol=1e-3, max_iters=100, reg_covar=1e-6)  # fmt: skip
    sk = sklearn_fit(x, init, covariance_type, tol=1e-3, max_iter=100, reg_covar=1e-6)
    assert int(got.num_iters) == sk.n_iter_ and bool(got.converged) == sk.converged_
    np.testing.assert_allclose(np.asarray(got.weights), sk.weights_, atol=1e-4)
    np.testing.assert_allclose(np.asarray(got.means), sk.means_, atol=1e-4)
    np.testing.assert_allclose(np.asarray(got.covariances), sk.covariances_, atol=1e-3, rtol=1e-3)
    assert abs(float(got.log_likelihood) - sk.lower_bound_) < 1e-4
    final = float(jnp.mean(em.log_prob(x32, got.weights, got.means, got.covariances, covariance_type)))
    assert abs(final - sk.score(x)) < 1e-4


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_dead_component_stays_finite(rng, covariance_type):
    x, _ = mixture_data(rng, n=300, k=2, d=2)
    x = x.astype(np.float32)
    init_means = np.concatenate([random_init(rng, x, 2), np.full((1, 2), 1e4, np.float32)])  # far from all data
    state, trace = em.fit_gmm(x, 3, covariance_type=covariance_type, init_means=init_means, max_iters=20,
                              return_trace=True)  # fmt: skip
    for leaf in (state.weights, state.means, state.covariances, state.log_likelihood):
        assert np.all(np.isfinite(np.asarray(leaf)))
    w = np.asarray(state.weights)
    assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-5 and w[2] < 1e-6
    assert np.all(np.isfinite(np.asarray(trace)[: int(state.num_iters)]))
    # A responsibility column that is exactly zero (log 0 = -inf) in the M-step: no NaN.
    with np.errstate(divide="ignore"):
        log_resp = np.log(np.stack([np.full(len(x), 0.5), np.full(len(x), 0.5), np.zeros(len(x))], 1)).astype(np.float32)
    w, m, c = em.m_step(x, log_resp, covariance_type, 1e-6)
    assert all(np.all(np.isfinite(np.asarray(a))) for a in (w, m, c))
    assert 0 < float(w[2]) < 1e-6
    np.testing.assert_allclose(np.asarray(c[2]), 1e-6 * (np.eye(2) if covariance_type == "full" else np.ones(2)), rtol=1e-3)


def test_vmap_over_restarts_equals_loop(rng):
    x, _ = mixture_data(rng, n=300, k=3, d=2)
    x = jnp.asarray(x, jnp.float32)
    keys = jax.random.split(jax.random.key(0), 3)
    batched = jax.vmap(lambda key: em.fit_gmm(x, 3, covariance_type="diag", key=key, max_iters=30))(keys)
    for i, key in enumerate(keys):
        one = em.fit_gmm(x, 3, covariance_type="diag", key=key, max_iters=30)
        assert int(batched.num_iters[i]) == int(one.num_iters)
        np.testing.assert_allclose(np.asarray(batched.means[i]), np.asarray(one.means), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(float(batched.log_likelihood[i]), float(one.log_likelihood), rtol=1e-5)
    # e_step over several data sets of one shape.
    xs = jnp.asarray(rng.normal(size=(3, 40, 2)), jnp.float32)
    w, m, c = em.initial_parameters(xs[0], xs[0, :3], "full")
    lr, ll = jax.vmap(lambda xi: em.e_step(xi, w, m, c, "full"))(xs)
    for i in range(3):
        lr_i, ll_i = em.e_step(xs[i], w, m, c, "full")
        np.testing.assert_allclose(np.asarray(lr[i]), np.asarray(lr_i), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(float(ll[i]), float(ll_i), rtol=1e-6)


def test_kmeans_plusplus_picks_distinct_data_points(rng):
    x, _ = mixture_data(rng, n=200, k=4, d=2)
    x = x.astype(np.float32)
    centers = np.asarray(em.kmeans_plusplus(jax.random.key(3), x, 4))
    rows = {tuple(r) for r in x}
    assert all(tuple(c) in rows for c in centers) and len({tuple(c) for c in centers}) == 4


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(x=np.zeros((10,), np.float32)), "`x` must be a rank-2 array"),
        (dict(x=np.zeros((10, 2), np.int32)), "`x` must be a floating-point array; got dtype int32"),
        (dict(num_components=0), r"`num_components` must be an int in \[1, N = 20\]; got 0"),
        (dict(num_components=21), r"`num_components` must be an int in \[1, N = 20\]; got 21"),
        (dict(init_means=np.zeros((3, 3), np.float32)), r"`init_means` must be shape \(K, D\) = \(2, 2\); got shape \(3, 3\)"),
        (dict(covariance_type="tied"), "`covariance_type` must be one of \\('full', 'diag'\\); got 'tied'"),
        (dict(reg_covar=-1.0), "`reg_covar` must be a finite scalar >= 0; got -1.0"),
        (dict(x=np.full((20, 2), np.nan, np.float32)), "`x` must be finite"),
        (dict(max_iters=0), "`max_iters` must be an int >= 1; got 0"),
        (dict(init={"weights": np.ones(2)}), "`init` must be a GMMState or a mapping"),
        (dict(init={"weights": np.ones(2) / 2, "means": np.zeros((2, 2)), "covariances": np.ones((2, 2))}),
         r"`covariances` must be shape \(2, 2, 2\)"),
    ],
)  # fmt: skip
def test_bad_inputs_raise(kwargs, match):
    args = dict(x=np.random.default_rng(0).normal(size=(20, 2)).astype(np.float32), num_components=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        em.fit_gmm(args.pop("x"), args.pop("num_components"), **args)


def test_bad_inputs_to_half_steps():
    x = np.zeros((5, 2), np.float32)
    with pytest.raises(ValueError, match=r"e_step: `means` must be shape"):
        em.e_step(x, np.ones(2) / 2, np.zeros((2, 3)), np.ones((2, 3)), "diag")
    with pytest.raises(ValueError, match=r"m_step: `log_resp` must be shape \(N, K\) with N = 5"):
        em.m_step(x, np.zeros((4, 2)), "diag")
    with pytest.raises(ValueError, match="log_prob: `covariance_type` must be one of"):
        em.log_prob(x, np.ones(2) / 2, np.zeros((2, 2)), np.ones((2, 2)), "spherical")
    # values that would silently shift or NaN every result
    half, mu = np.ones(2) / 2, np.zeros((2, 2))
    with pytest.raises(ValueError, match=r"log_prob: `weights` must be mixture weights summing to 1; got a sum of 100.0"):
        em.log_prob(x, np.array([50.0, 50.0]), mu, np.ones((2, 2)), "diag")
    with pytest.raises(ValueError, match=r"e_step: `covariances` must be positive variances; got a smallest value of -1.0"):
        em.e_step(x, half, mu, -np.ones((2, 2)), "diag")
    with pytest.raises(ValueError, match=r"log_prob: `covariances` must be positive definite matrices; got a smallest eigenvalue of -1.0"):
        em.log_prob(x, half, mu, np.stack([np.eye(2), np.diag([1.0, -1.0])]), "full")
    with pytest.raises(ValueError, match=r"m_step: `log_resp` must be log-responsibilities \(each row's logsumexp = 0\); got row logsumexps in"):
        em.m_step(x, np.full((5, 2), 0.5), "diag")  # responsibilities, not their logs
    em.m_step(x, np.log(np.full((5, 2), 0.5)), "diag")  # their logs are accepted


def test_benchmark_quick_run_writes_results(tmp_path):
    from benchmarks import bench_gmm

    assert bench_gmm.main(["--quick", "--out", str(tmp_path)]) == 0
    records = [json.loads(line) for line in (tmp_path / "gmm-cpu.jsonl").read_text().splitlines()]
    assert records[0]["record"] == "environment"
    results = records[1:]
    assert {(r["covariance_type"], r["impl"]) for r in results} >= {("full", "zoo-jax"), ("full", "sklearn-float64"),
                                                                      ("diag", "zoo-jax"), ("diag", "sklearn-float64")}  # fmt: skip
    assert all(r["check_ok"] for r in results)
    assert "# Gaussian-mixture EM benchmark" in (tmp_path / "gmm-cpu.md").read_text()
