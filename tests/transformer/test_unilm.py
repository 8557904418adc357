"""UniLM seq2seq and permutation LM on one TransformerLM: the source cache against recompute
decoding, target-only loss, the shuffled-with-positions permutation LM against the permuted
mask, and the author's no-bias attention flag."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels.attention import permutation_mask, unilm_mask
from zoo.seq2seq import beam_search, greedy
from zoo.transformer import (
    TransformerLM,
    make_cached_logits_fn,
    make_unilm_recompute_logits_fn,
    permutation_lm_logits,
    permutation_lm_loss,
    unilm_loss,
    unilm_prefill,
)

V, L, H, D, M, T = 13, 2, 2, 8, 32, 20
S, N = 7, 8  # source length (left padded), generated tokens


def _model(**kw):
    return TransformerLM(vocab_size=V, num_layers=L, num_heads=H, head_dim=D, mlp_dim=M, max_len=T, **kw)


@pytest.fixture(scope="module")
def setup():
    model = _model()
    params = jax.jit(model.init)(jax.random.PRNGKey(1), jnp.zeros((1, T), jnp.int32))
    # Scale the head up so that the argmax is decisive (random-init logits are nearly flat).
    params["params"]["head"]["kernel"] = params["params"]["head"]["kernel"] * 8.0
    return model, params


def _left_padded_sources(rng, b=3):
    lengths = np.array([S, 4, 1])[:b]
    src = rng.integers(4, V, size=(b, S)).astype(np.int32)
    valid = np.arange(S)[None, :] >= (S - lengths)[:, None]
    return jnp.asarray(np.where(valid, src, 0)), jnp.asarray(valid)


def test_source_cache_equals_recompute_greedy_and_beam(setup):
    model, params = setup
    src, valid = _left_padded_sources(np.random.default_rng(0))
    cached = make_cached_logits_fn(model, params)
    recompute = make_unilm_recompute_logits_fn(model, params, S, valid)
    cache = unilm_prefill(model, params, src, valid)
    run = jax.jit(lambda fn, c: greedy(fn, src, max_new_tokens=N, eos_id=3, cache=c), static_argnums=0)
    a, b = run(cached, cache), run(recompute, None)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
    beam = jax.jit(lambda fn, c: beam_search(fn, src, beam_size=3, max_new_tokens=N, eos_id=3, cache=c),
                   static_argnums=0)
    a, b = beam(cached, cache), beam(recompute, None)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)


def test_cached_step_logits_equal_full_unilm_pass(setup):
    """Teacher-forced: step logits along a fixed target equal the full pass under the UniLM
    mask (with the left padding hidden), position by position."""
    model, params = setup
    rng = np.random.default_rng(1)
    src, valid = _left_padded_sources(rng)
    tgt = jnp.asarray(rng.integers(4, V, size=(3, N)).astype(np.int32))
    tokens = jnp.concatenate([src, tgt], axis=1)
    full = make_unilm_recompute_logits_fn(model, params, S, valid)
    step = jax.jit(make_cached_logits_fn(model, params))
    cache = unilm_prefill(model, params, src, valid)
    for t in range(S - 1, S + N - 1):
        got, cache = step(tokens, t, cache)
        want, _ = full(tokens, t, None)
        np.testing.assert_allclose(got, want, atol=2e-5, err_msg=f"step {t}")


def test_unilm_loss_trains_only_target_tokens(setup):
    model, params = setup
    rng = np.random.default_rng(2)
    tokens = jnp.asarray(rng.integers(4, V, size=(2, 12)).astype(np.int32))
    seg = jnp.asarray((np.arange(12)[None, :] >= np.array([[5], [8]])).astype(np.int32))
    loss_fn = jax.jit(lambda p, start: unilm_loss(model, p, tokens, seg, target_start=start), static_argnums=1)
    loss, count = loss_fn(params, 0)
    logits = np.asarray(jax.jit(model.apply)(params, tokens, unilm_mask(seg)), np.float64)
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    terms = [-logp[b, t - 1, int(tokens[b, t])] for b in range(2) for t in range(1, 12) if seg[b, t]]
    assert int(count) == len(terms) == (12 - 5) + (12 - 8)
    np.testing.assert_allclose(float(loss), np.mean(terms), rtol=1e-5)
    # Projecting only positions >= target_start - 1 gives the same loss (targets start at 5, 8).
    for start in (1, 5):
        short, short_count = loss_fn(params, start)
        np.testing.assert_allclose(float(short), float(loss), rtol=1e-6)
        assert int(short_count) == int(count)
    g = jax.jit(jax.grad(lambda p: unilm_loss(model, p, tokens, seg)[0]))(params)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(g))


def test_permutation_lm_shuffled_equals_permuted_mask(setup):
    """Post 6933: shuffling the tokens with their position ids under the causal mask equals
    the permuted lower-triangular mask on the original order."""
    model, params = setup
    rng = np.random.default_rng(3)
    tokens = jnp.asarray(rng.integers(0, V, size=(3, 9)).astype(np.int32))
    perm = jnp.asarray(np.stack([rng.permutation(9) for _ in range(3)]).astype(np.int32))
    shuffled = permutation_lm_logits(model, params, tokens, perm)  # [B, T, V] in order
    masked = model.apply(params, tokens, permutation_mask(perm))  # [B, T, V] by position
    want = jnp.take_along_axis(masked, perm[..., None], axis=1)
    np.testing.assert_allclose(shuffled, want, atol=2e-5)
    loss, count = permutation_lm_loss(model, params, tokens, perm)
    assert np.isfinite(float(loss)) and int(count) == 3 * 8


def test_no_bias_flag_drops_attention_biases():
    model = _model(use_bias=False, scale_attention=False)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"]
    for name in ("query", "key", "value", "out"):
        assert set(params["block_0"][name]) == {"kernel"}
    assert "bias" in _model().init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"]["block_0"]["query"]


def test_bad_inputs_raise_clear_errors(setup):
    model, params = setup
    with pytest.raises(ValueError, match="positions must have the shape of tokens"):
        model.apply(params, jnp.zeros((1, 4), jnp.int32), None, jnp.zeros((1, 5), jnp.int32))
    with pytest.raises(ValueError, match="logits_from must be in"):
        model.apply(params, jnp.zeros((1, 4), jnp.int32), None, None, 4)
    with pytest.raises(ValueError, match="key_valid must have the shape of source"):
        unilm_prefill(model, params, jnp.zeros((2, 4), jnp.int32), jnp.ones((2, 5), bool))
    with pytest.raises(ValueError, match="exceeds max_len"):
        unilm_prefill(model, params, jnp.zeros((1, T + 1), jnp.int32))
    with pytest.raises(ValueError, match="left-padded source"):  # right padding: [SEP] would not be last
        unilm_prefill(model, params, jnp.zeros((1, 4), jnp.int32), jnp.asarray([[True, True, False, False]]))
    with pytest.raises(ValueError, match="left-padded source"):
        make_unilm_recompute_logits_fn(model, params, 4, jnp.asarray([[False, True, False, True]]))
    with pytest.raises(ValueError, match=r"positions must lie in \[0, max_len\)"):
        model.apply(params, jnp.zeros((1, 4), jnp.int32), None, jnp.asarray([[0, 1, 2, T]]))
    seg = jnp.asarray([[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="must start at or after target_start = 3"):
        unilm_loss(model, params, jnp.zeros((1, 4), jnp.int32), seg, target_start=3)
