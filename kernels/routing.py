"""Capsule routing: squash, vote computation, dynamic routing (two forms) and EM routing.

Shapes (B batch, I input/child capsules, J output/parent capsules, D or P pose size):

* ``capsule_votes(u[B, I, Din], weights)``  -> ``u_hat[B, I, J, Dout]`` with one einsum;
  ``weights`` is ``[Din, J, Dout]`` (shared over input capsules, post 4819's "shared"
  form) or ``[I, Din, J, Dout]`` (a matrix per (i, j) pair, Sabour et al.).
* ``dynamic_routing(u_hat[B, I, J, D])`` -> ``v[B, J, D]`` (and the coupling
  coefficients ``c[B, I, J]``, which sum to 1 over ``J``).
* ``capsule_routing(u[B, I, Din], weights[I, Din, J, Dout])``: the two above for full
  weights, recomputing the votes a chunk of input capsules at a time (never all of them).
* ``em_routing(votes[B, I, J, P], activations_in[B, I], beta_u, beta_a)`` ->
  ``(pose_mean[B, J, P], activations_out[B, J])``.
* ``conv_capsule_votes(poses[B, H, W, C, 4, 4], weights[K, K, C, D, 4, 4], stride)`` ->
  votes ``[B, H', W', K*K*C, D, 16]``: convolutional matrix capsules from patches; the
  4×4 pose products are ``pose_products``, with a hand-written VJP.

Every function checks its arguments eagerly and raises a ValueError naming the argument,
the expected shape and the received one. Each has a ``*_reference`` twin written as plain
loops for obviousness; the tests compare the two on fresh random inputs (values and
gradients). ``capsule_routing`` is compared with the composition of two twins
(``dynamic_routing_reference(capsule_votes_reference(...))``).

Numerics. ``squash`` adds ``eps`` inside the square root, so its value and gradient are
finite at s = 0 (the NaN most ports hit). EM routing runs in log space: responsibilities
are a log-softmax over parents of ``log a_j + log N(V | mu_j, sigma_j^2)``, ``log a_j`` is
``log_sigmoid`` (never log of a sigmoid that rounded to 0), variances have a floor
``min_var`` and the M-step divides by ``max(sum r, tiny)`` so parents that receive no
data give finite (zero) means instead of 0/0.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from kernels.checks import concrete
from kernels.reductions import blocked_sums, materialize, sums

VARIANTS = ("sabour", "su")
_SQUASH_C = {"sabour": 1.0, "su": 0.5}  # Hinton's constant; the author's 0.5 (post 4819)
_L2_EPS = 1e-12  # Keras' l2_normalize floor, as in bojone/Capsule
_TINY = 1e-12  # M-step denominator floor: parents that got no data keep finite statistics


# --------------------------------------------------------------------------- #
# Argument checks
# --------------------------------------------------------------------------- #


def _shape_error(fn, name, expected, got):
    return ValueError(f"{fn}: `{name}` must have shape {expected}; got shape {tuple(got)}")


def _check_float(fn, name, x):
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise ValueError(f"{fn}: `{name}` must be floating point; got dtype {jnp.result_type(x)}")


def _check_iters(fn, num_iters):
    if not isinstance(num_iters, int) or num_iters < 1:
        raise ValueError(f"{fn}: `num_iters` must be an int >= 1; got {num_iters!r}")


def _check_votes(fn, u_hat, name="u_hat"):
    shape = jnp.shape(u_hat)
    if len(shape) != 4 or 0 in shape:
        raise _shape_error(fn, name, "[B, I, J, D] (rank 4, no empty axis)", shape)
    _check_float(fn, name, u_hat)
    return shape


def _check_variant(fn, variant):
    if variant not in VARIANTS:
        raise ValueError(f"{fn}: `variant` must be one of {VARIANTS}; got {variant!r}")


# --------------------------------------------------------------------------- #
# squash and votes
# --------------------------------------------------------------------------- #


def squash(s, *, axis=-1, c=1.0, eps=1e-7):
    """``‖s‖² / (c + ‖s‖²) · s / ‖s‖`` along ``axis``, finite (value and gradient) at s = 0.

    ``c=1`` is Sabour et al.'s squash; ``c=0.5`` is the author's (post 4819), which
    amplifies short vectors. As in bojone/Capsule, ``eps`` is added to ‖s‖² before the
    square root: the scale is ``sqrt(‖s‖² + eps) / (c + ‖s‖² + eps)``. Output norms lie in
    [0, 1) (they round to 1 in float32 only beyond ‖s‖² ≈ 1e7·c).
    """
    _check_float("squash", "s", s)
    if not c > 0:
        raise ValueError(f"squash: `c` must be > 0; got {c!r}")
    if not eps > 0:
        raise ValueError(f"squash: `eps` must be > 0 (it keeps the gradient finite at 0); got {eps!r}")
    squared = jnp.sum(jnp.square(s), axis=axis, keepdims=True) + eps
    return s * (jnp.sqrt(squared) / (c + squared))


def squash_reference(s, *, axis=-1, c=1.0, eps=1e-7):
    """The formula as written: norm, then length factor times the unit vector."""
    norm = jnp.sqrt(jnp.sum(s * s, axis=axis, keepdims=True) + eps)
    return (norm**2 / (c + norm**2)) * (s / norm)


def capsule_votes(u, weights):
    """Prediction vectors ``u_hat[b, i, j] = W_(i)j u[b, i]`` in one einsum.

    Args:
      u: ``[B, I, Din]`` input capsules.
      weights: ``[Din, J, Dout]`` (shared over input capsules) or ``[I, Din, J, Dout]``.
    Returns:
      ``[B, I, J, Dout]``.
    """
    fn = "capsule_votes"
    u_shape, w_shape = jnp.shape(u), jnp.shape(weights)
    if len(u_shape) != 3:
        raise _shape_error(fn, "u", "[B, I, Din] (rank 3)", u_shape)
    _, i, din = u_shape
    if len(w_shape) == 3 and w_shape[0] == din:
        return jnp.einsum("bid,dje->bije", u, weights)
    if len(w_shape) == 4 and w_shape[:2] == (i, din):
        return jnp.einsum("bid,idje->bije", u, weights)
    raise _shape_error(fn, "weights", f"[Din, J, Dout] = [{din}, J, Dout] or [I, Din, J, Dout] = [{i}, {din}, J, Dout]", w_shape)


def capsule_votes_reference(u, weights):
    """One matrix-vector product per (sample, input capsule)."""
    shared = weights.ndim == 3
    out = []
    for b in range(u.shape[0]):
        row = []
        for i in range(u.shape[1]):
            w = weights if shared else weights[i]  # [Din, J, Dout]
            row.append(jnp.tensordot(u[b, i], w, axes=1))  # [J, Dout]
        out.append(jnp.stack(row))
    return jnp.stack(out)


# --------------------------------------------------------------------------- #
# Dynamic routing
# --------------------------------------------------------------------------- #


def dynamic_routing(u_hat, *, num_iters=3, variant="sabour", squash_c=None, return_coupling=False):
    """Routing-by-agreement from votes ``u_hat[B, I, J, D]`` to outputs ``v[B, J, D]``.

    ``variant="sabour"`` (Sabour, Frosst, Hinton 2017): logits start at 0; every
    iteration takes ``c = softmax_J(b)``, ``v = squash(Σ_i c u_hat)`` and, except the last,
    *adds* the agreement ``⟨u_hat, v⟩`` to ``b``.

    ``variant="su"`` (posts 4819/5112, bojone/Capsule): soft K-means with a cosine-like
    distance. Every iteration but the last L2-normalises ``Σ_i c u_hat`` and *assigns*
    ``b = ⟨u_hat, v/‖v‖⟩``; squash is applied once, to the last weighted sum.

    Args:
      u_hat: ``[B, I, J, D]`` votes (see :func:`capsule_votes`).
      num_iters: routing iterations r (static); both variants do r weighted sums.
      variant: ``"sabour"`` or ``"su"``.
      squash_c: the squash constant; default 1.0 for "sabour", 0.5 for "su".
      return_coupling: also return the coupling coefficients of the last iteration.
    Returns:
      ``v[B, J, D]``, or ``(v, c[B, I, J])`` with ``return_coupling``.
    """
    fn = "dynamic_routing"
    _check_votes(fn, u_hat)
    _check_iters(fn, num_iters)
    _check_variant(fn, variant)
    c_squash = _SQUASH_C[variant] if squash_c is None else squash_c
    v, coupling = _dynamic_routing(u_hat, num_iters, variant, c_squash)
    return (v, coupling) if return_coupling else v


def _dynamic_routing(u_hat, num_iters, variant, c_squash):
    # The votes are the only big tensor; each iteration reads it twice, in one reduction
    # over I (the weighted sum) and one over D (the agreement). Both are written as
    # broadcast-multiply-and-sum so XLA fuses them into single passes instead of
    # transposing u_hat into a dot_general layout every iteration.
    n_out = u_hat.shape[2]
    logits = coupling = None
    for it in range(num_iters):
        if it == 0:  # b = 0: uniform coupling 1/J. Written out, not as softmax(zeros), which
            # XLA would constant-fold into a [B, I, J] literal at compile time (seconds).
            s = jnp.sum(u_hat, axis=1) / n_out  # [B, J, D]
        else:
            coupling = jax.nn.softmax(logits, axis=2)  # over output capsules J
            s = jnp.sum(coupling[..., None] * u_hat, axis=1)
        last = it == num_iters - 1
        if variant == "sabour":
            v = squash(s, c=c_squash)
            if not last:
                agreement = jnp.sum(u_hat * v[:, None], axis=-1)
                logits = agreement if logits is None else logits + agreement
        else:
            if last:
                v = squash(s, c=c_squash)
            else:
                direction = s / jnp.sqrt(jnp.maximum(jnp.sum(s * s, -1, keepdims=True), _L2_EPS))
                logits = jnp.sum(u_hat * direction[:, None], axis=-1)
    if coupling is None:
        coupling = jnp.full(u_hat.shape[:3], 1.0 / n_out, u_hat.dtype)
    return v, coupling


def capsule_routing(u, weights, *, num_iters=3, variant="sabour", squash_c=None, return_coupling=False,
                    chunk_size=32):
    """``dynamic_routing(capsule_votes(u, weights), ...)`` for full weights, without ever
    holding all the votes: each routing pass recomputes them ``chunk_size`` input capsules
    at a time.

    Why: the votes ``[B, I, J, Dout]`` are the layer's one big tensor (CapsNet: 74 MB at
    batch 100), yet they cost only ``Din`` multiply-adds per entry to compute. Routing
    reads them once per pass (the weighted sum, the agreement) and autodiff as many times
    again, each pass at memory speed. Here every pass after the first is a ``lax.scan`` over
    chunks of input capsules whose body computes its chunk of votes (a small batched matmul)
    and uses it while it is in cache, so the votes are never written out. The bodies are
    ``jax.checkpoint``-ed, so the backward pass recomputes them too instead of storing them.
    Per pass the scan carries the ``[B, J, Dout]`` sum; the logits ``[I, B, J]`` are its only
    per-capsule output. The first pass (uniform coupling) is a single matmul:
    ``Σ_i u_hat_i = u[B, I·Din] · W[I·Din, J·Dout]``. Ad hoc on the 2-core CPU with
    huge pages (``zoo/hugepages.py``), CapsNet's layer forward and gradients: 170–220 ms;
    the whole train step 1,011 → 758 ms against the votes written out input-major
    (medians of 10, interleaved in one process).

    Input capsules are padded with zeros to a multiple of the chunk: their votes are 0, so
    they add nothing to any sum (exact), and their couplings are dropped.

    Args:
      u: ``[B, I, Din]`` input capsules.
      weights: ``[I, Din, J, Dout]`` (Sabour et al.'s matrix per (input, output) pair; the
        shared form's votes are one plain matmul and need no special layout).
      num_iters, variant, squash_c, return_coupling: as :func:`dynamic_routing`.
      chunk_size: input capsules per scan step (static, >= 1; capped at I). 32 suits jaxlib's
        default XLA:CPU options, which hand the bodies' reductions to YNNPACK. With reductions
        kept out of YNNPACK (``zoo.core.config.YNNPACK_NO_REDUCE``, CapsNet's config) 128 is
        faster: XLA:CPU then writes each chunk's weighted votes once and sums them in windows
        of 32. CapsNet's layer, forward and backward at batch 100 (ad hoc, medians of 10):
        143 ms with chunks of 32, 113-116 with 16, 64 or 128, against 178-189 ms with 32
        under the default options.
    Returns:
      ``v[B, J, Dout]``, or ``(v, c[B, I, J])`` with ``return_coupling``.
    """
    fn = "capsule_routing"
    u_shape, w_shape = jnp.shape(u), jnp.shape(weights)
    if len(u_shape) != 3 or 0 in u_shape:
        raise _shape_error(fn, "u", "[B, I, Din] (rank 3, no empty axis)", u_shape)
    _check_float(fn, "u", u)
    if len(w_shape) != 4 or w_shape[:2] != u_shape[1:] or 0 in w_shape:
        raise _shape_error(fn, "weights", f"[I, Din, J, Dout] = [{u_shape[1]}, {u_shape[2]}, J, Dout]", w_shape)
    _check_float(fn, "weights", weights)
    _check_iters(fn, num_iters)
    _check_variant(fn, variant)
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"{fn}: `chunk_size` must be an int >= 1; got {chunk_size!r}")
    c_squash = _SQUASH_C[variant] if squash_c is None else squash_c
    v, logits = _chunked_routing(u, weights, num_iters, variant, c_squash, min(chunk_size, u_shape[1]))
    if not return_coupling:
        return v
    if logits is None:  # one iteration: b = 0, uniform coupling
        return v, jnp.full(u_shape[:2] + w_shape[2:3], 1.0 / w_shape[2], v.dtype)
    return v, jax.nn.softmax(logits, axis=-1).astype(v.dtype)


def _chunked_routing(u, weights, num_iters, variant, c_squash, chunk):
    """:func:`capsule_routing`'s computation. Returns ``(v [B, J, Dout], logits [B, I, J]
    of the last iteration, or None for one iteration)``."""
    b, n_in, din = u.shape
    _, _, n_out, dout = weights.shape
    n_chunks = -(-n_in // chunk)
    pad = n_chunks * chunk - n_in
    dtype = jnp.result_type(u, weights)
    acc_dtype = jnp.promote_types(dtype, jnp.float32)  # sums over I in float32 at least
    # [chunks, chunk, B, Din] and [chunks, chunk, Din, J·Dout]: per chunk a batched matmul
    u_chunks = jnp.pad(jnp.swapaxes(u, 0, 1), ((0, pad), (0, 0), (0, 0))).reshape(n_chunks, chunk, b, din)
    w_chunks = jnp.pad(weights, ((0, pad), (0, 0), (0, 0), (0, 0))).reshape(n_chunks, chunk, din, n_out * dout)

    def votes(u_c, w_c):  # [chunk, B, J, Dout]
        return jnp.einsum("ibd,idk->ibk", u_c, w_c).astype(dtype).reshape(chunk, b, n_out, dout)

    def weighted_sum(prev, old_logits):
        """One pass: ``s = Σ_i c_i u_hat_i`` with ``c = softmax_J(logits)``, the logits
        ``old_logits + ⟨u_hat, prev⟩`` (without ``old_logits`` when None). Returns
        ``(s, logits)``."""

        @jax.checkpoint
        def body(s, xs):
            u_c, w_c, *old = xs
            u_hat = votes(u_c, w_c)
            logits = jnp.sum(u_hat * prev, axis=-1)  # [chunk, B, J]
            if old:
                logits = logits + old[0]
            coupling = jax.nn.softmax(logits, axis=-1)
            return s + jnp.sum(coupling[..., None] * u_hat, axis=0, dtype=acc_dtype), logits

        xs = (u_chunks, w_chunks) + (() if old_logits is None else (old_logits,))
        return jax.lax.scan(body, jnp.zeros((b, n_out, dout), acc_dtype), xs)

    # First pass, c = 1/J: s = Σ_i u_hat_i / J is one matmul over (I, Din), no votes at all
    flat_w = weights.reshape(n_in * din, n_out * dout)
    s = jnp.dot(u.reshape(b, n_in * din), flat_w, preferred_element_type=acc_dtype).reshape(b, n_out, dout) / n_out
    carried = None  # logits [chunks, chunk, B, J] of the last pass
    for _ in range(1, num_iters):
        if variant == "sabour":  # logits accumulate the agreement with squash(s)
            s, carried = weighted_sum(squash(s, c=c_squash).astype(dtype), carried)
        else:  # logits are the agreement with s / ‖s‖
            direction = s / jnp.sqrt(jnp.maximum(jnp.sum(s * s, -1, keepdims=True), _L2_EPS))
            s, carried = weighted_sum(direction.astype(dtype), None)
    v = squash(s, c=c_squash).astype(dtype)
    if carried is None:
        return v, None
    logits = carried.reshape(n_chunks * chunk, b, n_out)[:n_in]
    return v, jnp.swapaxes(logits, 0, 1)


def dynamic_routing_reference(u_hat, *, num_iters=3, variant="sabour", squash_c=None, return_coupling=False):
    """The same algorithm, one sample and one output capsule at a time."""
    c_squash = _SQUASH_C[variant] if squash_c is None else squash_c
    batch, n_in, n_out, _ = u_hat.shape
    vs, cs = [], []
    for b in range(batch):
        votes = u_hat[b]  # [I, J, D]
        logits = [[jnp.zeros((), u_hat.dtype) for _ in range(n_out)] for _ in range(n_in)]
        for it in range(num_iters):
            coupling = []
            for i in range(n_in):
                exps = [jnp.exp(logits[i][j]) for j in range(n_out)]
                total = sum(exps)
                coupling.append([e / total for e in exps])
            outputs = []
            for j in range(n_out):
                s_j = sum(coupling[i][j] * votes[i, j] for i in range(n_in))
                last = it == num_iters - 1
                if variant == "sabour" or last:
                    out = squash_reference(s_j, c=c_squash)
                else:
                    out = s_j / jnp.sqrt(jnp.maximum(jnp.dot(s_j, s_j), _L2_EPS))
                outputs.append(out)
                if not last:
                    for i in range(n_in):
                        agreement = jnp.dot(votes[i, j], out)
                        logits[i][j] = logits[i][j] + agreement if variant == "sabour" else agreement
        vs.append(jnp.stack(outputs))
        cs.append(jnp.array([[coupling[i][j] for j in range(n_out)] for i in range(n_in)]))
    v, c = jnp.stack(vs), jnp.stack(cs)
    return (v, c) if return_coupling else v


# --------------------------------------------------------------------------- #
# EM routing (matrix capsules)
# --------------------------------------------------------------------------- #


def _check_em(fn, votes, activations_in, beta_u, beta_a, num_iters, inverse_temperature, min_var):
    b, i, j, _ = _check_votes(fn, votes, "votes")
    if jnp.shape(activations_in) != (b, i):
        raise _shape_error(fn, "activations_in", f"[B, I] = {(b, i)}", jnp.shape(activations_in))
    _check_float(fn, "activations_in", activations_in)
    values = concrete(activations_in)  # eager calls only: logits passed for probabilities give NaN
    if values is not None and values.size and not (values.min() >= 0 and values.max() <= 1):
        raise ValueError(f"{fn}: `activations_in` must lie in [0, 1] (probabilities, not logits); "
                         f"got values in [{values.min()}, {values.max()}]")
    for name, beta in (("beta_u", beta_u), ("beta_a", beta_a)):
        if jnp.shape(beta) not in ((), (j,)):
            raise _shape_error(fn, name, f"[] or [J] = {(j,)}", jnp.shape(beta))
    _check_iters(fn, num_iters)
    if not inverse_temperature > 0:
        raise ValueError(f"{fn}: `inverse_temperature` must be > 0; got {inverse_temperature!r}")
    if not min_var > 0:
        raise ValueError(f"{fn}: `min_var` must be > 0 (it floors the variances); got {min_var!r}")


def em_routing(
    votes,
    activations_in,
    beta_u,
    beta_a,
    *,
    num_iters=3,
    inverse_temperature=1.0,
    min_var=1e-4,
    normalize_amount=True,
    return_responsibilities=False,
    initial_mean=None,
    vote_factors=None,
):
    """EM routing (Hinton, Sabour, Frosst 2018), in log space.

    Each parent j is a diagonal Gaussian over the P pose entries. M-step, with
    ``r_ij = a_i R_ij`` (R = responsibilities, a = child activations):
    ``mu_j = Σ_i r_ij V_ij / Σ_i r_ij``, ``σ²_j = Σ_i r_ij (V_ij − mu_j)² / Σ_i r_ij + min_var``,
    ``cost_j = Σ_h (β_u + ln σ_jh) · n_j`` and ``a_j = sigmoid(λ (β_a − cost_j))``, where
    ``n_j = Σ_i r_ij`` is the amount of data the parent received (scaled by J/I when
    ``normalize_amount``, Gritzman 2019, so the cost does not grow with the number of
    children). E-step: ``R_i· = softmax_j(log a_j + log N(V_ij | mu_j, σ²_j))``.

    Args:
      votes: ``[B, I, J, P]``.
      activations_in: ``[B, I]`` child activations in [0, 1].
      beta_u, beta_a: ``[]`` or ``[J]`` learned biases.
      num_iters: EM iterations (static); the last one ends after its M-step.
      inverse_temperature: λ (fixed; the author, post 5155, finds annealing unnecessary).
      min_var: variance floor; keeps ln σ finite for collapsed clusters.
      normalize_amount: scale ``n_j`` by J/I (see above).
      return_responsibilities: also return R of the last E-step (uniform 1/J if
        ``num_iters == 1``).
      initial_mean: optional ``[B, J, P]``, the first M-step's means (uniform
        responsibilities), for callers that get them more cheaply than the pass over the
        votes that computes them otherwise (:func:`conv_capsule_initial_mean`: one matmul).
        They are only the shift about which that M-step's sums are taken, so any finite
        estimate gives the same result up to float32 rounding (the closer, the smaller the
        rounding). A constant: no gradient flows into it.
      vote_factors: optional ``(poses [B, G, C, 4, 4], transforms [G, C, J, 4, 4])`` with
        ``votes[b, g·C + c, j] = (poses[b, g, c] @ transforms[g, c, j]).reshape(16)`` (P = 16;
        :func:`conv_capsule_votes`' children are G = K·K offsets of C types). The M-steps'
        sums over children, and the backward pass's two sums over children per E-step, then
        read these factors instead of the votes: a ``lax.scan`` over the G groups whose body
        recomputes a group's votes and adds them up as elementwise loops over ``[B, J, 16]``.
        Why: XLA:CPU runs a sum over the children axis as a loop nest with that axis
        innermost, which LLVM leaves scalar (about 6 GFLOP/s); the elementwise body
        vectorizes. EMCapsNet's train step (2-core AMD EPYC, medians of 10, one process
        each): 670-713 ms without them, 448-513 ms with the M-steps' sums only, 309-373 ms
        with both. Like ``initial_mean``, constants: they must give ``votes`` (only their
        shapes are checked), and gradients flow through ``votes`` alone.
    Returns:
      ``(pose_mean[B, J, P], activations_out[B, J])`` (and ``R[B, I, J]``).
    """
    fn = "em_routing"
    _check_em(fn, votes, activations_in, beta_u, beta_a, num_iters, inverse_temperature, min_var)
    if initial_mean is not None:
        b, _, j, p = jnp.shape(votes)
        if jnp.shape(initial_mean) != (b, j, p):
            raise _shape_error(fn, "initial_mean", f"[B, J, P] = {(b, j, p)}", jnp.shape(initial_mean))
        _check_float(fn, "initial_mean", initial_mean)
        initial_mean = jax.lax.stop_gradient(jnp.asarray(initial_mean, votes.dtype))
    if vote_factors is not None:
        vote_factors = _check_vote_factors(fn, votes, vote_factors)
    out = _em_routing(votes, activations_in, beta_u, beta_a, initial_mean, vote_factors, num_iters,
                      inverse_temperature, min_var, normalize_amount)  # fmt: skip
    return out if return_responsibilities else out[:2]


def _check_vote_factors(fn, votes, vote_factors):
    """``vote_factors`` as a pair of constant arrays in the votes' dtype, or a clear error."""
    if not (isinstance(vote_factors, (tuple, list)) and len(vote_factors) == 2):
        raise ValueError(f"{fn}: `vote_factors` must be a pair (poses [B, G, C, 4, 4], transforms [G, C, J, 4, 4]); "
                         f"got {type(vote_factors).__name__}")  # fmt: skip
    poses, transforms = vote_factors
    b, i, j, p = jnp.shape(votes)
    ps, ts = jnp.shape(poses), jnp.shape(transforms)
    if len(ps) != 5 or ps[0] != b or ps[-2:] != (4, 4) or ps[1] * ps[2] != i:
        raise _shape_error(fn, "vote_factors[0] (poses)", f"[B, G, C, 4, 4] with B = {b} and G·C = I = {i}", ps)
    if ts != (ps[1], ps[2], j, 4, 4) or p != 16:
        raise _shape_error(fn, "vote_factors[1] (transforms)", f"[G, C, J, 4, 4] = {(ps[1], ps[2], j, 4, 4)} "
                           f"for votes with P = 16 (P is {p})", ts)  # fmt: skip
    _check_float(fn, "vote_factors[0] (poses)", poses)
    _check_float(fn, "vote_factors[1] (transforms)", transforms)
    return tuple(jax.lax.stop_gradient(jnp.asarray(x, votes.dtype)) for x in (poses, transforms))


