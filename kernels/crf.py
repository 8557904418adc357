"""Linear-chain CRF: log-partition, gold-path score, Viterbi and marginals.

Su Jianlin, "简明条件随机场CRF介绍（附带纯Keras实现）" (kexue.fm/archives/5542); Lafferty et al. 2001.

    P(y | x) ∝ exp( start[y_0] + Σ_t e[t, y_t] + Σ_t T[y_t, y_{t+1}] + end[y_{L-1}] )

Conventions shared by every function here:

* ``emissions[B, T, K]``: per-position tag scores (the network's output).
* ``transitions[K, K]``: ``transitions[i, j]`` scores tag ``i`` followed by tag ``j``.
* ``lengths[B]``: right padding. Positions ``t >= lengths[b]`` are ignored; every
  length must lie in ``1..T``.
* ``start[K]`` / ``end[K]``: optional scores of the first / last tag (the author's
  CRF has none; pytorch-crf has both).
* ``allowed``: optional :class:`TransitionConstraints` (see :func:`allowed_transitions`).
  Forbidden moves get the score :data:`FORBIDDEN` instead of ``-inf`` so that
  gradients stay finite; a path through one is worth ``exp(-1e30) = 0``.
* All arithmetic is float32 or wider: lower-precision emissions are upcast.

Each fast function has a ``*_reference`` twin written for obviousness (one sequence at
a time, Python loops); tests compare them and both against brute-force enumeration.
Public functions validate their arguments eagerly (shape and dtype always; values when
the arrays are concrete) and then call a jitted core, so a second call with the same
shapes does not recompile and calls from inside ``jit``/``vmap`` simply inline.
"""

from __future__ import annotations

import functools
import itertools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "FORBIDDEN",
    "TransitionConstraints",
    "allowed_transitions",
    "crf_log_partition",
    "crf_sequence_score",
    "crf_log_likelihood",
    "crf_viterbi",
    "crf_marginals",
    "crf_log_partition_reference",
    "crf_sequence_score_reference",
    "crf_viterbi_reference",
    "crf_marginals_reference",
    "crf_brute_force",
]

# Score of a forbidden transition. Finite on purpose: -inf turns the gradient of
# logsumexp over an all-forbidden row into NaN, while exp(-1e30) is already 0.
FORBIDDEN = -1e30

METHODS = ("scan", "associative")

# Below this a sum of exp-shifted terms may have lost terms to underflow (float32
# denormals start at 1.2e-38), so a pass that met one is redone with exact logsumexp.
_SAFE_SUM = 1e-30


class TransitionConstraints(NamedTuple):
    """Which tag sequences a tagging scheme admits (all boolean numpy arrays).

    Attributes:
      start: ``[K]``, tag may open a sequence.
      end: ``[K]``, tag may close a sequence.
      pairs: ``[K, K]``, ``pairs[i, j]``: tag ``i`` may be followed by tag ``j``.
    """

    start: np.ndarray
    end: np.ndarray
    pairs: np.ndarray


# --------------------------------------------------------------------------- #
# Tagging schemes
# --------------------------------------------------------------------------- #

# Per scheme: the prefixes it uses, which may open / close a chunk, and which
# prefixes continue a chunk of the same type (must follow an opener of that type).
_SCHEMES = {
    # prefix -> (role) ; roles: "outside", "single", "begin", "inside", "end"
    "BIO": {"O": "outside", "B": "begin", "I": "inside"},
    "BIOES": {"O": "outside", "B": "begin", "I": "inside", "E": "end", "S": "single"},
    "BMES": {"O": "outside", "B": "begin", "M": "inside", "E": "end", "S": "single"},
}


def _parse_label(label: str, scheme: str) -> tuple[str, str]:
    prefix, _, kind = label.partition("-")
    role = _SCHEMES[scheme].get(prefix.upper())
    if role is None:
        raise ValueError(
            f"allowed_transitions: label {label!r} does not fit scheme {scheme!r}; "
            f"expected a prefix in {sorted(_SCHEMES[scheme])} optionally followed by "
            f"'-TYPE'"
        )
    if role == "outside" and kind:
        raise ValueError(f"allowed_transitions: label {label!r}: 'O' takes no type")
    return role, kind


