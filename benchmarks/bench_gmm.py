"""Gaussian-mixture EM: the zoo's jitted EM (``zoo.mixture.fit_gmm``) against scikit-learn's
``GaussianMixture`` from the same initialisation.

Data: N samples from a random K-component mixture in D dimensions (fixed seed; centres
~ N(0, spread²·I), covariances ``A Aᵀ/D + 0.1·I`` with Gaussian ``A``). Initialisation:
k-means++ means (``zoo.mixture.kmeans_plusplus``, fixed key), uniform weights, every
covariance the data's own (``zoo.mixture.initial_parameters``); scikit-learn gets exactly
these as ``weights_init``, ``means_init`` and ``precisions_init`` (the inverse
covariances), and the same ``tol``, ``max_iter`` and ``reg_covar``. Both stop by the same
rule (|Δ mean log-likelihood| < tol).

Reported per covariance type and implementation: iterations, the final mean
log-likelihood (``lower_bound_``: the last E-step's) and its |difference| from
scikit-learn float64, the mean log-likelihood of the returned parameters (``score``),
the median wall time of a whole fit (JAX: compile time reported separately, timed after a
warm-up call; scikit-learn: after one untimed fit on a 2,000-row slice; the repeats of all
implementations interleaved, so that load from other processes falls on each alike), time per
iteration, and scikit-learn's time over the zoo's. The zoo runs in float32 (its default);
scikit-learn in float64 (its default for float64 input) and, as a second row, float32.
Check: the zoo's log-likelihood within 1e-3 nats/sample of scikit-learn float64's.

Run: ``python -m benchmarks.run gmm [--n 100000 --k 16 --d 32] [--covariance-types
full,diag] [--repeats 3] [--quick] [--out DIR]``. Writes
``benchmarks/results/gmm-<platform>.jsonl`` and ``.md``.
"""

from __future__ import annotations

import argparse
import functools
import os
import pathlib
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from zoo.mixture import em

RESULTS_DIR = harness.RESULTS_DIR
LL_ATOL = 1e-3  # nats per sample
SKLEARN_DTYPES = ("float64", "float32")