def _em_routing(votes, a_in, beta_u, beta_a, initial_mean, vote_factors, num_iters, lam, min_var, normalize_amount):
    return _em_routing_vjp(votes, a_in, jnp.asarray(beta_u), jnp.asarray(beta_a), initial_mean, vote_factors,
                           num_iters, lam, min_var, normalize_amount)  # fmt: skip


def _factor_rows(vote_factors):
    """The factors as :func:`_pose_products`' unit-stride rows, group-major for a scan:
    ``([G, B, C, y, 16], [G, C, J, y, 16])``."""
    poses, transforms = vote_factors
    return materialize(jnp.moveaxis(_pose_rows(poses), 1, 0)), _weight_rows(transforms)


def _factored_m_sums(rows, coeff, shift):
    """``Σ_i c (V − K)`` and ``Σ_i c (V − K)²`` over children, the votes recomputed from
    :func:`_factor_rows` one group at a time (see ``em_routing``'s ``vote_factors``).
    ``coeff [B, I, J]``, ``shift [B, J, 16]``; returns two ``[B, J, 16]``."""
    rows_p, rows_w = rows
    n_groups, b, n_types = rows_p.shape[:3]
    n_out = rows_w.shape[2]
    acc_dtype = jnp.promote_types(coeff.dtype, jnp.float32)
    coeff_g = jnp.moveaxis(coeff.reshape(b, n_groups, n_types, n_out), 1, 0)  # [G, B, C, J]

    def body(sums, group):
        rp, rw, cg = group  # [B, C, y, 16], [C, J, y, 16], [B, C, J]
        s1, s2 = sums
        for t in range(n_types):  # unrolled: one elementwise loop over [B, J, 16] per child type
            # _pose_products' sum over y, indexed in one step: with rp[:, t] and rw[t] taken first,
            # EMCapsNet's step went 0.29 -> 0.80 s (AMD host, medians of 10)
            vote = sum(rp[:, t, None, y, :] * rw[None, t, :, y, :] for y in range(4))  # [B, J, 16]
            shifted = vote - shift
            weighted = cg[:, t, :, None] * shifted
            s1, s2 = s1 + weighted, s2 + weighted * shifted
        return (s1, s2), None

    zeros = jnp.zeros((b, n_out, 16), acc_dtype)
    (s1, s2), _ = jax.lax.scan(body, (zeros, zeros), (rows_p, rows_w, coeff_g))
    return s1.astype(coeff.dtype), s2.astype(coeff.dtype)