def allowed_transitions(scheme: str, labels: Sequence[str]) -> TransitionConstraints:
    """Start, end and pair constraints of a chunk tagging scheme.

    Args:
      scheme: ``"BIO"``, ``"BIOES"`` or ``"BMES"`` (case-insensitive).
      labels: the ``K`` tag names in tag-id order, e.g. ``["O", "B-PER", "I-PER"]``.
        Untyped labels (``"B"``, ``"m"``, for word segmentation) are fine; prefixes
        are case-insensitive.

    Returns:
      :class:`TransitionConstraints` with boolean ``start[K]``, ``end[K]``, ``pairs[K, K]``.
    """
    scheme = scheme.upper()
    if scheme not in _SCHEMES:
        raise ValueError(
            f"allowed_transitions: scheme must be one of {sorted(_SCHEMES)}; got {scheme!r}"
        )
    parsed = [_parse_label(label, scheme) for label in labels]
    k = len(parsed)
    # A chunk is open after "begin"/"inside"; it must then be continued by an
    # "inside"/"end" of the same type. BIO has no "end", so an open chunk may
    # simply stop.
    closes_by_itself = scheme == "BIO"
    start = np.zeros(k, bool)
    end = np.zeros(k, bool)
    pairs = np.zeros((k, k), bool)
    for i, (role_i, kind_i) in enumerate(parsed):
        start[i] = role_i in ("outside", "begin", "single")
        end[i] = role_i in ("outside", "end", "single") or (
            closes_by_itself and role_i in ("begin", "inside")
        )
        for j, (role_j, kind_j) in enumerate(parsed):
            chunk_open = role_i in ("begin", "inside")
            continues = role_j in ("inside", "end")
            if continues:
                pairs[i, j] = chunk_open and kind_i == kind_j
            else:  # role_j opens a new chunk or is outside
                pairs[i, j] = not chunk_open or closes_by_itself
    return TransitionConstraints(start, end, pairs)


# --------------------------------------------------------------------------- #
# Validation
# --------------------------------------------------------------------------- #


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _validate(fn, emissions, transitions, lengths, *, start=None, end=None, allowed=None, tags=None):
    """Raises ValueError naming the argument, what was expected and what was received."""
    e_shape = jnp.shape(emissions)
    if len(e_shape) != 3:
        raise ValueError(
            f"{fn}: `emissions` must have shape [B, T, K] (rank 3); got shape {e_shape}"
        )
    b, t, k = e_shape
    if t < 1 or k < 1:
        raise ValueError(f"{fn}: `emissions` needs T >= 1 and K >= 1; got shape {e_shape}")
    if not jnp.issubdtype(jnp.result_type(emissions), jnp.floating):
        raise ValueError(
            f"{fn}: `emissions` must be floating point; got dtype {jnp.result_type(emissions)}"
        )
    if jnp.shape(transitions) != (k, k):
        raise ValueError(
            f"{fn}: `transitions` must have shape [K, K] = {(k, k)} to match emissions "
            f"{e_shape}; got shape {jnp.shape(transitions)}"
        )
    for name, vec in (("start", start), ("end", end)):
        if vec is not None and jnp.shape(vec) != (k,):
            raise ValueError(f"{fn}: `{name}` must have shape [K] = {(k,)}; got shape {jnp.shape(vec)}")
    if jnp.shape(lengths) != (b,):
        raise ValueError(f"{fn}: `lengths` must have shape [B] = {(b,)}; got shape {jnp.shape(lengths)}")
    if not jnp.issubdtype(jnp.result_type(lengths), jnp.integer):
        raise ValueError(f"{fn}: `lengths` must be an integer array; got dtype {jnp.result_type(lengths)}")
    if _is_concrete(lengths) and b > 0:
        lens = np.asarray(lengths)
        if lens.min() < 1 or lens.max() > t:
            bad = lens[(lens < 1) | (lens > t)]
            raise ValueError(
                f"{fn}: `lengths` must lie in 1..T = 1..{t}; got values {bad[:5].tolist()}"
            )
    if allowed is not None:
        if not isinstance(allowed, TransitionConstraints):
            raise ValueError(
                f"{fn}: `allowed` must be a TransitionConstraints (see allowed_transitions); "
                f"got {type(allowed).__name__}"
            )
        want = ((k,), (k,), (k, k))
        got = tuple(jnp.shape(a) for a in allowed)
        if got != want:
            raise ValueError(
                f"{fn}: `allowed` (start, end, pairs) must have shapes {want}; got {got}"
            )
    if tags is not None:
        if jnp.shape(tags) != (b, t):
            raise ValueError(f"{fn}: `tags` must have shape [B, T] = {(b, t)}; got shape {jnp.shape(tags)}")
        if not jnp.issubdtype(jnp.result_type(tags), jnp.integer):
            raise ValueError(f"{fn}: `tags` must be an integer array; got dtype {jnp.result_type(tags)}")
        if _is_concrete(tags) and _is_concrete(lengths) and b > 0:
            tg = np.asarray(tags)
            valid = np.arange(t)[None, :] < np.asarray(lengths)[:, None]
            bad = tg[valid & ((tg < 0) | (tg >= k))]
            if bad.size:
                raise ValueError(
                    f"{fn}: `tags` must lie in 0..K-1 = 0..{k - 1} within each length; "
                    f"got values {bad[:5].tolist()}"
                )


