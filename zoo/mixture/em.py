"""Gaussian-mixture EM (kexue.fm/archives/5239, "从最大似然到EM算法").

The post reads EM as alternating minimisation of one KL divergence between the joint
``p̃(x) p̃(z|x)`` and the model ``p(x, z)``: with the parameters fixed, the minimising
``p̃(z|x)`` is the model's posterior (the **E-step**: responsibilities
``r_nk = π_k N(x_n; μ_k, Σ_k) / Σ_j π_j N(x_n; μ_j, Σ_j)``); with ``p̃(z|x)`` fixed, the
minimising parameters are the responsibility-weighted moments (the **M-step**:
``π_k = N_k / N``, ``μ_k = Σ_n r_nk x_n / N_k``, ``Σ_k = Σ_n r_nk (x_n − μ_k)(x_n − μ_k)ᵀ / N_k``).
Each half-step can only lower the KL, so the mean log-likelihood never decreases.

Semantics follow scikit-learn's ``GaussianMixture`` exactly, so that a fit from the same
initial parameters (``weights_init``, ``means_init``, ``precisions_init``) gives the same
result:

* iteration ``t`` runs an E-step from the current parameters (its mean log-likelihood is
  ``lower_bound_t``), then an M-step; it stops after the first iteration with
  ``|lower_bound_t − lower_bound_{t−1}| < tol`` (``lower_bound_0 = −∞``) or after
  ``max_iters``. ``num_iters`` counts the iterations run (scikit-learn's ``n_iter_``), and
  ``log_likelihood`` is the last ``lower_bound_t`` (scikit-learn's ``lower_bound_``): the
  mean log-likelihood of the parameters *before* the final M-step. The mean
  log-likelihood of the returned parameters (scikit-learn's ``score(X)``) is
  ``log_prob(x, ...).mean()``.
* ``reg_covar`` is added to the covariance diagonal in every M-step.
* ``N_k = Σ_n r_nk + 10·eps`` (eps of the working dtype), so a component that no sample
  claims does not divide by zero. Such a **dead component** keeps a weight of about
  ``10·eps / N`` (its log-weight stays finite), its mean becomes the responsibility-
  weighted average of the (few, faint) samples it still touches, ``0``-ish when none,
  and its covariance shrinks to about ``reg_covar · I``: a needle that claims no sample,
  with no NaN anywhere. It is not re-seeded (neither is scikit-learn's).

Numerics: everything is in log space (responsibilities by ``logsumexp``); full
covariances go through their Cholesky factor ``L`` (Mahalanobis terms as
``‖L⁻¹(x − μ)‖²`` with ``L⁻¹`` from a triangular solve, log-determinants as
``2 Σ log diag L``), never an inverse or a determinant. The fit works in the input's
float dtype (float32 by default; float64 when ``jax_enable_x64`` is on and ``x`` is
float64) on data centred by its mean (the likelihood is shift-invariant; centring keeps
float32 expansions such as ``x·Pᵀ − μ·Pᵀ`` from cancelling). The whole loop is one
``lax.while_loop`` inside one jitted function (static: K, covariance type, max_iters),
so it can be ``vmap``-ed, e.g. over k-means++ restarts keyed by ``key``.

``fit_gmm_reference`` is the same algorithm in plain float64 numpy, written for
obviousness (loops over components), the twin the tests compare against.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.linalg import solve_triangular
from jax.scipy.special import logsumexp

from kernels.checks import argument_error, concrete

__all__ = [
    "COVARIANCE_TYPES",
    "GMMState",
    "e_step",
    "fit_gmm",
    "fit_gmm_reference",
    "initial_parameters",
    "kmeans_plusplus",
    "log_prob",
    "m_step",
]

COVARIANCE_TYPES = ("full", "diag")
_LOG_2PI = float(np.log(2.0 * np.pi))


class GMMState(NamedTuple):
    """A fitted (or initial) Gaussian mixture.

    weights [K]; means [K, D]; covariances [K, D, D] ("full") or [K, D] ("diag", the
    variances); log_likelihood: mean log-likelihood per sample of the last E-step
    (scikit-learn's ``lower_bound_``); num_iters: EM iterations run; converged: whether
    the stopping rule (not ``max_iters``) ended the loop.
    """

    weights: Any
    means: Any
    covariances: Any
    log_likelihood: Any
    num_iters: Any
    converged: Any


# --------------------------------------------------------------------------- #
# Argument checks
# --------------------------------------------------------------------------- #


def _check_covariance_type(fn, covariance_type):
    if covariance_type not in COVARIANCE_TYPES:
        raise argument_error(fn, "covariance_type", f"one of {COVARIANCE_TYPES}", repr(covariance_type))


def _work_dtype(fn, name, x):
    dtype = np.dtype(x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise argument_error(fn, name, "a floating-point array", f"dtype {dtype}")
    # float64 stays float64 only when x64 is on (jnp.asarray would narrow it anyway).
    return jnp.promote_types(jnp.asarray(np.zeros((), dtype)).dtype, jnp.float32)


def _check_x(fn, x, name="x"):
    dtype = _work_dtype(fn, name, x)
    x = jnp.asarray(x, dtype)
    if x.ndim != 2:
        raise argument_error(fn, name, "a rank-2 array [N, D]", f"shape {tuple(x.shape)}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise argument_error(fn, name, "non-empty [N, D]", f"shape {tuple(x.shape)}")
    values = concrete(x)
    if values is not None and not np.all(np.isfinite(values)):
        raise argument_error(fn, name, "finite (no NaN or inf)", f"{int(np.sum(~np.isfinite(values)))} non-finite values")
    return x


def _cov_shape(covariance_type, k, d):
    return (k, d, d) if covariance_type == "full" else (k, d)


def _check_params(fn, weights, means, covariances, covariance_type, d, dtype, k=None):
    weights, means, covariances = (jnp.asarray(a, dtype) for a in (weights, means, covariances))
    k = means.shape[0] if (k is None and means.ndim == 2) else k
    if means.shape != (k, d):
        raise argument_error(fn, "means", f"shape (K, D) = ({k}, {d})", f"shape {tuple(means.shape)}")
    if weights.shape != (k,):
        raise argument_error(fn, "weights", f"shape (K,) = ({k},)", f"shape {tuple(weights.shape)}")
    if covariances.shape != _cov_shape(covariance_type, k, d):
        raise argument_error(fn, "covariances", f"shape {_cov_shape(covariance_type, k, d)} for "
                             f"covariance_type={covariance_type!r}", f"shape {tuple(covariances.shape)}")  # fmt: skip
    w = concrete(weights)
    if w is not None and (np.any(w < 0) or not np.all(np.isfinite(w))):
        raise argument_error(fn, "weights", "finite and non-negative", w)
    if w is not None and abs(float(np.sum(w, dtype=np.float64)) - 1.0) > 1e-3:  # counts would shift every log-likelihood
        raise argument_error(fn, "weights", "mixture weights summing to 1", f"a sum of {float(np.sum(w, dtype=np.float64))!r}")
    c = concrete(covariances)
    if c is not None:
        if covariance_type == "full":
            eig = np.linalg.eigvalsh(0.5 * (c + np.swapaxes(c, -1, -2)).astype(np.float64))
            if not np.all(eig > 0):
                raise argument_error(fn, "covariances", "positive definite matrices", f"a smallest eigenvalue of {float(eig.min())!r}")
        elif not np.all(c > 0):
            raise argument_error(fn, "covariances", "positive variances", f"a smallest value of {float(c.min())!r}")
    return weights, means, covariances


# --------------------------------------------------------------------------- #
# The two half-steps
# --------------------------------------------------------------------------- #


def _component_log_prob(x, means, covariances, covariance_type):
    """[N, K] log N(x_n; μ_k, Σ_k)."""
    d = x.shape[1]
    # Shift-invariant; a common origin near the means keeps the expansions below exact-ish.
    origin = lax.stop_gradient(jnp.mean(means, axis=0))
    x, means = x - origin, means - origin
    if covariance_type == "full":
        chol = jnp.linalg.cholesky(covariances)  # [K, D, D] lower, Σ = L Lᵀ
        eye = jnp.broadcast_to(jnp.eye(d, dtype=x.dtype), chol.shape)
        inv_chol = solve_triangular(chol, eye, lower=True)  # L⁻¹ (triangular solve, not inv)
        # ‖L⁻¹(x − μ_k)‖², one component at a time: K small [N, D] × [D, D] products beat
        # one [N, D] × [D, K·D] product whose [N, K, D] result must round-trip memory.
        def maha_k(args):
            inv_chol_k, mean_k = args
            y = (x - mean_k) @ inv_chol_k.T
            return jnp.sum(y * y, axis=1)

        maha = lax.map(maha_k, (inv_chol, means)).T  # [N, K]
        half_log_det = jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
    else:
        prec = 1.0 / covariances  # [K, D]
        maha = jnp.sum(means**2 * prec, axis=1) - 2.0 * (x @ (means * prec).T) + (x * x) @ prec.T
        half_log_det = 0.5 * jnp.sum(jnp.log(covariances), axis=1)
    return -0.5 * (d * _LOG_2PI + maha) - half_log_det


def _weighted_log_prob(x, weights, means, covariances, covariance_type):
    return _component_log_prob(x, means, covariances, covariance_type) + jnp.log(weights)


def _e_step(x, weights, means, covariances, covariance_type):
    wlp = _weighted_log_prob(x, weights, means, covariances, covariance_type)
    norm = logsumexp(wlp, axis=1)
    return wlp - norm[:, None], jnp.mean(norm)


def _m_step(x, log_resp, covariance_type, reg_covar):
    resp = jnp.exp(log_resp)
    nk = jnp.sum(resp, axis=0) + 10 * jnp.finfo(resp.dtype).eps  # empty-component guard
    means = (resp.T @ x) / nk[:, None]
    if covariance_type == "full":
        # Σ_k = Σ_n r_nk (x_n − μ_k)(x_n − μ_k)ᵀ / N_k, centred exactly per component
        # (a Gram matrix, PSD up to rounding) rather than E[xxᵀ] − μμᵀ; one component at a
        # time (an [N, K, D] batched contraction is several times slower on CPU).
        def scatter_k(args):
            resp_k, mean_k = args
            diff = x - mean_k
            return (diff * resp_k[:, None]).T @ diff

        cov = lax.map(scatter_k, (resp.T, means)) / nk[:, None, None]
        cov = cov + reg_covar * jnp.eye(x.shape[1], dtype=x.dtype)
    else:
        # scikit-learn's E[x²] − μ² (+ reg); clamped at 0 so rounding cannot make it negative.
        var = (resp.T @ (x * x)) / nk[:, None] - means**2
        cov = jnp.maximum(var, 0.0) + reg_covar
    weights = nk / jnp.sum(nk)
    return weights, means, cov


@functools.partial(jax.jit, static_argnames=("covariance_type",))
def _e_step_jit(x, weights, means, covariances, covariance_type):
    return _e_step(x, weights, means, covariances, covariance_type)


@functools.partial(jax.jit, static_argnames=("covariance_type",))
def _m_step_jit(x, log_resp, reg_covar, covariance_type):
    return _m_step(x, log_resp, covariance_type, reg_covar)


@functools.partial(jax.jit, static_argnames=("covariance_type",))
def _log_prob_jit(x, weights, means, covariances, covariance_type):
    return logsumexp(_weighted_log_prob(x, weights, means, covariances, covariance_type), axis=1)


def e_step(x, weights, means, covariances, covariance_type="full"):
    """E-step: ``(log_resp [N, K], mean log-likelihood per sample)`` under the given mixture."""
    _check_covariance_type("e_step", covariance_type)
    x = _check_x("e_step", x)
    params = _check_params("e_step", weights, means, covariances, covariance_type, x.shape[1], x.dtype)
    return _e_step_jit(x, *params, covariance_type=covariance_type)


def m_step(x, log_resp, covariance_type="full", reg_covar=1e-6):
    """M-step: ``(weights [K], means [K, D], covariances)`` from log-responsibilities [N, K]."""
    _check_covariance_type("m_step", covariance_type)
    x = _check_x("m_step", x)
    log_resp = jnp.asarray(log_resp, x.dtype)
    if log_resp.ndim != 2 or log_resp.shape[0] != x.shape[0]:
        raise argument_error("m_step", "log_resp", f"shape (N, K) with N = {x.shape[0]}", f"shape {tuple(log_resp.shape)}")
    _check_reg("m_step", reg_covar)
    lr = concrete(log_resp)
    if lr is not None and lr.size:  # responsibilities passed in place of their logs give wrong weights and means
        row_lse = np.logaddexp.reduce(lr.astype(np.float64), axis=1)
        if np.max(np.abs(row_lse)) > 1e-3:
            raise argument_error("m_step", "log_resp", "log-responsibilities (each row's logsumexp = 0)",
                                 f"row logsumexps in [{row_lse.min():.4g}, {row_lse.max():.4g}]")
    return _m_step_jit(x, log_resp, reg_covar, covariance_type=covariance_type)


def log_prob(x, weights, means, covariances, covariance_type="full"):
    """[N] per-sample log density ``log Σ_k π_k N(x_n; μ_k, Σ_k)``."""
    _check_covariance_type("log_prob", covariance_type)
    x = _check_x("log_prob", x)
    params = _check_params("log_prob", weights, means, covariances, covariance_type, x.shape[1], x.dtype)
    return _log_prob_jit(x, *params, covariance_type=covariance_type)


def _check_reg(fn, reg_covar):
    r = concrete(reg_covar)
    if r is not None and (r.shape != () or not np.isfinite(r) or r < 0):
        raise argument_error(fn, "reg_covar", "a finite scalar >= 0", reg_covar)


# --------------------------------------------------------------------------- #
# Initialisation
# --------------------------------------------------------------------------- #


@functools.partial(jax.jit, static_argnames=("num_components",))
def _kmeans_plusplus(key, x, num_components):
    n = x.shape[0]
    key, first = jax.random.split(key)
    i0 = jax.random.randint(first, (), 0, n)
    centers = jnp.zeros((num_components, x.shape[1]), x.dtype).at[0].set(x[i0])
    d2 = jnp.sum(jnp.square(x - x[i0]), axis=1)

    def body(k, carry):
        centers, d2, key = carry
        key, sub = jax.random.split(key)
        # D² sampling; all-zero d2 (fewer distinct points than K) falls back to uniform.
        logits = jnp.where(jnp.any(d2 > 0), jnp.log(d2), jnp.zeros_like(d2))
        i = jax.random.categorical(sub, logits)
        centers = centers.at[k].set(x[i])
        return centers, jnp.minimum(d2, jnp.sum(jnp.square(x - x[i]), axis=1)), key

    centers, _, _ = lax.fori_loop(1, num_components, body, (centers, d2, key))
    return centers


def kmeans_plusplus(key, x, num_components):
    """[K, D] initial means by k-means++ seeding (D² sampling of data points) from ``key``."""
    x = _check_x("kmeans_plusplus", x)
    _check_k("kmeans_plusplus", num_components, x.shape[0])
    return _kmeans_plusplus(key, x, num_components)


def _check_k(fn, k, n):
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= n:
        raise argument_error(fn, "num_components", f"an int in [1, N = {n}]", repr(k))


def _data_covariance(x, covariance_type, reg_covar):
    xc = x - jnp.mean(x, axis=0)
    if covariance_type == "full":
        return xc.T @ xc / x.shape[0] + reg_covar * jnp.eye(x.shape[1], dtype=x.dtype)
    return jnp.mean(xc * xc, axis=0) + reg_covar


def initial_parameters(x, init_means, covariance_type="full", reg_covar=1e-6):
    """``(weights, means, covariances)`` that ``fit_gmm(init_means=...)`` starts from:
    uniform weights, the given means, and every covariance the data's own (``+ reg_covar``
    on the diagonal). Pass them to scikit-learn as ``weights_init``, ``means_init`` and
    ``precisions_init`` (the inverse covariances) to fit from the same start."""
    _check_covariance_type("initial_parameters", covariance_type)
    x = _check_x("initial_parameters", x)
    init_means = jnp.asarray(init_means, x.dtype)
    if init_means.ndim != 2 or init_means.shape[1] != x.shape[1]:
        raise argument_error("initial_parameters", "init_means", f"shape (K, D) with D = {x.shape[1]}",
                             f"shape {tuple(init_means.shape)}")  # fmt: skip
    k = init_means.shape[0]
    cov = _data_covariance(x, covariance_type, reg_covar)
    return jnp.full((k,), 1.0 / k, x.dtype), init_means, jnp.broadcast_to(cov, _cov_shape(covariance_type, k, x.shape[1]))


# --------------------------------------------------------------------------- #
# The EM loop
# --------------------------------------------------------------------------- #


@functools.partial(jax.jit, static_argnames=("covariance_type", "max_iters"))
def _fit(x, weights, means, covariances, tol, reg_covar, *, covariance_type, max_iters):
    center = jnp.mean(x, axis=0)
    xc = x - center
    dtype = x.dtype
    init = (weights, means - center, covariances, jnp.array(-jnp.inf, dtype), jnp.array(0, jnp.int32),
            jnp.array(False), jnp.full((max_iters,), jnp.nan, dtype))  # fmt: skip

    def cond(carry):
        *_, it, converged, _ = carry
        return (it < max_iters) & ~converged

    def body(carry):
        w, mu, cov, prev, it, _, trace = carry
        log_resp, ll = _e_step(xc, w, mu, cov, covariance_type)
        w, mu, cov = _m_step(xc, log_resp, covariance_type, reg_covar)
        return w, mu, cov, ll, it + 1, jnp.abs(ll - prev) < tol, trace.at[it].set(ll)

    w, mu, cov, ll, it, converged, trace = lax.while_loop(cond, body, init)
    return GMMState(w, mu + center, cov, ll, it, converged), trace


def _init_from(fn, init, covariance_type, k, d, dtype):
    if isinstance(init, Mapping):
        missing = [n for n in ("weights", "means", "covariances") if n not in init]
        if missing:
            raise argument_error(fn, "init", "a GMMState or a mapping with weights, means, covariances", f"missing {missing}")
        parts = (init["weights"], init["means"], init["covariances"])
    elif all(hasattr(init, n) for n in ("weights", "means", "covariances")):
        parts = (init.weights, init.means, init.covariances)
    else:
        raise argument_error(fn, "init", "a GMMState or a mapping with weights, means, covariances", type(init).__name__)
    return _check_params(fn, *parts, covariance_type, d, dtype, k=k)


def fit_gmm(x, num_components, *, covariance_type="full", init_means=None, init=None, max_iters=100, tol=1e-3,
            reg_covar=1e-6, key=None, return_trace=False):  # fmt: skip
    """Fits a Gaussian mixture by EM (scikit-learn's semantics; see the module docstring).

    Args:
      x: [N, D] float data.
      num_components: K, in [1, N].
      covariance_type: "full" ([K, D, D] covariances) or "diag" ([K, D] variances).
      init_means: [K, D] starting means; weights start uniform and every covariance at the
        data's (see :func:`initial_parameters`).
      init: a ``GMMState`` or mapping with ``weights``, ``means``, ``covariances`` to start
        from (takes precedence over ``init_means``); the first E-step uses it as given.
      max_iters: at most this many E+M iterations (static: changing it recompiles).
      tol: stop once the mean log-likelihood changes by less than this.
      reg_covar: added to every covariance diagonal in each M-step.
      key: when neither ``init`` nor ``init_means`` is given, k-means++ seeds the means from
        this key (default ``jax.random.key(0)``); may be a tracer, e.g. under ``vmap``.
      return_trace: also return the [max_iters] mean log-likelihood of every iteration's
        E-step (NaN after the last iteration).

    Returns:
      ``GMMState`` (or ``(GMMState, trace)``).
    """
    fn = "fit_gmm"
    _check_covariance_type(fn, covariance_type)
    x = _check_x(fn, x)
    n, d = x.shape
    _check_k(fn, num_components, n)
    if not isinstance(max_iters, (int, np.integer)) or isinstance(max_iters, bool) or max_iters < 1:
        raise argument_error(fn, "max_iters", "an int >= 1", repr(max_iters))
    t = concrete(tol)
    if t is not None and (t.shape != () or not t >= 0):
        raise argument_error(fn, "tol", "a scalar >= 0", tol)
    _check_reg(fn, reg_covar)
    k = num_components
    if init is not None:
        params = _init_from(fn, init, covariance_type, k, d, x.dtype)
    else:
        if init_means is None:
            init_means = _kmeans_plusplus(jax.random.key(0) if key is None else key, x, k)
        init_means = jnp.asarray(init_means, x.dtype)
        if init_means.shape != (k, d):
            raise argument_error(fn, "init_means", f"shape (K, D) = ({k}, {d})", f"shape {tuple(init_means.shape)}")
        m = concrete(init_means)
        if m is not None and not np.all(np.isfinite(m)):
            raise argument_error(fn, "init_means", "finite", "non-finite values")
        params = initial_parameters(x, init_means, covariance_type, reg_covar)
    state, trace = _fit(x, *params, jnp.asarray(tol, x.dtype), jnp.asarray(reg_covar, x.dtype),
                        covariance_type=covariance_type, max_iters=int(max_iters))  # fmt: skip
    return (state, trace) if return_trace else state


# --------------------------------------------------------------------------- #
# Reference twin: plain float64 numpy, one component at a time
# --------------------------------------------------------------------------- #


def _ref_log_gaussian(x, mean, cov, covariance_type):
    """log N(x; mean, cov) for every row of x, straight from the formula."""
    d = x.shape[1]
    diff = x - mean
    if covariance_type == "full":
        chol = np.linalg.cholesky(cov)
        z = np.linalg.solve(chol, diff.T)  # L⁻¹ (x − μ)
        maha = np.sum(z * z, axis=0)
        log_det = 2.0 * np.sum(np.log(np.diag(chol)))
    else:
        maha = np.sum(diff * diff / cov, axis=1)
        log_det = np.sum(np.log(cov))
    return -0.5 * (d * np.log(2.0 * np.pi) + log_det + maha)


def _ref_logsumexp(a, axis):
    m = np.max(a, axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(a - m), axis=axis))


def fit_gmm_reference(x, num_components, *, covariance_type="full", init_means=None, init=None, max_iters=100,
                      tol=1e-3, reg_covar=1e-6):  # fmt: skip
    """:func:`fit_gmm` in float64 numpy, one component at a time (no k-means++: give ``init``
    or ``init_means``). Returns a ``GMMState`` of numpy values and the same trace
    (``(state, trace)``)."""
    fn = "fit_gmm_reference"
    _check_covariance_type(fn, covariance_type)
    x = np.asarray(x, np.float64)
    n, d = x.shape
    k = num_components
    if init is not None:
        get = (lambda name: init[name]) if isinstance(init, Mapping) else (lambda name: getattr(init, name))
        weights, means, covs = (np.array(get(name), np.float64) for name in ("weights", "means", "covariances"))
    elif init_means is not None:
        means = np.array(init_means, np.float64)
        weights = np.full(k, 1.0 / k)
        xc = x - x.mean(axis=0)
        data_cov = xc.T @ xc / n + reg_covar * np.eye(d) if covariance_type == "full" else np.mean(xc**2, 0) + reg_covar
        covs = np.stack([data_cov] * k)
    else:
        raise argument_error(fn, "init", "given (or init_means)", None)
    eps = np.finfo(np.float64).eps
    trace = np.full(max_iters, np.nan)
    prev, ll, converged, it = -np.inf, -np.inf, False, 0
    while it < max_iters and not converged:
        # E-step: log r_nk = log π_k + log N(x_n; μ_k, Σ_k) − log p(x_n).
        wlp = np.stack([np.log(weights[j]) + _ref_log_gaussian(x, means[j], covs[j], covariance_type) for j in range(k)], 1)
        norm = _ref_logsumexp(wlp, axis=1)
        resp = np.exp(wlp - norm[:, None])
        ll = float(np.mean(norm))
        # M-step: responsibility-weighted moments.
        nk = resp.sum(axis=0) + 10 * eps
        for j in range(k):
            r = resp[:, j]
            means[j] = r @ x / nk[j]
            diff = x - means[j]
            if covariance_type == "full":
                covs[j] = (r[:, None] * diff).T @ diff / nk[j] + reg_covar * np.eye(d)
            else:
                # scikit-learn's form E_r[x²] − μ² (equal to Σ r (x − μ)² / N_k up to the 10·eps guard).
                covs[j] = np.maximum(r @ (x * x) / nk[j] - means[j] ** 2, 0.0) + reg_covar
        weights = nk / nk.sum()
        trace[it] = ll
        it += 1
        converged = abs(ll - prev) < tol
        prev = ll
    return GMMState(weights, means, covs, ll, it, converged), trace