def make_data(n: int, k: int, d: int, spread: float, seed: int = 0) -> np.ndarray:
    """[n, d] float32 samples of a random k-component Gaussian mixture."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * spread
    a = rng.normal(size=(k, d, d)) / np.sqrt(d)
    chol = np.linalg.cholesky(a @ np.swapaxes(a, 1, 2) + 0.1 * np.eye(d))
    weights = rng.dirichlet(np.full(k, 5.0))
    labels = rng.choice(k, size=n, p=weights)
    x = np.einsum("nde,ne->nd", chol[labels], rng.normal(size=(n, d))) + centers[labels]
    return x.astype(np.float32)


def _fit_sklearn(x, init, covariance_type, args):
    from sklearn.mixture import GaussianMixture

    w, m, c = (np.asarray(a, np.float64) for a in init)
    w = w / w.sum()  # float32 weights sum to 1 only to ~1e-7; scikit-learn checks float64 normalisation
    prec = np.linalg.inv(c) if covariance_type == "full" else 1.0 / c
    # In x's dtype: float64 parameters with float32 data would make every product mixed-precision.
    w, m, prec = (a.astype(x.dtype) for a in (w, m, prec))
    model = GaussianMixture(len(w), covariance_type=covariance_type, weights_init=w, means_init=m, precisions_init=prec,
                            tol=args.tol, max_iter=args.max_iters, reg_covar=args.reg_covar)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning when max_iter is hit
        return model.fit(x)


def bench_covariance_type(args, x: np.ndarray, covariance_type: str) -> list[dict]:
    init_means = em.kmeans_plusplus(jax.random.key(args.seed), x, args.k)
    init = em.initial_parameters(x, init_means, covariance_type, args.reg_covar)
    xj = jnp.asarray(x)

    def fit(x, w, m, c):
        return em.fit_gmm(x, args.k, covariance_type=covariance_type, init={"weights": w, "means": m, "covariances": c},
                          max_iters=args.max_iters, tol=args.tol, reg_covar=args.reg_covar)  # fmt: skip

    shape = {"n": x.shape[0], "k": args.k, "d": x.shape[1], "covariance_type": covariance_type}
    # One-off costs first: the zoo's trace/lower and compile (timed), warm-up calls for both.
    t0 = time.perf_counter()
    lowered = jax.jit(fit).lower(xj, *init)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    impls = {"zoo-jax": lambda: jax.block_until_ready(compiled(xj, *init))}
    for _ in range(args.warmup):
        impls["zoo-jax"]()
    for dtype in args.sklearn_dtypes:
        xs = x.astype(dtype)
        _fit_sklearn(xs[: min(len(xs), 2000)], init, covariance_type, args)  # warm-up: imports, BLAS thread pool
        impls[f"sklearn-{dtype}"] = functools.partial(_fit_sklearn, xs, init, covariance_type, args)
    # Repeats interleaved (zoo, sklearn f64, sklearn f32, zoo, ...) so that a neighbour's load
    # on this shared machine falls on every implementation alike.
    samples, outputs, cores = {name: [] for name in impls}, {}, {name: [] for name in impls}
    for _ in range(args.repeats):
        for name, call in impls.items():
            with harness.OtherCpuLoad() as load:
                t = time.perf_counter()
                outputs[name] = call()
                samples[name].append(time.perf_counter() - t)
            cores[name].append(load.cores)
    records = []
    for name in impls:
        out = outputs[name]
        row = {"section": covariance_type, "impl": name, **shape, **harness.summarize(samples[name]),
               "other_cpu_cores": max((c for c in cores[name] if c is not None), default=None)}  # fmt: skip
        if name == "zoo-jax":
            score = float(jnp.mean(em.log_prob(xj, out.weights, out.means, out.covariances, covariance_type)))
            row.update(dtype=str(x.dtype), lower_ms=(t1 - t0) * 1e3, compile_ms=(t2 - t1) * 1e3,
                       iterations=int(out.num_iters), converged=bool(out.converged),
                       log_likelihood=float(out.log_likelihood), score=score)  # fmt: skip
        else:
            xs = x.astype(name.split("-")[1])
            row.update(dtype=str(xs.dtype), iterations=int(out.n_iter_), converged=bool(out.converged_),
                       log_likelihood=float(out.lower_bound_), score=float(out.score(xs)))  # fmt: skip
        records.append(row)
        print(f"{covariance_type} {name}: {row['iterations']} iters, ll {row['log_likelihood']:.6f}, "
              f"{row['median_ms']:.0f} ms" + (f" (compile {row['compile_ms']:.0f} ms)" if "compile_ms" in row else ""),
              flush=True)  # fmt: skip
    zoo = records[0]
    ref = next((rec for rec in records if rec["impl"] == "sklearn-float64"), None)
    for rec in records:
        rec["task"] = f"GMM EM {covariance_type} N={shape['n']} K={shape['k']} D={shape['d']}"
        rec["ms_per_iter"] = rec["median_ms"] / max(rec["iterations"], 1)
        rec["time_vs_zoo"] = rec["median_ms"] / zoo["median_ms"]
        rec["iter_time_vs_zoo"] = rec["ms_per_iter"] / zoo["ms_per_iter"]
        if ref is not None:
            rec["ll_diff_vs_sklearn64"] = abs(rec["log_likelihood"] - ref["log_likelihood"])
            rec["score_diff_vs_sklearn64"] = abs(rec["score"] - ref["score"])
        rec["check_ok"] = bool(np.isfinite(rec["log_likelihood"])) and (
            rec["impl"] != "zoo-jax" or ref is None or rec["ll_diff_vs_sklearn64"] <= LL_ATOL)
    return records


def markdown(env: dict, command: str, records: list[dict], notes: list[str]) -> str:
    columns = ["impl", "dtype", "iterations", "converged", ("log_likelihood", "mean log-lik"),
               ("ll_diff_vs_sklearn64", "|Δ| vs sklearn f64"), ("score", "score (final params)"),
               ("median_ms", "fit median ms"), "p90_ms", "compile_ms", ("ms_per_iter", "ms / iter"),
               ("time_vs_zoo", "fit time / zoo"), ("iter_time_vs_zoo", "iter time / zoo"), "check_ok",
               ("other_cpu_cores", "other cores")]  # fmt: skip
    sections = {}
    for ct in dict.fromkeys(r["section"] for r in records):
        r0 = next(r for r in records if r["section"] == ct)
        sections[ct] = (f"{ct} covariances (N = {r0['n']:,}, K = {r0['k']}, D = {r0['d']})", columns)
    protocol = ("same data and initial parameters (k-means++ means, uniform weights, data covariance) for both; same "
                "tol, max_iter, reg_covar; zoo: jitted fit (one lax.while_loop), trace/lower and compile timed "
                "separately, then warm-up call(s); scikit-learn: one untimed fit on a 2,000-row slice (imports, BLAS "
                "threads); then the repeats interleaved (zoo, sklearn f64, sklearn f32, zoo, ...) so that load from "
                "other processes falls on all alike; median (and p90) of each one's whole-fit wall times (JAX ends in "
                "block_until_ready); 'time / zoo' > 1 means the zoo is that many times faster. 'mean log-lik' is the "
                "last E-step's (scikit-learn's lower_bound_); 'score' is that of the returned parameters.")  # fmt: skip
    return harness.markdown_report("Gaussian-mixture EM benchmark", env, command, protocol, sections, records, notes)


def _parser():
    p = argparse.ArgumentParser(prog="python -m benchmarks.run gmm", description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--d", type=int, default=32)
    p.add_argument("--spread", type=float, default=1.0, help="scale of the random component centres")
    p.add_argument("--covariance-types", default="full,diag")
    p.add_argument("--sklearn-dtypes", default=",".join(SKLEARN_DTYPES))
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--max-iters", type=int, default=100)
    p.add_argument("--reg-covar", type=float, default=1e-6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny shapes, 1 repeat; writes to a temporary folder unless --out")
    p.add_argument("--out", type=pathlib.Path, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    args.covariance_types = [s for s in args.covariance_types.split(",") if s]
    args.sklearn_dtypes = [s for s in args.sklearn_dtypes.split(",") if s]
    if not args.covariance_types or set(args.covariance_types) - set(em.COVARIANCE_TYPES):
        parser.error(f"--covariance-types: each must be one of {em.COVARIANCE_TYPES}; got {args.covariance_types}")
    if set(args.sklearn_dtypes) - set(SKLEARN_DTYPES):
        parser.error(f"--sklearn-dtypes: each must be one of {SKLEARN_DTYPES}; got {args.sklearn_dtypes}")
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if args.quick:
        args.n, args.k, args.d, args.repeats, args.warmup = 2000, 3, 4, 1, 1
    if not 1 <= args.k <= args.n:
        parser.error(f"--k must be in [1, --n]; got {args.k}")
    out_dir = harness.output_dir(args.out, args.quick, "gmm-bench-")
    env = harness.environment()
    try:
        env["load_avg_start"] = [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        env["load_avg_start"] = None
    try:
        from threadpoolctl import threadpool_info

        env["numpy_blas_threads"] = {i["internal_api"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
    except ImportError:
        pass
    command = harness.command_line()
    x = make_data(args.n, args.k, args.d, args.spread, args.seed)
    records = []
    for ct in args.covariance_types:
        records += bench_covariance_type(args, x, ct)
    records = [{"record": "result", "suite": "gmm", **r} for r in records]
    env["load_avg_1m_end"] = harness.load_average()
    notes = []
    start, end = env.get("load_avg_1m"), env["load_avg_1m_end"]
    if max(start or 0, end or 0) > 2.5:
        notes.append(f"The machine was shared: 1-min load average {start} at start ({env['load_avg_start']} over 1/5/15 "
                     f"min) and {end} at end, on {env['cpu_count']} CPUs. Absolute times are inflated and noisy; the "
                     "interleaved repeats spread the load over both sides, but scikit-learn's multi-threaded BLAS "
                     "suffers more from contention than XLA, so the ratios move with the load too.")  # fmt: skip
    notes += harness.timing_notes(records)
    for ct in args.covariance_types:
        rows = {r["impl"]: r for r in records if r["section"] == ct}
        zoo, sk = rows["zoo-jax"], rows.get("sklearn-float64")
        if sk:
            notes.append(f"{ct}: |Δ log-lik| = {zoo['ll_diff_vs_sklearn64']:.2e} nats/sample (target <= {LL_ATOL:g}); "
                         f"scikit-learn float64 takes {sk['time_vs_zoo']:.1f}x the zoo's time per fit, "
                         f"{sk['iter_time_vs_zoo']:.1f}x per iteration ({sk['iterations']} vs {zoo['iterations']} "
                         "iterations).")  # fmt: skip
    failed = [f"{r['task']} {r['impl']}" for r in records if not r["check_ok"]]
    if failed:
        notes.append("CHECK FAILED: " + "; ".join(failed))
    print("\n".join(notes))
    harness.write_results(out_dir / f"gmm-{env['platform']}", env, command, records, markdown(env, command, records, notes))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