def _check_method(fn, method):
    if method not in METHODS:
        raise ValueError(f"{fn}: `method` must be one of {METHODS}; got {method!r}")


# --------------------------------------------------------------------------- #
# Fast path
# --------------------------------------------------------------------------- #


def _prepare(emissions, transitions, start, end, allowed):
    """Upcasts to >= float32, fills absent start/end with zeros, applies constraints."""
    dtype = jnp.promote_types(jnp.result_type(emissions), jnp.float32)
    emissions = jnp.asarray(emissions, dtype)
    k = emissions.shape[-1]
    transitions = jnp.asarray(transitions, dtype)
    start = jnp.zeros(k, dtype) if start is None else jnp.asarray(start, dtype)
    end = jnp.zeros(k, dtype) if end is None else jnp.asarray(end, dtype)
    if allowed is not None:
        start = jnp.where(allowed.start, start, FORBIDDEN)
        end = jnp.where(allowed.end, end, FORBIDDEN)
        transitions = jnp.where(allowed.pairs, transitions, FORBIDDEN)
    return emissions, transitions, start, end


def _kahan_add(total, compensation, value):
    """Compensated summation: log Z accumulates T shifts, and plain float32 adds drift."""
    y = value - compensation
    new_total = total + y
    return new_total, (new_total - total) - y


# The scan forward algorithm and its hand-written VJP.
#
# α_t[j] = logsumexp_i(α_{t-1}[i] + T[i, j]) + e_t[j]   (forward)
# β_t[i] = logsumexp_j(T[i, j] + e_{t+1}[j] + β_{t+1}[j]) (backward), β_{L-1} = end
#
# Both recursions carry a state normalised per row (α̂ = α − max α, largest entry 0);
# the forward's shifts are summed with Kahan compensation into log Z, which keeps
# float32 log Z within ~1e-7 relative for T in the thousands.
#
# Fast pass: each logsumexp over K is a matrix product with exp(T) shifted so every
# row/column peaks at 1, e.g. log(exp(α̂) @ exp(T − colmax T)) + colmax T: K
# exponentials per step instead of K². Nothing overflows, but a state whose
# predecessors all sit ~70 nats below the best one underflows (confident taggers with
# constraints do that). A pass therefore records whether any live sum fell below 1e-30,
# and if one did the pass is redone with the exact K² logsumexp: one `lax.cond` around
# the scan rather than one per step, which on CPU costs more than the rare redo.
#
# β does not depend on the cotangent, so the VJP's forward rule runs α and β in one
# fused scan (half the loop iterations: small-K steps are dominated by per-iteration
# overhead), and the backward rule is a few vectorised ops.


class _Recursions(NamedTuple):
    """Precomputed per-call constants shared by the α and β steps."""

    transitions: jax.Array  # [K, K]
    col_max: jax.Array  # [K]
    exp_trans_col: jax.Array  # [K, K]: exp(T − colmax), each column peaks at 1
    row_shift: jax.Array  # [K]: rowmax − max(rowmax) <= 0
    exp_trans_row: jax.Array  # [K, K]: exp(T − rowmax), each row peaks at 1


def _recursions(transitions) -> _Recursions:
    col_max = jax.lax.stop_gradient(jnp.max(transitions, axis=0))
    row_max = jax.lax.stop_gradient(jnp.max(transitions, axis=1))
    return _Recursions(
        transitions,
        col_max,
        jnp.exp(transitions - col_max),
        row_max - jnp.max(row_max),
        jnp.exp(transitions - row_max[:, None]),
    )


def _alpha_step(rec: _Recursions, exact: bool, carry, inputs):
    """One forward step. carry: (α̂ [B, K], log_norm [B], compensation [B], all_safe)."""
    alpha_hat, log_norm, compensation, all_safe = carry
    emit_t, active = inputs  # [B, K], [B]: past a sequence's end the state is carried
    if exact:
        new, safe = jax.nn.logsumexp(alpha_hat[:, :, None] + rec.transitions[None], axis=1), True
    else:
        total = jnp.exp(alpha_hat) @ rec.exp_trans_col  # [B, K]
        safe = jnp.all((total > _SAFE_SUM) | ~active[:, None])
        new = jnp.log(jnp.maximum(total, _SAFE_SUM)) + rec.col_max
    new = new + emit_t
    shift = jnp.max(new, axis=-1)  # [B]
    alpha_hat = jnp.where(active[:, None], new - shift[:, None], alpha_hat)
    log_norm, compensation = _kahan_add(log_norm, compensation, jnp.where(active, shift, 0.0))
    return (alpha_hat, log_norm, compensation, all_safe & safe), alpha_hat