def _em_iterations(votes, a_in, beta_u, beta_a, initial_mean, vote_factors, num_iters, lam, min_var, normalize_amount):
    """EM routing's forward pass: ``(mean, activations, resp)`` and, per iteration, the
    small statistics the hand-written backward pass reuses. Differentiable as it stands
    (the tests take its autodiff gradients as the oracle of :func:`_em_routing_bwd`)."""
    _, n_in, n_out, p = votes.shape
    amount_scale = n_out / n_in if normalize_amount else 1.0
    resp = jnp.full(votes.shape[:3], 1.0 / n_out, votes.dtype)  # [B, I, J]
    saved = []
    # After the first iteration, the M-step's two sums over children share one pass over the
    # votes, taken about a shift K, the last iteration's means: with S1 = Σ c (V − K),
    # S2 = Σ c (V − K)² and S0 = Σ c,  mu = K S0 + S1 and Σ c (V − mu)² = S2 − 2 (mu − K) S1
    # + (mu − K)² S0. The first iteration computes mu in a pass of its own and then uses
    # K = mu (the corrected two-pass formula), or the caller's `initial_mean`, which saves that
    # pass. Why: 6 passes over the votes going forward
    # instead of 8; EMCapsNet's CPU step 813-832 -> 709-717 ms (2-core CPU, 2026-12-06).
    # The cost: float32 rounding of about eps·(δ/σ)² in σ², δ = mu − K, which matters only
    # when a parent's mean moves by hundreds of σ between iterations (tests/kernels/
    # test_routing.py::test_em_routing_float32_error_on_ill_conditioned_votes: 3.5e-5
    # against 4e-6 for two passes on tight clusters far apart; no worse elsewhere).
    shift = initial_mean
    rows = None if vote_factors is None else _factor_rows(vote_factors)
    for it in range(num_iters):
        # ---- M-step
        weight = resp * a_in[..., None]  # [B, I, J]
        amount = jnp.sum(weight, axis=1)  # [B, J]
        floored = jnp.maximum(amount, _TINY)
        coeff = weight / floored[:, None]  # [B, I, J], sums to 1 over I
        # Multiply-and-reduce rather than einsum: XLA fuses these into one pass over the
        # votes, where a dot_general would first transpose them to put J next to B.
        if shift is None:
            (shift,) = blocked_sums([coeff[..., None] * votes], 1)  # [B, J, P]
            shift = jax.lax.stop_gradient(shift)
        if rows is None:
            shifted = votes - shift[:, None]
            s1, s2 = blocked_sums([coeff[..., None] * shifted, coeff[..., None] * jnp.square(shifted)], 1)  # [B, J, P]
        else:
            s1, s2 = _factored_m_sums(rows, coeff, shift)
        s0 = (amount / floored)[..., None]
        mean = shift * s0 + s1
        offset = mean - shift
        var = jnp.maximum(s2 - 2.0 * offset * s1 + jnp.square(offset) * s0, 0.0) + min_var
        shift = jax.lax.stop_gradient(mean)
        centred = votes - mean[:, None]
        log_var = jnp.log(var)
        cost = (p * beta_u + 0.5 * jnp.sum(log_var, axis=-1)) * (amount * amount_scale)  # [B, J]
        logit = lam * (beta_a - cost)  # [B, J]
        saved.append(dict(resp_in=resp, coeff=coeff, amount=amount, floored=floored, mean=mean, var=var,
                          log_var=log_var, logit=logit))  # fmt: skip
        if it == num_iters - 1:
            break
        # ---- E-step, in log space
        # Terms that do not depend on the child are summed over P on the small [B, J, P]
        # tensors; the per-element work is one multiply-add by the precomputed 1/σ².
        mahalanobis = jnp.sum(jnp.square(centred) * (1.0 / var)[:, None], axis=-1)  # [B, I, J]
        log_norm = jnp.sum(log_var, axis=-1) + p * math.log(2 * math.pi)  # [B, J]
        log_p = -0.5 * (mahalanobis + log_norm[:, None])  # [B, I, J]
        resp = jax.nn.softmax(jax.nn.log_sigmoid(logit)[:, None, :] + log_p, axis=2)
    return (mean, jax.nn.sigmoid(logit), resp), saved


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9))
def _em_routing_vjp(votes, a_in, beta_u, beta_a, initial_mean, vote_factors, num_iters, lam, min_var, normalize_amount):
    return _em_iterations(votes, a_in, beta_u, beta_a, initial_mean, vote_factors, num_iters, lam, min_var,
                          normalize_amount)[0]  # fmt: skip


