"""Fixed-shape autoregressive decoding: greedy, sampling (temperature / top-k / top-p) and beam search.

Posts 7500 ("根本停不下来") and 5861 (seq2seq titles). The author's ``AutoRegressiveDecoder``
shrinks its beam as hypotheses end (dynamic shapes); everything here runs inside one
``jax.lax.while_loop`` over fixed-size buffers instead, so it is jittable and compiles once
per (batch, prompt length, max_new_tokens, vocabulary) shape.

**Model interface.** A pure step function::

    logits_fn(tokens [B', L] int32, step int32 scalar, cache) -> (logits [B', V] float, cache)

returns the logits of the token at position ``step + 1`` given ``tokens[:, :step + 1]``.
``tokens`` is the fixed buffer of length ``L = P + max_new_tokens`` (``P`` = prompt length);
positions ``> step`` hold padding and must be ignored by the model. The first call has
``step = P - 1``. ``cache`` is any pytree the model carries from step to step (``None`` for a
model that recomputes from ``tokens``); the returned cache must keep the structure, shapes and
dtypes of the one passed in. The cache you pass to the decoders is the model's state *before*
it has consumed position ``P - 1`` (that is, the prefill of ``prompt[:, :P - 1]``). For greedy
and sampling ``B' = B``; for beam search ``B' = B * beam_size`` (see :func:`beam_search`).

**Conventions shared by all decoders.**

* ``lengths`` counts *generated* tokens, the EOS included when one was produced (so it is in
  ``[1, max_new_tokens]``).
* ``scores`` are sums of the model's own log-probabilities ``log_softmax(logits)`` (temperature
  1, before any top-k/top-p truncation or EOS masking) of the generated tokens, EOS included.
  They do not depend on the decoding settings, only on which tokens were chosen.
* After a row emits ``eos_id`` it is *finished*: every later position holds ``pad_id``
  (default: ``eos_id``) and its score no longer changes. The loop stops as soon as every row
  (every beam of every row) is finished, or after ``max_new_tokens`` steps; positions never
  reached hold ``pad_id``.
* ``min_length = m`` forbids EOS as any of the first ``m`` generated tokens (its logit is set to
  ``-inf`` for the choice), so a finished row has ``length >= m + 1``.
* Logits are promoted to float32.
* Wrap the decoders in ``jax.jit`` (``logits_fn`` and the keyword settings are closed over or
  static; ``prompt``, ``key`` and ``cache`` may be traced). Argument checks run eagerly at trace
  time.

**Top-p without a sort.** :func:`top_p_mask` keeps the tokens with ``p >= τ``, where ``τ`` is the
largest threshold whose kept mass ``Σ_{p_j >= τ} p_j`` is still ``>= top_p``. The kept mass is a
step function of ``τ`` that only changes at probability values, so ``τ`` is one of the
probabilities; it is found exactly by bisection over the **bit patterns** of non-negative
float32 numbers (which are ordered like the numbers), 32 iterations of an O(V) masked sum —
no sort. For distinct probabilities this is exactly the textbook nucleus
(:func:`top_p_mask_reference`: sort descending, keep the shortest prefix with cumulative mass
``>= top_p``). **Ties:** tokens whose probability equals ``τ`` are all kept, whereas the
sorted version keeps only as many of them as its (arbitrary) sort order needs, so the mask
may keep a few more tokens; it always keeps at least one (the most likely). When float32
round-off makes the total mass fall short of ``top_p`` (``top_p`` near 1), ``τ = 0`` and every
token is kept. Near a boundary (cumulative mass within ~1e-7 of ``top_p``) the float32 sums
may round the other way than a sorted cumsum does.

**Beam search** keeps ``[B, K]`` beams throughout (see :func:`beam_search`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kernels.checks import argument_error as _error, concrete as _concrete

_TOP_P_ITERS = 32  # bisection steps over float32 bit patterns; 30 suffice for [0, 1]
_ONE_PLUS_BITS = 0x3F800001  # bit pattern just above 1.0f


class Output(NamedTuple):
    """Greedy / sampling result.

    tokens: int32 ``[B, P + max_new_tokens]`` (prompt, then generated tokens, then ``pad_id``).
    lengths: int32 ``[B]`` generated tokens, EOS included.
    scores: float32 ``[B]`` sum of the model's log-probabilities of the generated tokens.
    """

    tokens: jax.Array
    lengths: jax.Array
    scores: jax.Array


class BeamOutput(NamedTuple):
    """Beam-search result, beams sorted best first.

    tokens: int32 ``[B, K, P + max_new_tokens]``.
    scores: float32 ``[B, K]`` length-penalised log-probability ``logp / ((5 + len) / 6) ** α``
      (plain ``logp`` when ``α = 0``); ``-inf`` for beams that hold no hypothesis (only when
      ``K`` exceeds the number of distinct hypotheses).
    lengths: int32 ``[B, K]`` generated tokens, EOS included.
    """

    tokens: jax.Array
    scores: jax.Array
    lengths: jax.Array


# --------------------------------------------------------------------------- #
# Argument checks
# --------------------------------------------------------------------------- #


def _is_int(x):
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _check_int(fn, name, x, low, what=None):
    if not _is_int(x) or x < low:
        raise _error(fn, name, what or f"a Python int >= {low}", repr(x))
    return int(x)


def _check_prompt(fn, prompt):
    shape = jnp.shape(prompt)
    if len(shape) != 2:
        raise _error(fn, "prompt", "an integer array [B, P] (rank 2)", f"shape {tuple(shape)}")
    dtype = jnp.result_type(prompt)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise _error(fn, "prompt", "an integer array [B, P]", f"dtype {dtype}")
    if shape[0] < 1 or shape[1] < 1:
        raise _error(fn, "prompt", "non-empty [B, P] with B >= 1 and P >= 1", f"shape {tuple(shape)}")
    return jnp.asarray(prompt, jnp.int32)


def _check_logits(fn, logits):
    shape = jnp.shape(logits)
    if len(shape) != 2:
        raise _error(fn, "logits", "a float array [B, V] (rank 2)", f"shape {tuple(shape)}")
    return jnp.asarray(logits).astype(jnp.float32)


def _check_top_p(fn, top_p):
    vals = _concrete(top_p)
    if vals is not None:
        if vals.ndim > 1 or not np.issubdtype(vals.dtype, np.number):
            raise _error(fn, "top_p", "a number or a [B] array in (0, 1]", repr(top_p))
        if vals.size and (not np.all(vals > 0) or not np.all(vals <= 1)):
            raise _error(fn, "top_p", "in (0, 1]", repr(top_p))
    elif jnp.ndim(top_p) > 1:
        raise _error(fn, "top_p", "a scalar or a [B] array", f"shape {jnp.shape(top_p)}")


def _check_common(fn, prompt, max_new_tokens, eos_id, pad_id, min_length):
    prompt = _check_prompt(fn, prompt)
    n = _check_int(fn, "max_new_tokens", max_new_tokens, 1)
    eos_id = _check_int(fn, "eos_id", eos_id, 0, "a Python int >= 0 (a token id)")
    pad_id = eos_id if pad_id is None else _check_int(fn, "pad_id", pad_id, 0, "None or a Python int >= 0")
    min_length = _check_int(fn, "min_length", min_length, 0)
    if min_length > n:
        raise _error(fn, "min_length", f"<= max_new_tokens = {n}", min_length)
    return prompt, n, eos_id, pad_id, min_length


def _spec(x):
    return jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x))


def _check_model(fn, logits_fn, tokens, cache, eos_id, pad_id):
    """Traces ``logits_fn`` once abstractly; returns the vocabulary size ``V``."""
    rows = tokens.shape[0]
    cache_spec = jax.tree_util.tree_map(_spec, cache)
    logits, new_cache = jax.eval_shape(logits_fn, _spec(tokens), jax.ShapeDtypeStruct((), jnp.int32), cache_spec)
    if len(logits.shape) != 2 or logits.shape[0] != rows:
        raise _error(fn, "logits_fn", f"returning logits of shape [{rows}, V]", f"shape {tuple(logits.shape)}")
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise _error(fn, "logits_fn", "returning floating-point logits", f"dtype {logits.dtype}")
    got = jax.tree_util.tree_map(_spec, new_cache)
    if jax.tree_util.tree_structure(got) != jax.tree_util.tree_structure(cache_spec) or got != cache_spec:
        raise _error(fn, "logits_fn", "returning a cache with the structure, shapes and dtypes of the input cache",
                     f"{got} for input {cache_spec}")
    vocab = logits.shape[1]
    for name, value in (("eos_id", eos_id), ("pad_id", pad_id)):
        if value >= vocab:
            raise _error(fn, name, f"a token id in [0, V) = [0, {vocab})", value)
    return vocab


# --------------------------------------------------------------------------- #
# Truncation masks
# --------------------------------------------------------------------------- #


def top_k_mask(logits, top_k):
    """Keeps the ``top_k`` largest logits of each row (exactly ``min(top_k, V)`` of them).

    Uses ``lax.top_k``; among tied logits the lower token ids win. ``top_k = 0`` keeps all.

    Args:
      logits: ``[B, V]``.
      top_k: static Python int ``>= 0``.
    Returns:
      bool ``[B, V]``.
    """
    fn = "top_k_mask"
    logits = _check_logits(fn, logits)
    k = _check_int(fn, "top_k", top_k, 0)
    b, v = logits.shape
    if k == 0 or k >= v:
        return jnp.ones((b, v), bool)
    _, idx = jax.lax.top_k(logits, k)
    return jnp.zeros((b, v), bool).at[jnp.arange(b)[:, None], idx].set(True)


def top_k_mask_reference(logits, top_k):
    logits = np.asarray(logits)
    out = np.ones(logits.shape, bool)
    if top_k == 0 or top_k >= logits.shape[1]:
        return out
    out[:] = False
    for b in range(logits.shape[0]):
        out[b, np.argsort(-logits[b], kind="stable")[:top_k]] = True
    return out


def _top_p_threshold(probs, top_p):
    """Largest ``τ`` with ``Σ_{p >= τ} p >= top_p``, per row, by bisection on float32 bits."""
    b = probs.shape[0]
    top_p = jnp.broadcast_to(jnp.asarray(top_p, jnp.float32), (b,))
    lo = jnp.zeros((b,), jnp.int32)  # τ = 0: keeps everything, treated as always valid
    hi = jnp.full((b,), _ONE_PLUS_BITS, jnp.int32)  # τ > 1: keeps nothing, mass 0 < top_p

    def body(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        tau = jax.lax.bitcast_convert_type(mid, jnp.float32)
        mass = jnp.sum(jnp.where(probs >= tau[:, None], probs, 0.0), axis=-1)
        ok = mass >= top_p
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = jax.lax.fori_loop(0, _TOP_P_ITERS, body, (lo, hi))
    return jax.lax.bitcast_convert_type(lo, jnp.float32)


def top_p_mask(logits, top_p):
    """Nucleus mask by threshold search (no sort): keeps tokens with ``p >= τ``.

    ``p = softmax(logits)`` in float32 and ``τ`` is the largest threshold whose kept mass is
    ``>= top_p`` (see the module docstring: exact bisection on float32 bit patterns, 32
    iterations; tied probabilities at ``τ`` are all kept). At least one token is kept.

    Args:
      logits: ``[B, V]`` (``-inf`` entries have probability 0 and are dropped unless ``τ = 0``).
      top_p: scalar or ``[B]`` in ``(0, 1]`` (checked when concrete).
    Returns:
      bool ``[B, V]``.
    """
    fn = "top_p_mask"
    logits = _check_logits(fn, logits)
    _check_top_p(fn, top_p)
    probs = jax.nn.softmax(logits, axis=-1)
    tau = _top_p_threshold(probs, top_p)
    return probs >= tau[:, None]


def top_p_mask_reference(logits, top_p):
    """The textbook nucleus: sort descending, keep the shortest prefix with mass ``>= top_p``."""
    logits = np.asarray(logits, np.float64)
    top_p = np.broadcast_to(np.asarray(top_p, np.float64), (logits.shape[0],))
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = np.zeros(logits.shape, bool)
    for b in range(logits.shape[0]):
        order = np.argsort(-probs[b], kind="stable")
        cum = np.cumsum(probs[b, order])
        n = int(np.searchsorted(cum, top_p[b], side="left")) + 1  # first index with cum >= top_p
        out[b, order[: min(n, logits.shape[1])]] = True
    return out


# --------------------------------------------------------------------------- #
# Greedy and sampling
# --------------------------------------------------------------------------- #


def _eos_forbidden(i, vocab, eos_id, min_length):
    """bool ``[V]``: True at ``eos_id`` while fewer than ``min_length`` tokens were generated."""
    return (jnp.arange(vocab) == eos_id) & (i < min_length)


def _decode(fn, logits_fn, prompt, max_new_tokens, eos_id, pad_id, cache, min_length, choose):
    prompt, n, eos_id, pad_id, min_length = _check_common(fn, prompt, max_new_tokens, eos_id, pad_id, min_length)
    b, p = prompt.shape
    tokens = jnp.full((b, p + n), pad_id, jnp.int32).at[:, :p].set(prompt)
    vocab = _check_model(fn, logits_fn, tokens, cache, eos_id, pad_id)

    def cond(state):
        i, _, _, finished, _, _ = state
        return (i < n) & ~jnp.all(finished)

    def body(state):
        i, tokens, cache, finished, lengths, scores = state
        logits, cache = logits_fn(tokens, p - 1 + i, cache)
        logits = logits.astype(jnp.float32)
        logp = jax.nn.log_softmax(logits, axis=-1)
        allowed = jnp.where(_eos_forbidden(i, vocab, eos_id, min_length)[None], -jnp.inf, logits)
        tok = choose(allowed, i).astype(jnp.int32)
        tok = jnp.where(finished, pad_id, tok)
        gain = jnp.take_along_axis(logp, tok[:, None], axis=-1)[:, 0]
        scores = jnp.where(finished, scores, scores + gain)
        lengths = lengths + (~finished).astype(jnp.int32)
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, tok[:, None], p + i, axis=1)
        finished = finished | (tok == eos_id)
        return i + 1, tokens, cache, finished, lengths, scores

    state = (
        jnp.int32(0),
        tokens,
        cache,
        jnp.zeros((b,), bool),
        jnp.zeros((b,), jnp.int32),
        jnp.zeros((b,), jnp.float32),
    )
    _, tokens, _, _, lengths, scores = jax.lax.while_loop(cond, body, state)
    return Output(tokens, lengths, scores)


def greedy(logits_fn: Callable, prompt, *, max_new_tokens: int, eos_id: int, cache: Any = None,
           min_length: int = 0, pad_id: int | None = None) -> Output:
    """Greedy decoding (argmax each step; ties go to the lower token id).

    Args:
      logits_fn: the step function (module docstring), called with ``B`` rows.
      prompt: int ``[B, P]``, ``P >= 1``.
      max_new_tokens: static int ``>= 1``.
      eos_id: the end token id.
      cache: the model's pytree state before position ``P - 1`` (``None`` if none).
      min_length: EOS is forbidden among the first ``min_length`` generated tokens
        (``0 <= min_length <= max_new_tokens``).
      pad_id: written after EOS (and in never-reached positions); default ``eos_id``.
    Returns:
      :class:`Output` ``(tokens [B, P + N], lengths [B], scores [B])``.
    """
    return _decode("greedy", logits_fn, prompt, max_new_tokens, eos_id, pad_id, cache, min_length,
                   lambda logits, i: jnp.argmax(logits, axis=-1))


def sample(logits_fn: Callable, prompt, key, *, max_new_tokens: int, eos_id: int, temperature: float = 1.0,
           top_k: int = 0, top_p: float = 1.0, cache: Any = None, min_length: int = 0,
           pad_id: int | None = None) -> Output:
    """Ancestral sampling with temperature, top-k and top-p (nucleus) truncation.

    Each step: ``logits / temperature`` → EOS masked while ``< min_length`` tokens were
    generated → keep the ``top_k`` largest (``0`` = all) → keep the nucleus :func:`top_p_mask`
    of the renormalised remaining distribution (``1.0`` = all) → ``jax.random.categorical``
    with the key ``fold_in(key, step_index)``. ``temperature → 0`` tends to :func:`greedy`.
    ``scores`` are the model's untempered log-probabilities (module docstring).

    Args:
      logits_fn, prompt, max_new_tokens, eos_id, cache, min_length, pad_id: as :func:`greedy`.
      key: a PRNG key (raw ``uint32[2]`` or typed).
      temperature: number ``> 0``.
      top_k: static int ``>= 0``.
      top_p: in ``(0, 1]``.
    Returns:
      :class:`Output`.
    """
    fn = "sample"
    t = _concrete(temperature)
    if t is not None and (t.ndim != 0 or not np.issubdtype(t.dtype, np.number) or not t > 0):
        raise _error(fn, "temperature", "a number > 0", repr(temperature))
    top_k = _check_int(fn, "top_k", top_k, 0)
    _check_top_p(fn, top_p)
    trunc_p = _concrete(top_p) is None or float(np.min(np.asarray(top_p))) < 1.0

    def choose(logits, i):
        scaled = logits / jnp.asarray(temperature, jnp.float32)
        if top_k:
            scaled = jnp.where(top_k_mask(scaled, top_k), scaled, -jnp.inf)
        if trunc_p:
            probs = jax.nn.softmax(scaled, axis=-1)
            keep = probs >= _top_p_threshold(probs, top_p)[:, None]
            scaled = jnp.where(keep, scaled, -jnp.inf)
        return jax.random.categorical(jax.random.fold_in(key, i), scaled, axis=-1)

    return _decode(fn, logits_fn, prompt, max_new_tokens, eos_id, pad_id, cache, min_length, choose)


# --------------------------------------------------------------------------- #
# Beam search
# --------------------------------------------------------------------------- #


def _length_penalty(lengths, alpha):
    """GNMT: ``((5 + len) / 6) ** α``."""
    return ((5.0 + lengths.astype(jnp.float32)) / 6.0) ** alpha


STOP_RULES = ("all_finished", "best_finished")


def beam_search(logits_fn: Callable, prompt, *, beam_size: int, max_new_tokens: int, eos_id: int,
                length_penalty: float = 0.0, cache: Any = None, min_length: int = 0,
                pad_id: int | None = None, stop_rule: str = "all_finished") -> BeamOutput:
    """Fixed-shape beam search, beams ``[B, K]`` for the whole loop.

    Each step expands every live beam into its ``V`` continuations (score + token log-prob);
    a finished beam contributes exactly one candidate, itself with its score unchanged (and
    ``pad_id`` appended). The ``K`` best of the ``K × V`` candidates (``lax.top_k``) become the
    new beams; the token buffer and every cache leaf are reordered by parent beam with a
    gather. Candidates are ranked by the GNMT-penalised score ``logp / ((5 + len) / 6) ** α``
    (``len`` = generated tokens, EOS included; ``α = length_penalty``, ``0`` = plain sum of
    log-probs), the same key the final beams are sorted by, so live and finished hypotheses
    compete on one scale. (Live candidates all share one length, so the penalty only matters
    between live and finished ones.) The loop ends when all beams of all rows are finished or
    after ``max_new_tokens`` steps. ``beam_size = 1`` reproduces :func:`greedy` exactly.

    **The author's stop rule** (``stop_rule="best_finished"``; bert4keras ``beam_search`` with
    ``min_ends=1``, and ``gen_sent`` of post 5861): a row stops as soon as its best-ranked beam
    ends with EOS, and that beam is the answer; a beam that ends while not the best is
    *discarded* and the row's beam width shrinks by one for good (the author's beams shrink;
    here the freed slots hold ``-inf``). Only beam 0 of the output is meaningful under this
    rule: the other beams of a stopped row are unfinished hypotheses frozen at the stop. With
    the default ``"all_finished"`` finished beams stay in the beam and compete to the end.
    (The author's ``min_len`` only delays the check; here ``min_length`` forbids EOS instead.
    "Best" is by the ranking key, so with ``length_penalty != 0`` it is the penalised score,
    where bert4keras, which has no penalty, compares raw sums.)

    At the start only beam 0 is live (the others hold ``-inf``), so no duplicates arise.
    If ``K`` exceeds the number of distinct hypotheses some output beams stay at ``-inf``
    (their tokens and lengths are meaningless).

    **Cache layout.** Pass ``cache`` with a leading ``[B, ...]`` axis on every leaf; it is
    repeated to ``[B * K, ...]`` (row ``b``, beam ``k`` at index ``b * K + k``), and
    ``logits_fn`` is called with ``tokens [B * K, L]`` and that cache. Every cache leaf must
    therefore keep a leading ``B * K`` axis; it is gathered along that axis by parent beam.

    Args:
      logits_fn, prompt, max_new_tokens, eos_id, min_length, pad_id: as :func:`greedy`.
      beam_size: static int ``K >= 1``.
      length_penalty: ``α`` (a Python float).
      cache: pytree with leaves ``[B, ...]`` or ``None``.
      stop_rule: ``"all_finished"`` (default) or ``"best_finished"`` (the author's, above).
    Returns:
      :class:`BeamOutput` ``(tokens [B, K, P + N], scores [B, K], lengths [B, K])`` best first.
    """
    fn = "beam_search"
    k = _check_int(fn, "beam_size", beam_size, 1)
    if stop_rule not in STOP_RULES:
        raise _error(fn, "stop_rule", f"one of {STOP_RULES}", repr(stop_rule))
    author = stop_rule == "best_finished"
    prompt, n, eos_id, pad_id, min_length = _check_common(fn, prompt, max_new_tokens, eos_id, pad_id, min_length)
    alpha = float(length_penalty) if _concrete(length_penalty) is not None else length_penalty
    if isinstance(alpha, float) and not math.isfinite(alpha):
        raise _error(fn, "length_penalty", "a finite number", repr(length_penalty))
    b, p = prompt.shape
    length = p + n

    for leaf in jax.tree_util.tree_leaves(cache):
        if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != b:
            raise _error(fn, "cache", f"a pytree whose leaves have a leading batch axis of size B = {b}",
                         f"a leaf of shape {jnp.shape(leaf)}")
    cache = jax.tree_util.tree_map(lambda x: jnp.repeat(jnp.asarray(x), k, axis=0), cache)
    tokens = jnp.full((b, k, length), pad_id, jnp.int32).at[:, :, :p].set(prompt[:, None, :])
    vocab = _check_model(fn, logits_fn, tokens.reshape(b * k, length), cache, eos_id, pad_id)

    def rank(scores, lengths):
        if isinstance(alpha, float) and alpha == 0.0:
            return scores
        return scores / _length_penalty(lengths, alpha)

    def cond(state):
        i, _, _, finished, _, _, _ = state
        return (i < n) & ~jnp.all(finished)

    def body(state):
        i, tokens, cache, finished, lengths, scores, width = state
        logits, cache = logits_fn(tokens.reshape(b * k, length), p - 1 + i, cache)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(b, k, vocab)
        logp = jnp.where(_eos_forbidden(i, vocab, eos_id, min_length), -jnp.inf, logp)
        first = jnp.arange(vocab) == 0
        carried = jnp.where(first, scores[..., None], -jnp.inf)  # a finished beam: only itself
        cand = jnp.where(finished[..., None], carried, scores[..., None] + logp)  # [B, K, V]
        cand_len = jnp.where(finished, lengths, lengths + 1)[..., None]
        key = rank(cand, jnp.broadcast_to(cand_len, cand.shape)).reshape(b, k * vocab)
        _, idx = jax.lax.top_k(key, k)  # [B, K]
        parent, tok = idx // vocab, (idx % vocab).astype(jnp.int32)
        new_scores = jnp.take_along_axis(cand.reshape(b, k * vocab), idx, axis=1)
        par_fin = jnp.take_along_axis(finished, parent, axis=1)
        dead = new_scores == -jnp.inf
        tok = jnp.where(par_fin | dead, pad_id, tok)
        lengths = jnp.take_along_axis(lengths, parent, axis=1) + (~(par_fin | dead)).astype(jnp.int32)
        finished = par_fin | dead | (tok == eos_id)
        tokens = jnp.take_along_axis(tokens, parent[..., None], axis=1)
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, tok[..., None], p + i, axis=2)
        flat = (jnp.arange(b)[:, None] * k + parent).reshape(-1)
        cache = jax.tree_util.tree_map(lambda x: jnp.take(x, flat, axis=0), cache)
        if author:
            new_scores, finished, width = _author_stop(new_scores, finished, width, (tok == eos_id) & ~(par_fin | dead))
        return i + 1, tokens, cache, finished, lengths, new_scores, width

    def _author_stop(scores, finished, width, ended):
        """Beams are sorted best first (``top_k``); ``ended``: beams that emitted EOS this step.
        Beyond the row's width: dead. Best beam ended: the row is done (every beam frozen).
        Else each ended beam is discarded and the width shrinks."""
        slot = jnp.arange(k)[None, :]
        beyond = slot >= width[:, None]
        scores = jnp.where(beyond, -jnp.inf, scores)
        ended = ended & ~beyond
        done = ended[:, 0]
        discard = ended & ~done[:, None]
        scores = jnp.where(discard, -jnp.inf, scores)
        width = width - jnp.sum(discard, axis=1).astype(width.dtype)
        finished = jnp.where(done[:, None], True, finished | beyond | discard)
        return scores, finished, width

    scores0 = jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf).astype(jnp.float32)
    state = (
        jnp.int32(0),
        tokens,
        cache,
        jnp.broadcast_to(jnp.arange(k) > 0, (b, k)),  # dead beams count as finished
        jnp.zeros((b, k), jnp.int32),
        jnp.broadcast_to(scores0, (b, k)),
        jnp.full((b,), k, jnp.int32),  # the author's shrinking beam width
    )
    _, tokens, _, _, lengths, scores, _ = jax.lax.while_loop(cond, body, state)
    final = rank(scores, lengths)
    final, order = jax.lax.top_k(final, k)
    tokens = jnp.take_along_axis(tokens, order[..., None], axis=1)
    lengths = jnp.take_along_axis(lengths, order, axis=1)
    return BeamOutput(tokens, final, lengths)