def _beta_step(rec: _Recursions, exact: bool, carry, inputs):
    """One backward step, from β̂_t to β̂_{t-1}. carry: (β̂_t [B, K], all_safe).

    Also emits v = exp(w − max w) with w = e_t + β̂_t, and total = v @ exp_trans_rowᵀ:
    the factors of the pair posterior of step t (see ``_forward_scan_bwd``).
    """
    beta_hat, all_safe = carry
    emit_t, active = inputs
    w = emit_t + beta_hat
    v = jnp.exp(w - jnp.max(w, axis=-1, keepdims=True))  # [B, K], max 1
    total = v @ rec.exp_trans_row.T  # [B, K_prev]
    if exact:
        beta_prev, safe = jax.nn.logsumexp(rec.transitions[None] + w[:, None, :], axis=-1), True
    else:
        safe = jnp.all((total > _SAFE_SUM) | ~active[:, None])
        beta_prev = jnp.log(jnp.maximum(total, _SAFE_SUM)) + rec.row_shift
    beta_prev = beta_prev - jnp.max(beta_prev, axis=-1, keepdims=True)
    beta_prev = jnp.where(active[:, None], beta_prev, beta_hat)
    return (beta_prev, all_safe & safe), (beta_hat, v, total)


def _scan_inputs(emissions, lengths):
    """(e_t [T-1, B, K], active_t [T-1, B]) for steps t = 1..T-1."""
    active = jnp.arange(1, emissions.shape[1])[:, None] < lengths[None, :]
    return jnp.swapaxes(emissions[:, 1:], 0, 1), active


def _alpha_init(emissions, start):
    alpha0 = start + emissions[:, 0]
    shift0 = jnp.max(alpha0, axis=-1)
    return (alpha0 - shift0[:, None], shift0, jnp.zeros_like(shift0), jnp.array(True))


def _alpha_finish(init, carry, alpha_hats, end):
    """log Z [B], α̂ [T, B, K], and α̂ at each sequence's last position."""
    alpha_hat, log_norm, compensation, _ = carry
    log_z = (log_norm - compensation) + jax.nn.logsumexp(alpha_hat + end, axis=-1)
    return log_z, jnp.concatenate([init[0][None], alpha_hats], axis=0), alpha_hat


def _alpha_pass(rec, emissions, lengths, start, end, exact):
    init = _alpha_init(emissions, start)
    carry, alpha_hats = jax.lax.scan(functools.partial(_alpha_step, rec, exact), init, _scan_inputs(emissions, lengths))
    return carry[-1], _alpha_finish(init, carry, alpha_hats, end)


def _beta_init(end, bsz):
    return (jnp.broadcast_to(end - jnp.max(end), (bsz, end.shape[0])), jnp.array(True))


def _beta_pass(rec, emissions, lengths, end, exact):
    (_, all_safe), outputs = jax.lax.scan(
        functools.partial(_beta_step, rec, exact), _beta_init(end, emissions.shape[0]),
        _scan_inputs(emissions, lengths), reverse=True,
    )  # fmt: skip
    return all_safe, outputs


def _forward_pass(emissions, transitions, lengths, start, end):
    """log Z [B] alone (the primal): the α pass, redone exactly if it underflowed."""
    rec = _recursions(transitions)
    safe, fast = _alpha_pass(rec, emissions, lengths, start, end, exact=False)
    return jax.lax.cond(safe, lambda: fast, lambda: _alpha_pass(rec, emissions, lengths, start, end, exact=True)[1])[0]


@jax.custom_vjp
def _forward_scan(emissions, transitions, lengths, start, end):
    """log Z [B] by the scan forward algorithm, with a hand-written forward-backward VJP."""
    return _forward_pass(emissions, transitions, lengths, start, end)