def _em_routing_fwd(votes, a_in, beta_u, beta_a, initial_mean, vote_factors, num_iters, lam, min_var, normalize_amount):
    out, saved = _em_iterations(votes, a_in, beta_u, beta_a, initial_mean, vote_factors, num_iters, lam, min_var,
                                normalize_amount)  # fmt: skip
    return out, (votes, a_in, beta_u, beta_a, initial_mean, vote_factors, saved)


def _em_routing_bwd(num_iters, lam, min_var, normalize_amount, residuals, cotangents):
    """Reverse pass of :func:`_em_iterations`, written so that the votes are read in few
    fused passes: per EM iteration one reduction over children (the E-step's pull on the
    means and variances) and one over pose entries (the M-step's pull on the coefficients),
    then one elementwise pass for the votes' gradient, a sum over iterations of products
    of [B, I, J] and [B, J, P] factors with ``V − mu_t``. Autodiff of the forward pass read
    and wrote votes-sized tensors about twice as often (EMCapsNet's step, 2-core CPU).

    Notation per iteration t: weights ``w = R_{t-1} a``, amount ``n = Σ_i w``, coefficients
    ``c = w / max(n, tiny)``, ``d = V − mu``. Two identities keep it short:
    ``Σ_i c d = mu (1 − Σ_i c)`` (zero unless the amount fell below the floor), so the
    variance's pull through the mean is a [B, J, P] term; and the softmax's pull is
    ``R (g − Σ_j R g)``.
    """
    votes, a_in, beta_u, beta_a, initial_mean, vote_factors, saved = residuals
    rows = None if vote_factors is None else _factor_rows(vote_factors)
    g_mean, g_act, g_resp = cotangents
    _, n_in, n_out, p = votes.shape
    amount_scale = n_out / n_in if normalize_amount else 1.0
    act = jax.nn.sigmoid(saved[-1]["logit"])
    g_logit = g_act * act * (1.0 - act)  # [B, J]
    g_mu, g_var, g_log_var = g_mean, jnp.zeros_like(g_mean), jnp.zeros_like(g_mean)
    g_resp_out = None  # the cotangent of R_t for the E-step being undone
    g_a = jnp.zeros_like(a_in)
    g_beta_u = jnp.zeros_like(g_logit)
    g_beta_a = jnp.zeros_like(g_logit)
    terms = []  # per iteration: (c [B,I,J], mu, 1/σ², mean pull [B,J,P], variance pull [B,J,P], E pull [B,I,J] | None)
    for t in reversed(range(num_iters)):
        s = saved[t]
        mean, inv_var = s["mean"], 1.0 / s["var"]
        g_m = None
        if t < num_iters - 1:  # ---- E-step t: R_t = softmax_j(log_sigmoid(logit) - (m + log_norm) / 2)
            resp = saved[t + 1]["resp_in"]
            g_z = resp * (g_resp_out - jnp.sum(resp * g_resp_out, axis=2, keepdims=True))  # [B, I, J]
            g_logit = g_logit + jnp.sum(g_z, axis=1) * jax.nn.sigmoid(-s["logit"])
            g_m = -0.5 * g_z  # m_ij = Σ_p d² / σ²
            g_log_var = g_log_var + (-0.5 * jnp.sum(g_z, axis=1))[..., None]  # through log_norm
            if rows is None:
                centred = votes - mean[:, None]
                pull = g_m[..., None] * centred  # one fused pass: two reductions over children
                pull_sum, pull_sq_sum = blocked_sums([pull, pull * centred], 1)
            else:  # the same two sums as an M-step's, with g_m for the coefficients, about the mean
                pull_sum, pull_sq_sum = _factored_m_sums(rows, g_m, mean)
            g_mu = g_mu - 2.0 * pull_sum * inv_var
            g_var = g_var - pull_sq_sum * jnp.square(inv_var)
        # ---- M-step t: logit = λ (β_a − cost), cost = (P β_u + Σ_p log σ² / 2) · n · scale
        g_cost = -lam * g_logit
        g_beta_a = g_beta_a + lam * g_logit
        g_beta_u = g_beta_u + p * s["amount"] * amount_scale * g_cost
        g_log_var = g_log_var + (0.5 * s["amount"] * amount_scale * g_cost)[..., None]
        g_amount = (p * beta_u + 0.5 * jnp.sum(s["log_var"], axis=-1)) * amount_scale * g_cost
        g_var_total = g_var + g_log_var * inv_var  # [B, J, P]
        coeff, floored = s["coeff"], s["floored"]
        coeff_sum = s["amount"] / floored  # Σ_i c: 1 unless the amount is below the floor
        g_mu_total = g_mu - 2.0 * g_var_total * mean * (1.0 - coeff_sum)[..., None]
        # One fused pass: a reduction over pose entries. In the last iteration its two [B, J, P]
        # factors are written out first: they are chains of small ops on the incoming
        # cotangents (in EMCapsNet, each a sum of nine patch pieces), which XLA otherwise fuses
        # into the pass and recomputes for every child (the first ConvCaps: 61 -> 27 ms; step
        # 677-707 -> 648-651 ms, 2-core CPU). Not in the other iterations: their chains are short,
        # and where the votes come from memory (em_routing alone) a pass that reads written
        # factors compiled to scalar code, 40 ms against 10 for the fused form (LLVM vectorized
        # the latter's loop only), while in EMCapsNet's step the difference was within noise.
        if t == num_iters - 1:
            g_var_total, g_mu_total = materialize(g_var_total), materialize(g_mu_total)
        centred = votes - mean[:, None]
        g_coeff = jnp.sum(g_var_total[:, None] * jnp.square(centred) + g_mu_total[:, None] * votes, axis=-1)
        terms.append((coeff, mean, inv_var, g_mu_total, g_var_total, g_m))
        g_floored = -jnp.sum(g_coeff * coeff, axis=1) / floored
        g_amount = g_amount + jnp.where(s["amount"] > _TINY, g_floored, 0.0)
        g_weight = g_coeff / floored[:, None] + g_amount[:, None]  # [B, I, J]
        g_a = g_a + jnp.sum(g_weight * s["resp_in"], axis=2)
        g_resp_out = g_weight * a_in[..., None]  # the cotangent of R_{t-1} (the returned R for t = T-1)
        if t == num_iters - 1:
            g_resp_out = g_resp_out + g_resp
        g_logit = jnp.zeros_like(g_logit)
        g_mu, g_var, g_log_var = jnp.zeros_like(g_mu), jnp.zeros_like(g_mu), jnp.zeros_like(g_mu)
    # The votes' gradient, Σ_t c_t (g_mu_t + 2 d_t g_var_t) + 2 g_m_t d_t / σ²_t, d_t = V − mu_t:
    # one elementwise pass, which XLA fuses into its consumer (pose_products' backward in
    # EMCapsNet). Its small factors are first stacked into two arrays, which XLA writes to
    # memory for the pass to read. Unstacked, XLA fused each factor's chain of small ops into
    # the pass and recomputed it for every child: EMCapsNet's step 2.5 s against 1.4 s
    # (interleaved A/B, 2-core CPU). Summed as a reduction over a stacked t axis, so that the
    # gradient itself is written out, the step took 10-20% longer.
    per_parent = jnp.stack([jnp.stack([m, 2.0 * gv, 2.0 * iv, gm]) for _, m, iv, gm, gv, _ in terms], 2)
    per_child = jnp.stack([jnp.stack([c, jnp.zeros_like(c) if g_m is None else g_m]) for c, *_, g_m in terms], 2)
    g_votes = jnp.zeros_like(votes)
    for t in range(len(terms)):
        mean_t, g_var2_t, inv_var2_t, g_mu_t = (x[:, t, None] for x in per_parent)  # [B, 1, J, P]
        coeff_t, g_m_t = (x[:, t, ..., None] for x in per_child)  # [B, I, J, 1]
        centred_t = votes - mean_t
        g_votes = g_votes + coeff_t * (g_mu_t + centred_t * g_var2_t) + g_m_t * centred_t * inv_var2_t
    g_beta_u = jnp.sum(g_beta_u, axis=0) if beta_u.ndim else jnp.sum(g_beta_u)
    g_beta_a = jnp.sum(g_beta_a, axis=0) if beta_a.ndim else jnp.sum(g_beta_a)
    g_initial_mean = None if initial_mean is None else jnp.zeros_like(initial_mean)  # only a shift: no pull
    g_factors = None if vote_factors is None else tuple(jnp.zeros_like(x) for x in vote_factors)  # constants
    return (g_votes.astype(votes.dtype), g_a.astype(a_in.dtype), g_beta_u.astype(beta_u.dtype),
            g_beta_a.astype(beta_a.dtype), g_initial_mean, g_factors)  # fmt: skip


