"""Fixed-shape decoding: greedy, sampling (top-k / top-p) and beam search against exact oracles."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import count_compilations
from zoo.seq2seq import decoding as dec

V, P, N = 4, 2, 4


def table_model(table):
    """Toy model: logits of position step + 1 = table[step, tokens[:, step]] (step × previous token)."""
    table = jnp.asarray(table, jnp.float32)

    def logits_fn(tokens, step, cache):
        return table[step, tokens[:, step]], cache

    return logits_fn


def random_table(rng, vocab=V, length=P + N, scale=2.0, eos_bias=0.0, eos_id=0):
    t = scale * rng.normal(size=(length, vocab, vocab))
    t[..., eos_id] += eos_bias
    return t.astype(np.float32)


def log_softmax64(x):
    x = np.asarray(x, np.float64)
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def enumerate_hypotheses(table, prompt_row, n, eos_id, min_length, alpha):
    """All distinct finished hypotheses (truncated at the first EOS), exact float64 scores."""
    p = len(prompt_row)
    out = []
    for seq in itertools.product(range(table.shape[-1]), repeat=n):
        if any(tok == eos_id for tok in seq[:min_length]):
            continue
        if eos_id in seq:
            cut = seq.index(eos_id) + 1
            if any(s != eos_id for s in seq[cut:]):
                continue  # one representative per truncated hypothesis: the EOS-padded one
            seq = seq[:cut]
        prev, logp = prompt_row[-1], 0.0
        for j, tok in enumerate(seq):
            logp += log_softmax64(table[p - 1 + j, prev])[tok]
            prev = tok
        lp = ((5.0 + len(seq)) / 6.0) ** alpha
        out.append((logp / lp, tuple(seq), len(seq)))
    out.sort(key=lambda h: -h[0])
    return out


def as_np(out):
    return jax.tree_util.tree_map(np.asarray, out)


# --------------------------------------------------------------------------- #
# Beam search
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("min_length", [0, 2])
def test_beam_size_one_equals_greedy(rng, min_length):
    table = random_table(rng, vocab=6, length=P + 6, eos_bias=1.0)
    prompt = rng.integers(0, 6, size=(5, P))
    fn = table_model(table)
    g = as_np(greedy_j(fn, prompt, max_new_tokens=6, eos_id=0, min_length=min_length))
    b = as_np(jax.jit(lambda p: dec.beam_search(fn, p, beam_size=1, max_new_tokens=6, eos_id=0,
                                                min_length=min_length))(prompt))
    np.testing.assert_array_equal(b.tokens[:, 0], g.tokens)
    np.testing.assert_array_equal(b.lengths[:, 0], g.lengths)
    np.testing.assert_array_equal(b.scores[:, 0], g.scores)


def greedy_j(fn, prompt, **kw):
    return jax.jit(lambda p: dec.greedy(fn, p, **kw))(prompt)


@pytest.mark.parametrize(
    "min_length,alpha,eos_bias",
    [(N, 0.0, 0.0), (0, 0.0, 1.0), (2, 0.7, 1.0), (0, 1.5, 0.0)],
    ids=["no-eos", "eos", "eos-min-length-penalty", "eos-strong-penalty"],
)
def test_beam_search_matches_exhaustive_enumeration(rng, min_length, alpha, eos_bias):
    """K = 64 = V^(N-1) keeps every prefix, so the K beams are exactly the K best hypotheses."""
    eos = 0
    table = random_table(rng, eos_bias=eos_bias, eos_id=eos)
    prompt = rng.integers(0, V, size=(2, P))
    k = 64
    out = as_np(jax.jit(lambda p: dec.beam_search(table_model(table), p, beam_size=k, max_new_tokens=N,
                                                  eos_id=eos, length_penalty=alpha,
                                                  min_length=min_length))(prompt))
    assert out.tokens.shape == (2, k, P + N)
    for b in range(2):
        hyps = enumerate_hypotheses(table, prompt[b], N, eos, min_length, alpha)
        assert len(hyps) >= k
        best = np.array([h[0] for h in hyps[:k]])
        np.testing.assert_allclose(out.scores[b], best, rtol=1e-5, atol=1e-5)
        assert np.all(np.diff(out.scores[b]) <= 0)
        # tokens must match wherever the oracle order is unambiguous at float32 precision
        all_scores = np.array([h[0] for h in hyps])
        for j in range(k):
            gaps = np.abs(np.delete(all_scores, j) - all_scores[j])
            if gaps.min() < 1e-4:
                continue
            seq = hyps[j][1]
            np.testing.assert_array_equal(out.tokens[b, j, :P], prompt[b])
            np.testing.assert_array_equal(out.tokens[b, j, P:P + len(seq)], seq)
            assert np.all(out.tokens[b, j, P + len(seq):] == eos)  # pad_id defaults to eos_id
            assert out.lengths[b, j] == hyps[j][2]
        assert out.tokens[b, 0, P:P + hyps[0][2]].tolist() == list(hyps[0][1])  # the best, always


def test_beam_search_eos_pad_and_frozen_scores(rng):
    eos, pad = 0, 1
    table = random_table(rng, vocab=5, length=P + 6, eos_bias=2.0)
    prompt = rng.integers(0, 5, size=(3, P))
    out = as_np(jax.jit(lambda p: dec.beam_search(table_model(table), p, beam_size=3, max_new_tokens=6,
                                                  eos_id=eos, pad_id=pad))(prompt))
    for b in range(3):
        for j in range(3):
            n = out.lengths[b, j]
            gen = out.tokens[b, j, P:]
            assert np.all(gen[n:] == pad)
            if n < 6:
                assert gen[n - 1] == eos
            assert eos not in gen[: n - 1].tolist()
            prev, logp = prompt[b, -1], 0.0
            for t in range(n):
                logp += log_softmax64(table[P - 1 + t, prev])[gen[t]]
                prev = gen[t]
            np.testing.assert_allclose(out.scores[b, j], logp, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- #
# Truncation masks
# --------------------------------------------------------------------------- #


def test_top_p_mask_matches_sorted_reference(rng):
    logits = np.concatenate([rng.normal(size=(40, 16)) * s for s in (0.3, 1.0, 4.0)]).astype(np.float32)
    ps = np.concatenate([[1e-6, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0], rng.uniform(0.01, 1.0, size=13)])
    mask_fn = jax.jit(dec.top_p_mask)
    probs = np.exp(log_softmax64_rows(logits))
    checked = 0
    for top_p in ps:
        got = np.asarray(mask_fn(logits, np.float32(top_p)))
        want = dec.top_p_mask_reference(logits, top_p)
        assert got.sum(-1).min() >= 1
        assert np.all(got[np.arange(len(logits)), logits.argmax(-1)])
        # rows whose cumulative mass lies within float32 round-off of top_p may round either way
        cum = np.cumsum(-np.sort(-probs, axis=-1), axis=-1)
        clear = np.abs(cum - top_p).min(-1) > 1e-5
        np.testing.assert_array_equal(got[clear], want[clear], err_msg=f"top_p={top_p}")
        checked += clear.sum()
    assert checked > 0.9 * len(ps) * len(logits)


def log_softmax64_rows(x):
    return np.stack([log_softmax64(r) for r in x])


def test_top_p_mask_per_row_and_ties():
    logits = np.log(np.array([[0.4, 0.2, 0.2, 0.2], [0.7, 0.1, 0.1, 0.1]], np.float32))
    got = np.asarray(dec.top_p_mask(logits, jnp.array([0.5, 0.75])))
    # tied probabilities at the threshold are all kept (the sorted reference keeps one of them)
    np.testing.assert_array_equal(got, [[True, True, True, True], [True, True, True, True]])
    np.testing.assert_array_equal(np.asarray(dec.top_p_mask(logits, 0.65)),
                                  [[True, True, True, True], [True, False, False, False]])
    assert dec.top_p_mask_reference(logits, 0.5)[0].sum() == 2


@pytest.mark.parametrize("k", [0, 1, 3, 7, 8, 20])
def test_top_k_mask_keeps_exactly_k(rng, k):
    logits = rng.normal(size=(12, 8)).astype(np.float32)
    got = np.asarray(dec.top_k_mask(logits, k))
    np.testing.assert_array_equal(got.sum(-1), min(k, 8) if k else 8)
    np.testing.assert_array_equal(got, dec.top_k_mask_reference(logits, k))


# --------------------------------------------------------------------------- #
# Sampling
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("min_length", [0, 3])
def test_sample_at_low_temperature_equals_greedy(rng, min_length):
    table = random_table(rng, vocab=6, length=P + 6, eos_bias=1.0)
    prompt = rng.integers(0, 6, size=(6, P))
    fn = table_model(table)
    g = as_np(greedy_j(fn, prompt, max_new_tokens=6, eos_id=0, min_length=min_length))
    s = as_np(jax.jit(lambda p, key: dec.sample(fn, p, key, max_new_tokens=6, eos_id=0, temperature=1e-4,
                                                top_k=4, top_p=0.9, min_length=min_length))(
        prompt, jax.random.PRNGKey(3)))
    np.testing.assert_array_equal(s.tokens, g.tokens)
    np.testing.assert_array_equal(s.lengths, g.lengths)
    np.testing.assert_array_equal(s.scores, g.scores)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 3, 1.0), (1.0, 0, 0.6), (0.7, 4, 0.8)])
def test_samples_stay_in_the_truncation_set(rng, temperature, top_k, top_p):
    vocab, n, eos = 8, 5, 0
    table = random_table(rng, vocab=vocab, length=P + n, scale=1.5)
    prompt = rng.integers(1, vocab, size=(3, P))
    fn = table_model(table)
    keys = jax.random.split(jax.random.PRNGKey(0), 64)
    run = jax.jit(jax.vmap(lambda key: dec.sample(fn, prompt, key, max_new_tokens=n, eos_id=eos,
                                                  temperature=temperature, top_k=top_k, top_p=top_p)))
    out = as_np(run(keys))
    seen = set()
    for s in range(len(keys)):
        for b in range(3):
            prev = prompt[b, -1]
            for t in range(out.lengths[s, b]):
                logits = table[P - 1 + t, prev][None] / temperature
                allowed = dec.top_k_mask_reference(logits, top_k)
                allowed &= dec.top_p_mask_reference(np.where(allowed, logits, -np.inf), top_p)
                tok = out.tokens[s, b, P + t]
                assert allowed[0, tok], (s, b, t, tok)
                seen.add((b, t, int(prev), int(tok)))
                prev = tok
            assert np.all(out.tokens[s, b, P + out.lengths[s, b]:] == eos)
    assert len({(b, t, pr) for b, t, pr, _ in seen}) < len(seen)  # genuinely random choices


# --------------------------------------------------------------------------- #
# EOS, min_length, early stop
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("decoder", ["greedy", "sample"])
def test_finished_rows_pad_and_scores_freeze(rng, decoder):
    eos, pad, n = 0, 2, 8
    table = random_table(rng, vocab=5, length=P + n, eos_bias=1.5)
    prompt = rng.integers(1, 5, size=(8, P))
    fn = table_model(table)
    if decoder == "greedy":
        out = as_np(greedy_j(fn, prompt, max_new_tokens=n, eos_id=eos, pad_id=pad))
    else:
        out = as_np(jax.jit(lambda p: dec.sample(fn, p, jax.random.PRNGKey(1), max_new_tokens=n, eos_id=eos,
                                                 pad_id=pad))(prompt))
    assert (out.lengths < n).any()
    for b in range(8):
        L = out.lengths[b]
        gen = out.tokens[b, P:]
        if L < n or gen[L - 1] == eos:
            assert gen[L - 1] == eos and eos not in gen[: L - 1].tolist()
        assert np.all(gen[L:] == pad)
        prev, logp = prompt[b, -1], 0.0
        for t in range(L):
            logp += log_softmax64(table[P - 1 + t, prev])[gen[t]]
            prev = gen[t]
        np.testing.assert_allclose(out.scores[b], logp, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("min_length", [0, 3, 5])
def test_min_length_forbids_early_eos(rng, min_length):
    eos, n = 0, 5
    table = random_table(rng, vocab=5, length=P + n, eos_bias=20.0)  # EOS is always the argmax
    prompt = rng.integers(1, 5, size=(3, P))
    fn = table_model(table)
    g = as_np(greedy_j(fn, prompt, max_new_tokens=n, eos_id=eos, min_length=min_length))
    want = min(min_length + 1, n)
    np.testing.assert_array_equal(g.lengths, want)
    assert np.all(g.tokens[:, P:P + min_length] != eos)
    if min_length < n:
        assert np.all(g.tokens[:, P + min_length] == eos)
    s = as_np(jax.jit(lambda p: dec.sample(fn, p, jax.random.PRNGKey(0), max_new_tokens=n, eos_id=eos,
                                           min_length=min_length))(prompt))
    assert np.all(s.tokens[:, P:P + min_length] != eos)
    bm = as_np(jax.jit(lambda p: dec.beam_search(fn, p, beam_size=3, max_new_tokens=n, eos_id=eos,
                                                 min_length=min_length))(prompt))
    assert np.all(bm.tokens[:, :, P:P + min_length] != eos)
    assert np.all(bm.lengths >= want)


def test_loop_stops_when_all_rows_are_finished(rng):
    eos, n = 0, 6
    table = random_table(rng, vocab=4, length=P + n, eos_bias=30.0)
    calls = []

    def fn(tokens, step, cache):
        jax.debug.callback(lambda s: calls.append(int(s)), step)
        return table_model(table)(tokens, step, cache)

    prompt = rng.integers(1, 4, size=(2, P))
    jax.block_until_ready(greedy_j(fn, prompt, max_new_tokens=n, eos_id=eos))
    jax.effects_barrier()
    assert calls == [P - 1]
    calls.clear()
    jax.block_until_ready(jax.jit(lambda p: dec.beam_search(fn, p, beam_size=2, max_new_tokens=n,
                                                            eos_id=eos))(prompt))
    jax.effects_barrier()
    assert calls == [P - 1, P]  # step 2: the live beam's best continuation is EOS too
    calls.clear()
    jax.block_until_ready(greedy_j(fn, prompt, max_new_tokens=n, eos_id=eos, min_length=n))
    jax.effects_barrier()
    assert len(calls) == n


# --------------------------------------------------------------------------- #
# Compilation and caches
# --------------------------------------------------------------------------- #


def test_jitted_decoders_compile_once_per_shape(rng):
    table = random_table(rng)
    fn = table_model(table)
    g = jax.jit(lambda p: dec.greedy(fn, p, max_new_tokens=N, eos_id=0))
    s = jax.jit(lambda p, key: dec.sample(fn, p, key, max_new_tokens=N, eos_id=0, top_p=0.9, top_k=2))
    b = jax.jit(lambda p: dec.beam_search(fn, p, beam_size=3, max_new_tokens=N, eos_id=0))
    p1, p2 = (rng.integers(0, V, size=(4, P)).astype(np.int32) for _ in range(2))
    with count_compilations() as compiled:
        jax.block_until_ready(g(p1))
    assert compiled  # guards the guard
    jax.block_until_ready((s(p1, jax.random.PRNGKey(0)), b(p1)))
    with count_compilations() as compiled:
        jax.block_until_ready((g(p2), s(p2, jax.random.PRNGKey(1)), b(p2)))
    assert compiled == []


def test_cached_model_decodes_like_recompute(rng):
    vocab, d, n, k = 6, 3, 5, 3
    # integer embeddings: running sums are exact, so both models produce bit-identical logits
    emb = jnp.asarray(rng.integers(-3, 4, size=(vocab, d)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(d, vocab)), jnp.float32)

    def recompute(tokens, step, cache):
        keep = (jnp.arange(tokens.shape[1]) <= step)[None, :, None]
        h = jnp.sum(jnp.where(keep, emb[tokens], 0.0), axis=1)
        return h @ w, cache

    def cached(tokens, step, cache):
        h = cache["h"] + emb[tokens[:, step]]
        return h @ w, {"h": h}

    prompt = rng.integers(1, vocab, size=(4, 3))
    cache0 = {"h": jnp.sum(emb[prompt[:, :-1]], axis=1)}
    key = jax.random.PRNGKey(7)
    for run in (
        lambda fn, c: dec.greedy(fn, prompt, max_new_tokens=n, eos_id=0, cache=c),
        lambda fn, c: dec.sample(fn, prompt, key, max_new_tokens=n, eos_id=0, cache=c, top_k=4),
        lambda fn, c: dec.beam_search(fn, prompt, beam_size=k, max_new_tokens=n, eos_id=0, cache=c),
    ):
        a = as_np(jax.jit(functools.partial(run, recompute))(None))
        c = as_np(jax.jit(functools.partial(run, cached))(cache0))
        for x, y in zip(a, c):
            np.testing.assert_array_equal(x, y)


# --------------------------------------------------------------------------- #
# Argument checks
# --------------------------------------------------------------------------- #

_FN = table_model(np.zeros((P + N, V, V), np.float32))
_PROMPT = np.zeros((2, P), np.int32)
_KEY = jax.random.PRNGKey(0)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: dec.greedy(_FN, np.zeros((P,), np.int32), max_new_tokens=N, eos_id=0), "`prompt`.*rank 2"),
        (lambda: dec.greedy(_FN, np.zeros((2, P), np.float32), max_new_tokens=N, eos_id=0), "`prompt`.*integer"),
        (lambda: dec.greedy(_FN, _PROMPT, max_new_tokens=0, eos_id=0), "`max_new_tokens`.*>= 1.*got 0"),
        (lambda: dec.greedy(_FN, _PROMPT, max_new_tokens=N, eos_id=0, min_length=N + 1), "`min_length`.*<= max_new"),
        (lambda: dec.greedy(_FN, _PROMPT, max_new_tokens=N, eos_id=V), "`eos_id`.*\\[0, 4\\)"),
        (lambda: dec.beam_search(_FN, _PROMPT, beam_size=0, max_new_tokens=N, eos_id=0), "`beam_size`.*got 0"),
        (lambda: dec.beam_search(_FN, _PROMPT, beam_size=2, max_new_tokens=0, eos_id=0), "`max_new_tokens`"),
        (lambda: dec.beam_search(_FN, _PROMPT, beam_size=2, max_new_tokens=N, eos_id=0,
                                 cache=jnp.zeros((3, 2))), "`cache`.*B = 2"),
        (lambda: dec.sample(_FN, _PROMPT, _KEY, max_new_tokens=N, eos_id=0, top_p=0.0), "`top_p`.*\\(0, 1\\]"),
        (lambda: dec.sample(_FN, _PROMPT, _KEY, max_new_tokens=N, eos_id=0, top_p=1.5), "`top_p`.*\\(0, 1\\]"),
        (lambda: dec.sample(_FN, _PROMPT, _KEY, max_new_tokens=N, eos_id=0, top_k=-1), "`top_k`.*>= 0"),
        (lambda: dec.sample(_FN, _PROMPT, _KEY, max_new_tokens=N, eos_id=0, temperature=0.0), "`temperature`.*> 0"),
        (lambda: dec.top_p_mask(np.zeros((4,)), 0.5), "`logits`.*rank 2"),
        (lambda: dec.top_p_mask(np.zeros((2, 4)), 0.0), "`top_p` must be in \\(0, 1\\]; got 0.0"),
        (lambda: dec.top_k_mask(np.zeros((2, 4)), -2), "`top_k` must be a Python int >= 0; got -2"),
        (lambda: dec.greedy(lambda t, s, c: (jnp.zeros((1, V)), c), _PROMPT, max_new_tokens=N, eos_id=0),
         "`logits_fn`.*\\[2, V\\]"),
        (lambda: dec.greedy(lambda t, s, c: (jnp.zeros((2, V)), c + 1.0), _PROMPT, max_new_tokens=N, eos_id=0,
                            cache=jnp.zeros((2,), jnp.int32)), "`logits_fn`.*cache"),
    ],
)
def test_bad_arguments_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------- #
# The author's stop rule (bert4keras beam_search, min_ends = 1)
# --------------------------------------------------------------------------- #


def author_beam_search(table, prompt_row, topk, maxlen, eos_id):
    """bert4keras ``AutoRegressiveDecoder.beam_search`` transcribed to numpy, one row, with the
    toy table model: shrinking beams, return as soon as the best beam ends."""
    p = len(prompt_row)
    output_ids = np.zeros((1, 0), np.int64)
    output_scores = np.zeros(1)
    for step in range(maxlen):
        prev = prompt_row[-1] if step == 0 else output_ids[:, -1]
        logp = np.stack([log_softmax64(table[p - 1 + step, t]) for t in np.broadcast_to(prev, (len(output_scores),))])
        scores = output_scores[:, None] + logp
        flat = scores.ravel()
        indices = np.argsort(-flat, kind="stable")[:topk]
        rows, cols = indices // logp.shape[1], indices % logp.shape[1]
        output_ids = np.concatenate([output_ids[rows], cols[:, None]], 1)
        output_scores = flat[indices]
        is_end = output_ids[:, -1] == eos_id
        best = output_scores.argmax()
        if is_end[best]:
            return output_ids[best].tolist(), output_scores[best]
        keep = ~is_end
        if not keep.all():
            output_ids, output_scores = output_ids[keep], output_scores[keep]
            topk = int(keep.sum())
    best = output_scores.argmax()
    return output_ids[best].tolist(), output_scores[best]


@pytest.mark.parametrize("eos_bias", [0.0, 1.5])
def test_author_stop_rule_equals_bert4keras_beam_search(rng, eos_bias):
    eos, n, k = 0, 6, 3
    # the table is an argument: one compilation per vocabulary size
    search = jax.jit(lambda p, t: dec.beam_search(table_model(t), p, beam_size=k, max_new_tokens=n, eos_id=eos,
                                                  stop_rule="best_finished"))
    for trial, vocab in itertools.product(range(6), (2, 3, 5)):  # small vocabularies: dead beams
        table = random_table(rng, vocab=vocab, length=P + n, eos_bias=eos_bias)
        prompt = rng.integers(1, vocab, size=(3, P))
        out = as_np(search(prompt, table))
        for b in range(3):
            seq, score = author_beam_search(table, prompt[b], k, n, eos)
            length = out.lengths[b, 0]
            assert out.tokens[b, 0, P:P + length].tolist() == seq, (trial, b)
            np.testing.assert_allclose(out.scores[b, 0], score, rtol=1e-5, atol=1e-5)


def test_unknown_stop_rule_raises():
    with pytest.raises(ValueError, match="`stop_rule` must be one of"):
        dec.beam_search(table_model(np.zeros((P + N, V, V), np.float32)), np.zeros((1, P), np.int32),
                        beam_size=2, max_new_tokens=N, eos_id=0, stop_rule="first")