def _forward_scan_fwd(emissions, transitions, lengths, start, end):
    """α and β in one fused scan (β is cotangent-free), exact redos where needed."""
    rec = _recursions(transitions)
    emit, active = _scan_inputs(emissions, lengths)
    alpha_init, beta_init = _alpha_init(emissions, start), _beta_init(end, emissions.shape[0])

    num_steps = emissions.shape[1] - 1

    def fused(carry, i):
        # Forward step t = i + 1 and backward step t = T − 1 − i. The β outputs are
        # written straight to their time slot, so nothing needs flipping afterwards.
        alpha_carry, beta_carry, beta_out = carry
        j = num_steps - 1 - i
        alpha_carry, alpha_hat = _alpha_step(rec, False, alpha_carry, (emit[i], active[i]))
        beta_carry, step_out = _beta_step(rec, False, beta_carry, (emit[j], active[j]))
        beta_out = jax.tree.map(lambda buf, x: jax.lax.dynamic_update_index_in_dim(buf, x, j, 0), beta_out, step_out)
        return (alpha_carry, beta_carry, beta_out), alpha_hat

    buffers = (jnp.zeros_like(emit),) * 3  # β̂, v, total per step
    (alpha_carry, (_, beta_safe), beta_out), alpha_hats = jax.lax.scan(
        fused, (alpha_init, beta_init, buffers), jnp.arange(num_steps)
    )
    alpha = jax.lax.cond(
        alpha_carry[-1],
        lambda: _alpha_finish(alpha_init, alpha_carry, alpha_hats, end),
        lambda: _alpha_pass(rec, emissions, lengths, start, end, exact=True)[1],
    )
    beta = jax.lax.cond(
        beta_safe,
        lambda: beta_out,
        lambda: _beta_pass(rec, emissions, lengths, end, exact=True)[1],
    )
    log_z, alpha_hats, alpha_last = alpha
    return log_z, (emissions, lengths, end, rec, alpha_hats, alpha_last, beta, beta_safe)


def _forward_scan_bwd(residuals, g):
    """Exact posteriors from α̂ and β̂, weighted by the cotangent g [B].

    d log Z / d T[i, j] = Σ_t P(y_{t-1} = i, y_t = j) and d log Z / d e_t = P(y_t). When
    the β pass needed no exact redo, the pair posterior of step t factorises exactly as
    x[i] · exp(T[i, j] − rowmax_i) · v[j] with bounded x and v (the β pass's own
    factors), and its row sums x[i] · total[i] are the posterior of position t − 1;
    otherwise the posteriors are computed in log space over [T, B, K, K]. The last
    position's posterior is softmax(α̂_{L−1} + end). Only first-order reverse mode is
    defined (no jvp, no Hessians).
    """
    emissions, lengths, end, rec, alpha_hats, alpha_last, (beta_hats, vs, totals), beta_safe = residuals
    bsz, t_max, k = emissions.shape
    active = jnp.arange(1, t_max)[:, None] < lengths[None, :]  # [T-1, B]
    weight = jnp.where(active, g[None, :], 0.0)[..., None]  # [T-1, B, 1]

    def factorised():
        a = jnp.exp(alpha_hats[:-1] + rec.row_shift)  # <= 1
        # x·total sums to the weight and total > 1e-30 on fast steps, so x is finite.
        x = a * weight / jnp.maximum(jnp.sum(a * totals, axis=-1, keepdims=True), _SAFE_SUM)
        return jnp.einsum("tbi,tbj->ij", x, vs) * rec.exp_trans_row, x * totals

    def log_space():
        emit = jnp.swapaxes(emissions[:, 1:], 0, 1)  # only this rare branch needs e_t again
        scores = alpha_hats[:-1, :, :, None] + rec.transitions + (emit + beta_hats)[:, :, None, :]
        pair = jnp.exp(scores - jax.nn.logsumexp(scores, axis=(-2, -1), keepdims=True)) * weight[..., None]
        return jnp.sum(pair, axis=(0, 1)), jnp.sum(pair, axis=-1)  # [T-1, B, K_prev, K]

    grad_trans, posterior = jax.lax.cond(beta_safe, factorised, log_space)
    # Weighted posteriors of positions 0..T-2, then the last position of each sequence.
    posterior = jnp.swapaxes(posterior, 0, 1)  # [B, T-1, K]
    last = jax.nn.softmax(alpha_last + end, axis=-1) * g[:, None]  # [B, K]
    is_last = (jnp.arange(t_max)[None, :] == (lengths - 1)[:, None])[..., None]  # [B, T, 1]
    grad_emissions = jnp.concatenate([posterior, jnp.zeros_like(last)[:, None]], axis=1)
    grad_emissions = jnp.where(is_last, last[:, None, :], grad_emissions)
    grad_start = jnp.sum(grad_emissions[:, 0], axis=0)
    grad_end = jnp.sum(last, axis=0)
    grad_lengths = np.zeros(lengths.shape, jax.dtypes.float0)
    return grad_emissions, grad_trans, grad_lengths, grad_start, grad_end


_forward_scan.defvjp(_forward_scan_fwd, _forward_scan_bwd)


def _log_matmul(a, b):
    """Log-semiring matrix product: out[..., i, j] = logsumexp_k a[..., i, k] + b[..., k, j]."""
    return jax.nn.logsumexp(a[..., :, :, None] + b[..., None, :, :], axis=-2)