_em_routing_vjp.defvjp(_em_routing_fwd, _em_routing_bwd)


def em_routing_reference(
    votes, activations_in, beta_u, beta_a, *, num_iters=3, inverse_temperature=1.0, min_var=1e-4,
    normalize_amount=True, return_responsibilities=False,
):
    """The same EM, one sample and one parent at a time, densities as plain products.

    Written in probability space (``p = Π_h N(v_h | mu_h, σ²_h)``, ``R = a p / Σ a p``) for
    obviousness, so it is only meant for moderate inputs where those products neither
    overflow nor underflow.
    """
    batch, n_in, n_out, p = votes.shape
    beta_u = jnp.broadcast_to(beta_u, (n_out,))
    beta_a = jnp.broadcast_to(beta_a, (n_out,))
    amount_scale = n_out / n_in if normalize_amount else 1.0
    means, acts, resps = [], [], []
    for b in range(batch):
        v, a = votes[b], activations_in[b]
        resp = [[1.0 / n_out for _ in range(n_out)] for _ in range(n_in)]
        for it in range(num_iters):
            mu, var, act = [], [], []
            for j in range(n_out):
                w = [resp[i][j] * a[i] for i in range(n_in)]
                total = sum(w)
                denom = jnp.maximum(total, _TINY)
                m = sum(w[i] * v[i, j] for i in range(n_in)) / denom
                s2 = sum(w[i] * (v[i, j] - m) ** 2 for i in range(n_in)) / denom + min_var
                cost = jnp.sum(beta_u[j] + jnp.log(jnp.sqrt(s2))) * total * amount_scale
                mu.append(m)
                var.append(s2)
                act.append(1.0 / (1.0 + jnp.exp(-inverse_temperature * (beta_a[j] - cost))))
            if it == num_iters - 1:
                break
            for i in range(n_in):
                dens = [
                    act[j] * jnp.prod(jnp.exp(-((v[i, j] - mu[j]) ** 2) / (2 * var[j])) / jnp.sqrt(2 * math.pi * var[j]))
                    for j in range(n_out)
                ]
                total = sum(dens)
                resp[i] = [d / total for d in dens]
        means.append(jnp.stack(mu))
        acts.append(jnp.stack(act))
        resps.append(jnp.array(resp))
    out = (jnp.stack(means), jnp.stack(acts))
    return (*out, jnp.stack(resps)) if return_responsibilities else out


