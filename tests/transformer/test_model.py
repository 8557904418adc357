"""TransformerLM: masks (LM, UniLM), KV cache against the full pass, decoding equivalence."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels.attention import causal_mask, unilm_mask
from zoo.seq2seq import beam_search, greedy
from zoo.transformer import (
    TransformerLM,
    cached_prefill,
    make_cached_logits_fn,
    make_recompute_logits_fn,
    sinusoidal_positions,
)

V, L, H, D, M, T = 11, 2, 2, 8, 32, 24


def _model(**kw):
    return TransformerLM(vocab_size=V, num_layers=L, num_heads=H, head_dim=D, mlp_dim=M, max_len=T, **kw)


@pytest.fixture(scope="module")
def setup():
    model = _model()
    params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, T), jnp.int32))
    return model, params


@functools.lru_cache(maxsize=None)
def _jitted(scale_attention):
    model = _model(scale_attention=scale_attention)
    return (jax.jit(lambda params, x, mask: model.apply(params, x, mask)),
            jax.jit(lambda params, x: model.apply(params, x, method=TransformerLM.prefill)))


def _apply(model, params, x, mask):
    """Jitted forward pass (eager Flax dispatch is several times slower on CPU)."""
    return _jitted(model.scale_attention)[0](params, x, mask)


def _prefill(model, params, x):
    return _jitted(model.scale_attention)[1](params, x)


def _tokens(seed, b, t):
    return jnp.asarray(np.random.default_rng(seed).integers(0, V, (b, t)), jnp.int32)


def test_shapes_and_param_count(setup):
    model, params = setup
    logits = _apply(model, params, _tokens(0, 2, 12), None)
    assert logits.shape == (2, 12, V) and logits.dtype == jnp.float32
    d = H * D
    per_block = 2 * 2 * d + 3 * (d * d + d) + (d * d + d) + (d * M + M) + (M * d + d)
    expected = V * d + L * per_block + 2 * d + (d * V + V)
    assert sum(x.size for x in jax.tree_util.tree_leaves(params)) == expected
    cache = model.init_cache(3)
    assert len(cache["k"]) == L and cache["k"][0].shape == (3, T, H, D)


def test_sinusoidal_positions_layout():
    pe = sinusoidal_positions(5, 6)
    assert pe.shape == (5, 6)
    np.testing.assert_allclose(pe[:, :3], np.cos(np.arange(5)[:, None] / 10000 ** (np.arange(3) * 2 / 6)), atol=1e-6)
    np.testing.assert_allclose(pe[:, 3:], np.sin(np.arange(5)[:, None] / 10000 ** (np.arange(3) * 2 / 6)), atol=1e-6)


def test_too_long_raises(setup):
    model, params = setup
    with pytest.raises(ValueError, match="exceeds max_len"):
        model.apply(params, jnp.zeros((1, T + 1), jnp.int32))
    with pytest.raises(ValueError, match="exceeds max_len"):
        cached_prefill(model, params, jnp.zeros((1, T + 1), jnp.int32))
    with pytest.raises(ValueError, match="exceeds max_len"):
        greedy(make_cached_logits_fn(model, params), jnp.zeros((1, 3), jnp.int32), max_new_tokens=T,
               eos_id=0, cache=model.init_cache(1))


def test_causal_lm_ignores_future(setup):
    model, params = setup
    t = 12
    x = _tokens(1, 2, t)
    mask = causal_mask(t)
    base = _apply(model, params, x, mask)
    for cut in (3, 7):
        y = x.at[:, cut + 1:].set((x[:, cut + 1:] + 1 + jnp.arange(t - cut - 1)) % V)
        out = _apply(model, params, y, mask)
        np.testing.assert_allclose(out[:, : cut + 1], base[:, : cut + 1], atol=1e-6)
        assert not np.allclose(out[:, cut + 1:], base[:, cut + 1:], atol=1e-4)
    # Without a mask the model is bidirectional: an early position does see later tokens.
    assert not np.allclose(_apply(model, params, y, None)[:, 0], _apply(model, params, x, None)[:, 0], atol=1e-4)


def test_decode_step_matches_full_pass(setup):
    model, params = setup
    t = 12
    x = _tokens(2, 2, t)
    full = _apply(model, params, x, causal_mask(t))

    @jax.jit
    def run(x):
        def body(cache, inp):
            tok, pos = inp
            logits, cache = model.apply(params, tok, pos, cache, method=TransformerLM.decode_step)
            return cache, logits

        cache, logits = jax.lax.scan(body, model.init_cache(x.shape[0]), (x.T, jnp.arange(t)))
        return jnp.swapaxes(logits, 0, 1), cache

    stepped, cache = run(x)
    np.testing.assert_allclose(stepped, full, atol=1e-5, rtol=1e-5)
    # prefill gives the same cache (and logits) as stepping, zeros beyond the prompt.
    pre_logits, pre_cache = _prefill(model, params, x)
    np.testing.assert_allclose(pre_logits, full, atol=1e-5, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(pre_cache), jax.tree_util.tree_leaves(cache)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
        assert not np.any(np.asarray(a)[:, t:])


def test_greedy_cached_equals_recompute(setup):
    model, params = setup
    prompt = _tokens(3, 4, 3)
    kw = dict(max_new_tokens=10, eos_id=0, min_length=10)
    cached = jax.jit(lambda p: greedy(make_cached_logits_fn(model, params), p,
                                      cache=cached_prefill(model, params, p), **kw))(prompt)
    recomputed = jax.jit(lambda p: greedy(make_recompute_logits_fn(model, params), p, **kw))(prompt)
    np.testing.assert_array_equal(cached.tokens, recomputed.tokens)
    np.testing.assert_array_equal(cached.lengths, recomputed.lengths)
    np.testing.assert_allclose(cached.scores, recomputed.scores, atol=1e-4)
    assert cached.tokens.shape == (4, 13)
    # And a one-token prompt (empty prefill).
    p1 = prompt[:, :1]
    a = jax.jit(lambda p: greedy(make_cached_logits_fn(model, params), p,
                                 cache=cached_prefill(model, params, p), **kw))(p1)
    b = jax.jit(lambda p: greedy(make_recompute_logits_fn(model, params), p, **kw))(p1)
    np.testing.assert_array_equal(a.tokens, b.tokens)


def test_beam_search_cached_equals_recompute(setup):
    model, params = setup
    prompt = _tokens(4, 2, 3)
    kw = dict(beam_size=3, max_new_tokens=6, eos_id=0)
    a = jax.jit(lambda p: beam_search(make_cached_logits_fn(model, params), p,
                                      cache=cached_prefill(model, params, p), **kw))(prompt)
    b = jax.jit(lambda p: beam_search(make_recompute_logits_fn(model, params), p, **kw))(prompt)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)


def test_unilm_mask_dependencies(setup):
    model, params = setup
    n_src, n_tgt = 5, 7
    t = n_src + n_tgt
    seg = jnp.asarray([[0] * n_src + [1] * n_tgt] * 2, jnp.int32)
    mask = unilm_mask(seg)
    x = _tokens(5, 2, t)
    base = _apply(model, params, x, mask)
    # Changing the whole target leaves the source outputs unchanged.
    y = x.at[:, n_src:].set((x[:, n_src:] + 3) % V)
    np.testing.assert_allclose(_apply(model, params, y, mask)[:, :n_src], base[:, :n_src], atol=1e-6)
    # Changing target tokens after position c leaves every position <= c unchanged.
    c = n_src + 2
    z = x.at[:, c + 1:].set((x[:, c + 1:] + 5) % V)
    out = _apply(model, params, z, mask)
    np.testing.assert_allclose(out[:, : c + 1], base[:, : c + 1], atol=1e-6)
    # But the source is bidirectional: changing the last source token changes the first output.
    w = x.at[:, n_src - 1].set((x[:, n_src - 1] + 1) % V)
    assert not np.allclose(_apply(model, params, w, mask)[:, 0], base[:, 0], atol=1e-4)


def test_unscaled_attention_runs_and_differs(setup):
    model, params = setup
    unscaled = _model(scale_attention=False)
    x = _tokens(6, 2, 12)
    a = _apply(model, params, x, causal_mask(12))
    b = _apply(unscaled, params, x, causal_mask(12))  # same parameters, no 1/sqrt(D)
    assert np.all(np.isfinite(b))
    assert not np.allclose(a, b, atol=1e-4)
    # The cache path honours the flag too.
    logits, _ = _prefill(unscaled, params, x)
    np.testing.assert_allclose(logits, b, atol=1e-5, rtol=1e-5)