def _forward_associative(emissions, transitions, lengths, start, end):
    """Log-depth forward: associative scan of per-step K×K log-semiring matrices."""
    bsz, t, k = emissions.shape
    # Step t (1 <= t < T) maps α_{t-1} to α_t through M_t[i, j] = T[i, j] + e_t[j];
    # padded steps are the log-semiring identity (0 on the diagonal, "−inf" off it).
    mats = transitions[None, None] + emissions[:, 1:, None, :]  # [B, T-1, K, K]
    identity = jnp.where(jnp.eye(k, dtype=bool), 0.0, FORBIDDEN).astype(emissions.dtype)
    active = (jnp.arange(1, t)[None, :] < lengths[:, None])[:, :, None, None]
    mats = jnp.where(active, mats, identity)
    alpha0 = start + emissions[:, 0]  # [B, K]
    if t == 1:
        return jax.nn.logsumexp(alpha0 + end, axis=-1)
    total = jax.lax.associative_scan(_log_matmul, mats, axis=1)[:, -1]  # [B, K, K]
    alpha = jax.nn.logsumexp(alpha0[:, :, None] + total, axis=1)
    return jax.nn.logsumexp(alpha + end, axis=-1)


@functools.partial(jax.jit, static_argnames=("method",))
def _log_partition(emissions, transitions, lengths, start, end, allowed, *, method):
    emissions, transitions, start, end = _prepare(emissions, transitions, start, end, allowed)
    forward = _forward_scan if method == "scan" else _forward_associative
    return forward(emissions, transitions, lengths, start, end)


@jax.jit
def _sequence_score(emissions, transitions, lengths, tags, start, end, allowed):
    emissions, transitions, start, end = _prepare(emissions, transitions, start, end, allowed)
    t = emissions.shape[1]
    valid = jnp.arange(t)[None, :] < lengths[:, None]  # [B, T]
    # Clip so padded positions (any value) gather safely; they are masked out below.
    tags = jnp.clip(tags, 0, emissions.shape[-1] - 1)
    emit = jnp.take_along_axis(emissions, tags[..., None], axis=-1)[..., 0]  # [B, T]
    trans = transitions[tags[:, :-1], tags[:, 1:]]  # [B, T-1]
    last = jnp.take_along_axis(tags, (lengths - 1)[:, None], axis=1)[:, 0]
    return (
        jnp.sum(jnp.where(valid, emit, 0.0), axis=1)
        + jnp.sum(jnp.where(valid[:, 1:], trans, 0.0), axis=1)
        + start[tags[:, 0]]
        + end[last]
    )


@jax.jit
def _viterbi(emissions, transitions, lengths, start, end, allowed):
    emissions, transitions, start, end = _prepare(emissions, transitions, start, end, allowed)
    bsz, t, k = emissions.shape
    delta0 = start + emissions[:, 0]  # [B, K]
    identity = jnp.broadcast_to(jnp.arange(k), (bsz, k))

    def forward(delta, inputs):
        emit_t, t_idx = inputs
        scores = delta[:, :, None] + transitions[None]  # [B, K_prev, K_next]
        best_prev = jnp.argmax(scores, axis=1)  # [B, K]
        new = jnp.max(scores, axis=1) + emit_t
        active = (t_idx < lengths)[:, None]
        # Padded steps: carry the score and point every tag back to itself.
        return jnp.where(active, new, delta), jnp.where(active, best_prev, identity)

    delta, backpointers = jax.lax.scan(
        forward, delta0, (jnp.swapaxes(emissions[:, 1:], 0, 1), jnp.arange(1, t))
    )  # backpointers: [T-1, B, K]
    final = delta + end
    best_last = jnp.argmax(final, axis=-1)  # [B]
    best_score = jnp.max(final, axis=-1)

    def backward(tag, pointers):
        prev = jnp.take_along_axis(pointers, tag[:, None], axis=1)[:, 0]
        return prev, prev

    _, earlier = jax.lax.scan(backward, best_last, backpointers, reverse=True)  # [T-1, B]
    tags = jnp.concatenate([jnp.swapaxes(earlier, 0, 1), best_last[:, None]], axis=1)
    tags = jnp.where(jnp.arange(t)[None, :] < lengths[:, None], tags, 0)
    return tags.astype(jnp.int32), best_score


# --------------------------------------------------------------------------- #
# Public API
# --------------------------------------------------------------------------- #