# --------------------------------------------------------------------------- #
# Convolutional matrix capsules
# --------------------------------------------------------------------------- #


def extract_patches(x, kernel_size, stride):
    """``x[B, H, W, ...]`` -> ``[B, H', W', K*K, ...]`` (valid padding), by K² strided slices.

    ``H' = (H - K) // stride + 1``. Patch entry ``dy * K + dx`` is the input at
    ``(y * stride + dy, x * stride + dx)``.
    """
    h, w = x.shape[1], x.shape[2]
    if h < kernel_size or w < kernel_size:
        raise ValueError(
            f"extract_patches: spatial size {(h, w)} of `x` is smaller than kernel_size {kernel_size}"
        )
    ho, wo = (h - kernel_size) // stride + 1, (w - kernel_size) // stride + 1
    slices = [
        x[:, dy : dy + stride * (ho - 1) + 1 : stride, dx : dx + stride * (wo - 1) + 1 : stride]
        for dy in range(kernel_size)
        for dx in range(kernel_size)
    ]
    return jnp.stack(slices, axis=3)


def _check_conv_capsules(fn, poses, weights):
    """Checks ``poses[B, H, W, C, 4, 4]`` and ``weights[K, K, C, D, 4, 4]``; returns ``(C, K, D)``."""
    p_shape, w_shape = jnp.shape(poses), jnp.shape(weights)
    if len(p_shape) != 6 or p_shape[-2:] != (4, 4):
        raise _shape_error(fn, "poses", "[B, H, W, C, 4, 4]", p_shape)
    c = p_shape[3]
    if len(w_shape) != 6 or w_shape[0] != w_shape[1] or w_shape[2] != c or w_shape[-2:] != (4, 4):
        raise _shape_error(fn, "weights", f"[K, K, C, D, 4, 4] with C = {c}", w_shape)
    return c, w_shape[0], w_shape[3]