def crf_log_partition(
    emissions, transitions, lengths, *, start=None, end=None, allowed=None, method="scan"
):
    """log Z: log-sum-exp of the scores of all tag paths of each sequence.

    Args:
      emissions: ``[B, T, K]`` float.
      transitions: ``[K, K]``, ``transitions[i, j]`` = score of tag i followed by tag j.
      lengths: ``[B]`` int in ``1..T`` (right padding).
      start, end: optional ``[K]`` scores of the first and last tag.
      allowed: optional :class:`TransitionConstraints`; forbidden paths are excluded.
      method: ``"scan"`` (sequential forward algorithm, O(T·K²) work, T steps) or
        ``"associative"`` (log-depth ``lax.associative_scan`` of K×K log-semiring
        products: O(T·K³) work, O(log T) depth; for long sequences and small K).

    Returns:
      ``[B]`` float32 log-partition.
    """
    _check_method("crf_log_partition", method)
    _validate("crf_log_partition", emissions, transitions, lengths, start=start, end=end, allowed=allowed)
    return _log_partition(emissions, transitions, lengths, start, end, allowed, method=method)


def crf_sequence_score(emissions, transitions, lengths, tags, *, start=None, end=None, allowed=None):
    """Unnormalised score of the gold paths ``tags[B, T]`` (padded positions ignored).

    Returns:
      ``[B]`` float32: start + Σ emissions + Σ transitions + end along each path.
    """
    _validate("crf_sequence_score", emissions, transitions, lengths, start=start, end=end, allowed=allowed, tags=tags)
    return _sequence_score(emissions, transitions, lengths, tags, start, end, allowed)


def crf_log_likelihood(
    emissions, transitions, lengths, tags, *, start=None, end=None, allowed=None, method="scan"
):
    """log P(tags | emissions) = score(tags) − log Z, per sequence.

    Args:
      emissions, transitions, lengths, start, end, allowed, method: as in
        :func:`crf_log_partition`.
      tags: ``[B, T]`` int gold tags in ``0..K-1`` (values at padded positions are ignored).

    Returns:
      ``[B]`` float32 log-likelihood (negate and average for a loss).
    """
    _check_method("crf_log_likelihood", method)
    _validate("crf_log_likelihood", emissions, transitions, lengths, start=start, end=end, allowed=allowed, tags=tags)
    score = _sequence_score(emissions, transitions, lengths, tags, start, end, allowed)
    return score - _log_partition(emissions, transitions, lengths, start, end, allowed, method=method)


def crf_viterbi(emissions, transitions, lengths, *, start=None, end=None, allowed=None):
    """Best tag path per sequence, fully on device (reverse-scan back-trace).

    Returns:
      ``(tags[B, T] int32, score[B] float32)``; positions ``t >= lengths[b]`` hold 0.
    """
    _validate("crf_viterbi", emissions, transitions, lengths, start=start, end=end, allowed=allowed)
    return _viterbi(emissions, transitions, lengths, start, end, allowed)


def crf_marginals(emissions, transitions, lengths, *, start=None, end=None, allowed=None, method="scan"):
    """Posterior tag marginals ``P(y_t = k | x)``: the gradient of log Z w.r.t. emissions.

    Returns:
      ``[B, T, K]`` float32; rows sum to 1 inside each length and are 0 past it.
    """
    _check_method("crf_marginals", method)
    _validate("crf_marginals", emissions, transitions, lengths, start=start, end=end, allowed=allowed)
    return _marginals(emissions, transitions, lengths, start, end, allowed, method=method)


@functools.partial(jax.jit, static_argnames=("method",))
def _marginals(emissions, transitions, lengths, start, end, allowed, *, method):
    emissions = jnp.asarray(emissions, jnp.promote_types(emissions.dtype, jnp.float32))

    def total_log_z(e):
        return jnp.sum(_log_partition(e, transitions, lengths, start, end, allowed, method=method))

    return jax.grad(total_log_z)(emissions)


# --------------------------------------------------------------------------- #
# Reference twins: one sequence at a time, plain loops, float64 numpy.
# --------------------------------------------------------------------------- #


def _reference_inputs(emissions, transitions, start, end, allowed):
    e = np.asarray(emissions, np.float64)
    k = e.shape[-1]
    tr = np.asarray(transitions, np.float64).copy()
    st = np.zeros(k) if start is None else np.asarray(start, np.float64).copy()
    en = np.zeros(k) if end is None else np.asarray(end, np.float64).copy()
    if allowed is not None:
        st[~np.asarray(allowed.start)] = -np.inf
        en[~np.asarray(allowed.end)] = -np.inf
        tr[~np.asarray(allowed.pairs)] = -np.inf
    return e, tr, st, en


def _logsumexp(x):
    m = np.max(x)
    return m if np.isneginf(m) else m + np.log(np.sum(np.exp(x - m)))


def crf_log_partition_reference(emissions, transitions, lengths, *, start=None, end=None, allowed=None):
    """Forward algorithm, one sequence at a time, in float64 (forbidden = true −inf)."""
    e, tr, st, en = _reference_inputs(emissions, transitions, start, end, allowed)
    out = []
    for b, n in enumerate(np.asarray(lengths)):
        alpha = st + e[b, 0]
        for t in range(1, int(n)):
            alpha = np.array([_logsumexp(alpha + tr[:, j]) for j in range(len(alpha))]) + e[b, t]
        out.append(_logsumexp(alpha + en))
    return np.array(out)


def crf_sequence_score_reference(emissions, transitions, lengths, tags, *, start=None, end=None, allowed=None):
    """Sum of the scores along each gold path, one sequence at a time, in float64."""
    e, tr, st, en = _reference_inputs(emissions, transitions, start, end, allowed)
    tags = np.asarray(tags)
    out = []
    for b, n in enumerate(np.asarray(lengths)):
        path = tags[b, : int(n)]
        score = st[path[0]] + en[path[-1]]
        score += sum(e[b, t, path[t]] for t in range(len(path)))
        score += sum(tr[path[t - 1], path[t]] for t in range(1, len(path)))
        out.append(score)
    return np.array(out)


def crf_viterbi_reference(emissions, transitions, lengths, *, start=None, end=None, allowed=None):
    """Max-product recursion with a per-sequence Python back-trace, in float64."""
    e, tr, st, en = _reference_inputs(emissions, transitions, start, end, allowed)
    bsz, t_max, k = e.shape
    tags = np.zeros((bsz, t_max), np.int32)
    scores = np.zeros(bsz)
    for b, n in enumerate(np.asarray(lengths)):
        delta = st + e[b, 0]
        pointers = []
        for t in range(1, int(n)):
            cand = delta[:, None] + tr  # [K_prev, K_next]
            pointers.append(np.argmax(cand, axis=0))
            delta = np.max(cand, axis=0) + e[b, t]
        last = int(np.argmax(delta + en))
        scores[b] = np.max(delta + en)
        path = [last]
        for ptr in reversed(pointers):
            path.append(int(ptr[path[-1]]))
        tags[b, : int(n)] = path[::-1]
    return tags, scores


def crf_marginals_reference(emissions, transitions, lengths, *, start=None, end=None, allowed=None):
    """Forward-backward marginals P(y_t = k), one sequence at a time, in float64."""
    e, tr, st, en = _reference_inputs(emissions, transitions, start, end, allowed)
    bsz, t_max, k = e.shape
    out = np.zeros((bsz, t_max, k))
    for b, n in enumerate(np.asarray(lengths)):
        n = int(n)
        alpha = np.zeros((n, k))
        beta = np.zeros((n, k))
        alpha[0] = st + e[b, 0]
        for t in range(1, n):
            alpha[t] = [_logsumexp(alpha[t - 1] + tr[:, j]) for j in range(k)] + e[b, t]
        beta[n - 1] = en
        for t in range(n - 2, -1, -1):
            beta[t] = [_logsumexp(tr[i] + e[b, t + 1] + beta[t + 1]) for i in range(k)]
        log_z = _logsumexp(alpha[n - 1] + en)
        out[b, :n] = np.exp(alpha + beta - log_z)
    return out


def crf_brute_force(emissions, transitions, lengths, *, start=None, end=None, allowed=None):
    """Enumerates all K^L paths of every sequence (tiny shapes only; a test oracle).

    Returns:
      dict with ``log_z[B]``, ``best_tags[B, T]``, ``best_score[B]`` and ``marginals[B, T, K]``.
    """
    e, tr, st, en = _reference_inputs(emissions, transitions, start, end, allowed)
    bsz, t_max, k = e.shape
    log_z = np.zeros(bsz)
    best_tags = np.zeros((bsz, t_max), np.int32)
    best_score = np.zeros(bsz)
    marginals = np.zeros((bsz, t_max, k))
    for b, n in enumerate(np.asarray(lengths)):
        n = int(n)
        paths = np.array(list(itertools.product(range(k), repeat=n)))  # [K^n, n]
        scores = st[paths[:, 0]] + en[paths[:, -1]] + e[b, np.arange(n), paths].sum(axis=1)
        if n > 1:
            scores = scores + tr[paths[:, :-1], paths[:, 1:]].sum(axis=1)
        log_z[b] = _logsumexp(scores)
        best = int(np.argmax(scores))
        best_tags[b, :n] = paths[best]
        best_score[b] = scores[best]
        probs = np.exp(scores - log_z[b])
        for t in range(n):
            marginals[b, t] = np.bincount(paths[:, t], weights=probs, minlength=k)
    return {"log_z": log_z, "best_tags": best_tags, "best_score": best_score, "marginals": marginals}