def conv_capsule_votes(poses, weights, *, stride=1):
    """Votes of a convolutional capsule layer: each child pose matrix times a learned
    4×4 transform per (kernel offset, child type, parent type).

    Args:
      poses: ``[B, H, W, C, 4, 4]`` child pose matrices.
      weights: ``[K, K, C, D, 4, 4]``.
      stride: spatial stride.
    Returns:
      votes ``[B, H', W', K*K*C, D, 16]`` (children of a patch flattened as (offset, type)).
    """
    c, k, d = _check_conv_capsules("conv_capsule_votes", poses, weights)
    patches = extract_patches(poses, k, stride)  # [B, H', W', K*K, C, 4, 4]
    votes = pose_products(patches, weights.reshape(k * k, c, d, 4, 4))
    b, ho, wo = votes.shape[:3]
    return votes.reshape(b, ho, wo, k * k * c, d, 16)


def conv_capsule_initial_mean(poses, activations, weights, *, stride=1):
    """The first EM M-step's means of :func:`conv_capsule_votes`, by one matmul, for
    :func:`em_routing`'s ``initial_mean``.

    With uniform responsibilities the coefficients ``c_i = a_i / Σ a`` do not depend on the
    parent, so ``Σ_i c_i V_ij = Σ_(i,y) (c_i P_i)[x, y] W_ij[y, z]``: one product with
    contraction over (child, y) instead of a pass over the votes. Why: that pass took 15–20 ms
    of each conv-capsule layer's forward in EMCapsNet's step (2-core CPU), the matmul ~2 ms.

    Args:
      poses: ``[B, H, W, C, 4, 4]``; activations: ``[B, H, W, C]``; weights: ``[K, K, C, D, 4, 4]``.
      stride: spatial stride.
    Returns:
      ``[B, H', W', D, 16]``: per output position, the activation-weighted mean of its
      children's votes (the coefficients' sum floored as in :func:`em_routing`).
    """
    fn = "conv_capsule_initial_mean"
    c, k, d = _check_conv_capsules(fn, poses, weights)
    if jnp.shape(activations) != jnp.shape(poses)[:4]:
        raise _shape_error(fn, "activations", f"[B, H, W, C] = {jnp.shape(poses)[:4]}", jnp.shape(activations))
    patches = extract_patches(poses, k, stride)  # [B, H', W', K*K, C, 4, 4]
    weight = extract_patches(activations, k, stride) / d  # [B, H', W', K*K, C]: R a with R = 1/D
    total = jnp.sum(weight, axis=(3, 4), keepdims=True)
    coeff = weight / jnp.maximum(total, _TINY)
    mean = jnp.einsum("bhwkcxy,kcdyz->bhwdxz", coeff[..., None, None] * patches, weights.reshape(k * k, c, d, 4, 4))
    return mean.reshape(*mean.shape[:4], 16)


def pose_products(patches, weights):
    """``votes[..., k, c, d, x, z] = Σ_y patches[..., k, c, x, y] · weights[k, c, d, y, z]``:
    every child pose times every transform of its (offset, type), as four multiply-adds
    and, going back, two fused passes over the votes' gradient.

    The multiply-adds read their factors from rows indexed by a vote's 16 entries,
    ``patches[..., x(p), y]`` and ``weights[..., y, z(p)]``, written out once (4× the
    patches, 4× the weights). Why: XLA fuses the votes into every routing pass that reads
    them, and with the factors indexed as ``p // 4`` and ``p % 4`` LLVM compiled those
    passes to scalar loops; with unit-stride rows it vectorizes the passes that reduce
    over pose entries (8-wide): each 26 -> 5 ms in EMCapsNet's first conv-capsule layer, while
    the passes that sum over children (still scalar) went 19-23 -> 31-36 ms. Step (batch 64,
    2-core CPU, alternating processes, medians of 12): 624-634 -> 567-578 ms.

    Why not ``jnp.einsum``: the product contracts over 4 entries, so as a dot XLA:CPU lays
    the votes out with the batch dimensions innermost and transposes them (and their
    gradient) around it. In the small EMCapsNet's train step (batch 64) those transposes
    took about 1.1 of its 2.8 s; with this VJP the step took 2.3 s (ad hoc profiles), and
    1.3 s with the backward pass below and the config's ``YNNPACK_DOTS_ONLY``.

    A ``custom_vjp``: reverse mode only (``jax.jvp`` / ``jacfwd`` through it raise).

    Args:
      patches: ``[..., K, C, 4, 4]``; weights: ``[K, C, D, 4, 4]``.
    Returns:
      ``[..., K, C, D, 4, 4]``.
    """
    fn = "pose_products"
    p_shape, w_shape = jnp.shape(patches), jnp.shape(weights)
    if len(p_shape) < 4 or p_shape[-2:] != (4, 4):
        raise _shape_error(fn, "patches", "[..., K, C, 4, 4]", p_shape)
    if len(w_shape) != 5 or w_shape[:2] != p_shape[-4:-2] or w_shape[-2:] != (4, 4):
        raise _shape_error(fn, "weights", f"[K, C, D, 4, 4] with K, C = {p_shape[-4:-2]}", w_shape)
    return _pose_products_vjp(patches, weights)


def _weight_rows(weights):
    """``weights[K, C, D, y, z]`` -> ``[K, C, D, y, 16]`` with entry ``p = 4x + z`` equal to
    ``weights[..., y, z]``, written out (:func:`pose_products` explains why)."""
    return materialize(jnp.tile(weights, (1, 1, 1, 1, 4)))


def _pose_products(patches, weights):
    # Each vote's 16 entries p = (x, z) as one contiguous row: the factors are first spread
    # to rows indexed by p, patches[x(p), y] and weights[y, z(p)], and written out, so the
    # routing passes that recompute the votes read both with unit stride.
    rows_p = materialize(_pose_rows(patches))  # [..., K, C, y, 16]
    rows_w = _weight_rows(weights)  # [K, C, D, y, 16]
    votes = sum(rows_p[..., None, y, :] * rows_w[..., y, :] for y in range(4))  # [..., K, C, D, 16]
    return votes.reshape(*votes.shape[:-1], 4, 4)


def _pose_rows(patches):
    """``patches[..., x, y]`` -> ``[..., y, 16]`` with entry ``p = 4x + z`` equal to
    ``patches[..., x, y]`` (not written out; :func:`pose_products` explains the rows)."""
    return jnp.repeat(jnp.swapaxes(patches, -1, -2), 4, axis=-1)


_pose_products_vjp = jax.custom_vjp(_pose_products)


def _pose_products_fwd(patches, weights):
    return _pose_products(patches, weights), (patches, weights)


def _pose_products_bwd(residuals, g):  # g: [..., K, C, D, 4(x), 4(z)]
    """Two passes over the votes' gradient ``g``, each one reduction with four outputs,
    one per ``y``: ``d_patches[..., x, y] = Σ_{d,z} g[..., d, x, z] · w[d, y, z]`` and
    ``Σ_x patches[..., x, y] · g[..., d, x, z]``, which the batch sum turns into ``d_weights``.

    Why this form (ad hoc profiles of the EMCapsNet train step, batch 64, 2-core CPU): ``g``
    is a sum of the routing's gradient terms, and XLA fuses it into whatever reads it. Each
    of these sums reads every element of ``g`` four times, once per ``y``. Written as
    reductions over a broadcast, XLA recomputed ``g`` in each (0.5 of a 1.7 s step); one
    reduction per ``y`` had YNNPACK materialise the broadcast operands; ``jnp.einsum``
    transposed ``g`` (0.6 s). A variadic reduction computes each element of ``g`` once
    for its four outputs: 0.12 s for both passes, step 1.3 s.

    ``d_patches`` is now written as sums of 16 slices instead, one per parent type ``d``,
    of ``g``'s rows times the weights' rows (``weights[d, y, z(p)]``, as in the forward),
    then summed over ``z``: an elementwise loop whose innermost axis is the vote's 16
    entries, which LLVM vectorizes; as a reduction over ``(d, z)`` it was a scalar loop.
    EMCapsNet's step (alternating processes, medians of 12): 571-581 -> 523-556 ms.
    """
    patches, weights = residuals
    last = g.ndim - 1  # axes of g: [..., K, C, D(last-2), x(last-1), z(last)]
    g16 = g.reshape(*g.shape[:-2], 16)  # [..., K, C, D, p]
    rows_w = _weight_rows(weights)  # [K, C, D, y, p]: weights[y, z(p)], as in the forward
    n_out = weights.shape[2]
    per_y = [sum(g16[..., d, :] * rows_w[:, :, d, y, :] for d in range(n_out)) for y in range(4)]  # [..., K, C, p]
    d_patches = jnp.stack([jnp.sum(t.reshape(*t.shape[:-1], 4, 4), axis=-1) for t in per_y], axis=-1)  # [..., K, C, x, y]
    per_example = sums([g * patches[..., None, :, y, None] for y in range(4)], axes=(last - 1,))  # y: [..., K, C, D, z]
    # The sum over the batch axes as a product with ones: written as a reduction, XLA fuses
    # it with the sum over x above into one slower loop nest (step 1.38 s instead of 1.25).
    # One product per y, stacked after the sum: stacking the four votes-sized sums first
    # cost a copy of them (EMCapsNet's step, 2-core CPU: 29 ms per layer).
    n_rows = math.prod(per_example[0].shape[: last - 4])
    ones = jnp.ones((n_rows,), g.dtype)
    d_weights = jnp.stack([ones @ s.reshape(n_rows, -1) for s in per_example], axis=-1)  # [K·C·D·z, y]
    d_weights = jnp.swapaxes(d_weights.reshape(*weights.shape[:3], 4, 4), -1, -2)  # [K, C, D, y, z]
    return d_patches.astype(patches.dtype), d_weights.astype(weights.dtype)


_pose_products_vjp.defvjp(_pose_products_fwd, _pose_products_bwd)


def conv_capsule_votes_reference(poses, weights, *, stride=1):
    """Explicit loops over output positions, kernel offsets, child and parent types."""
    k, _, c, d = weights.shape[:4]
    b, h, w = poses.shape[:3]
    ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
    out = jnp.zeros((b, ho, wo, k * k * c, d, 16), poses.dtype)
    for y in range(ho):
        for x in range(wo):
            for dy in range(k):
                for dx in range(k):
                    for ci in range(c):
                        child = poses[:, y * stride + dy, x * stride + dx, ci]  # [B, 4, 4]
                        for di in range(d):
                            vote = child @ weights[dy, dx, ci, di]
                            out = out.at[:, y, x, (dy * k + dx) * c + ci, di].set(vote.reshape(b, 16))
    return out
