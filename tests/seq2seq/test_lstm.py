"""LSTM seq2seq (post 5861): stepwise = teacher forcing, padding, pooling, prior, decoding, loss."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import count_compilations
from zoo.seq2seq import beam_search, greedy
from zoo.seq2seq.lstm import (
    END,
    NUM_SPECIAL,
    START,
    LSTMSeq2Seq,
    bag_of_characters,
    lstm_prefill,
    make_lstm_logits_fn,
    make_lstm_recompute_logits_fn,
    seq2seq_loss,
)

V = 11
SIZES = dict(vocab_size=V, embed_dim=8, encoder_units=4, decoder_units=8, hidden_dim=16)

# Right-padded sources (lengths 5, 2, 4) and targets [START, ..., END, pad...].
SOURCE = np.array([[5, 6, 7, 5, 10, 0],
                   [8, 9, 0, 0, 0, 0],
                   [1, 4, 6, 9, 0, 0]], np.int32)
TARGET = np.array([[START, 5, 7, 6, END],
                   [START, 8, END, 0, 0],
                   [START, 4, 9, 9, END]], np.int32)


def _model(**kw):
    return LSTMSeq2Seq(**{**SIZES, **kw})


def _random_params(model, seed, scale=0.5):
    """Gaussian parameters of ``model.init``'s shapes, prior ``log_scale``/``shift`` at their init 0.

    (Compiling ``model.init`` itself costs ~4 s on CPU, mostly the orthogonal LSTM initialisers.)
    """
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), SOURCE, TARGET[:, :-1])
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.asarray((0.1 if "bias" in jax.tree_util.keystr(path) else scale)
                                    * rng.normal(size=x.shape), x.dtype), shapes)
    if model.use_prior:
        inner = dict(params["params"])
        inner["log_scale"] = jnp.zeros((model.vocab_size,), jnp.float32)
        inner["shift"] = jnp.zeros((model.vocab_size,), jnp.float32)
        params = {"params": inner}
    return params


@pytest.fixture(scope="module")
def setup():
    model = _model()
    return model, _random_params(model, 0)


@functools.lru_cache(maxsize=None)
def _apply(model):
    """Jitted forward pass, one per model (eager Flax dispatch is slow on CPU)."""
    return jax.jit(lambda params, s, t: model.apply(params, s, t))


@functools.lru_cache(maxsize=None)
def _encode(model):
    return jax.jit(lambda params, s: model.apply(params, s, method=LSTMSeq2Seq.encode))


def test_shapes_and_stepwise_equals_teacher_forced(setup):
    model, params = setup
    target_in = TARGET[:, :-1]
    logits = _apply(model)(params, SOURCE, target_in)
    assert logits.shape == (3, 4, V) and logits.dtype == jnp.float32

    @jax.jit
    def stepwise(params, source, target_in):
        encoded = model.apply(params, source, method=LSTMSeq2Seq.encode)

        def body(carry, token_t):
            logits_t, carry = model.apply(params, encoded, token_t, carry, method=LSTMSeq2Seq.decode_step)
            return carry, logits_t

        _, out = jax.lax.scan(body, model.init_carry(source.shape[0]), target_in.T)
        return out.transpose(1, 0, 2)

    np.testing.assert_allclose(stepwise(params, SOURCE, target_in), logits, atol=1e-5, rtol=0)
    enc = _encode(model)(params, SOURCE)
    assert enc["memory"].shape == (3, 6, 8) and enc["pooled"].shape == (3, 8)
    assert enc["source_mask"].dtype == jnp.bool_ and enc["bag"].shape == (3, V)
    carry = model.init_carry(3)
    assert len(carry) == 2 and all(c.shape == (3, 8) for layer in carry for c in layer)


def test_source_padding_invariance(setup):
    model, params = setup
    encode = _encode(model)
    enc = encode(params, SOURCE)
    padded = np.pad(SOURCE, ((0, 0), (0, 5)))
    enc_p = encode(params, padded)
    s = SOURCE.shape[1]
    np.testing.assert_allclose(enc_p["memory"][:, :s], enc["memory"], atol=1e-6, rtol=0)
    np.testing.assert_array_equal(enc_p["memory"][:, s:], 0.0)
    np.testing.assert_array_equal(np.asarray(enc["memory"])[SOURCE == 0], 0.0)
    for key in ("pooled", "bag"):
        np.testing.assert_allclose(enc_p[key], enc[key], atol=1e-6, rtol=0)
    # The backward LSTM starts at each row's true end: a row encoded alone, unpadded, matches.
    row, n = 1, 2  # the shortest row, 4 pads
    alone = encode(params, SOURCE[row:row + 1, :n])["memory"][0]
    np.testing.assert_allclose(enc["memory"][row, :n], alone, atol=1e-6, rtol=0)
    apply = _apply(model)
    np.testing.assert_allclose(apply(params, padded, TARGET[:, :-1]), apply(params, SOURCE, TARGET[:, :-1]),
                               atol=1e-6, rtol=0)


def test_masked_max_pool(setup):
    model, params = setup
    enc = _encode(model)(params, SOURCE)
    memory = np.asarray(enc["memory"])
    for row in range(SOURCE.shape[0]):
        real = memory[row, SOURCE[row] != 0]
        np.testing.assert_array_equal(enc["pooled"][row], real.max(axis=0))
    # Rows whose real outputs are all negative in some feature: pooled < 0 there (pads, held at 0, ignored).
    assert np.any(np.asarray(enc["pooled"]) < 0)


def test_bag_of_characters():
    bag = np.asarray(bag_of_characters(jnp.asarray(SOURCE), V))
    want = np.zeros((3, V), np.float32)
    for row in range(3):
        for i in SOURCE[row]:
            if i >= NUM_SPECIAL:
                want[row, i] = 1.0
    np.testing.assert_array_equal(bag, want)
    assert not bag[:, :NUM_SPECIAL].any()  # UNK (row 2) and PAD excluded


def test_prior_trick(setup):
    model, params = setup
    plain = _model(use_prior=False)
    inner = dict(params["params"])
    log_s, t = inner.pop("log_scale"), inner.pop("shift")
    np.testing.assert_array_equal(log_s, 0.0)
    np.testing.assert_array_equal(t, 0.0)
    y = _apply(plain)({"params": inner}, SOURCE, TARGET[:, :-1])
    chi = bag_of_characters(jnp.asarray(SOURCE), V)[:, None, :]
    np.testing.assert_allclose(_apply(model)(params, SOURCE, TARGET[:, :-1]), (y + chi) / 2, atol=1e-6, rtol=0)
    # Trained-looking prior parameters: ŷ = exp(log_s) χ + t.
    rng = np.random.default_rng(0)
    log_s, t = rng.normal(size=V).astype(np.float32), rng.normal(size=V).astype(np.float32)
    moved = {"params": {**inner, "log_scale": log_s, "shift": t}}
    np.testing.assert_allclose(_apply(model)(moved, SOURCE, TARGET[:, :-1]), (y + np.exp(log_s) * chi + t) / 2,
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("prompt_len", [1, 2])
def test_cached_decoding_equals_recompute(setup, prompt_len):
    """Greedy (prompt [[START]] and a 2-token prompt, i.e. a real prefill) and beam search
    (beam 3, the recompute fn repeating the source rows to B * K) agree token for token."""
    model, _ = setup
    # A seed whose decodes are varied: EOS at different steps, beams finishing at different lengths.
    params = _random_params(model, 3, scale=1.0)
    prompt = jnp.asarray(TARGET[:, :prompt_len])
    cached_fn = make_lstm_logits_fn(model, params)
    kw = dict(max_new_tokens=6, eos_id=END, pad_id=0)

    @jax.jit
    def run(source):
        cache = lstm_prefill(model, params, source, prompt)
        recompute_fn = make_lstm_recompute_logits_fn(model, params, source)
        out = [greedy(cached_fn, prompt, cache=cache, **kw), greedy(recompute_fn, prompt, **kw)]
        if prompt_len == 1:
            out += [beam_search(cached_fn, prompt, beam_size=3, cache=cache, **kw),
                    beam_search(recompute_fn, prompt, beam_size=3, **kw)]
        return out

    outs = run(jnp.asarray(SOURCE))
    for cached, recomputed in zip(outs[::2], outs[1::2]):
        np.testing.assert_array_equal(cached.tokens, recomputed.tokens)
        np.testing.assert_array_equal(cached.lengths, recomputed.lengths)
        np.testing.assert_allclose(cached.scores, recomputed.scores, atol=1e-4)
    assert len(np.unique(np.asarray(outs[0].tokens[:, prompt_len:]))) > 2  # a non-trivial decode


def test_loss_masks_pads_and_matches_hand_computation(setup):
    model, params = setup
    logits = _apply(model)(params, SOURCE, TARGET[:, :-1])
    target_out = jnp.asarray(TARGET[:, 1:])
    loss, count = jax.jit(seq2seq_loss)(logits, target_out)
    assert int(count) == int((TARGET[:, 1:] != 0).sum()) == 10
    noisy = jnp.where((target_out == 0)[..., None], 1e3 * jax.random.normal(jax.random.PRNGKey(1), logits.shape),
                      logits)
    np.testing.assert_allclose(seq2seq_loss(noisy, target_out)[0], loss, rtol=1e-6)
    lg = np.asarray(logits, np.float64)
    logp = lg - lg.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    nll = [-logp[b, t, TARGET[b, t + 1]] for b in range(3) for t in range(4) if TARGET[b, t + 1]]
    np.testing.assert_allclose(loss, np.mean(nll), rtol=1e-5)
    # Tiny hand case: uniform logits over 4 classes, one real target → log 4.
    loss1, n1 = seq2seq_loss(jnp.zeros((1, 2, 4)), jnp.array([[3, 0]]))
    assert int(n1) == 1 and abs(float(loss1) - np.log(4.0)) < 1e-6
    assert float(seq2seq_loss(jnp.zeros((1, 2, 4)), jnp.zeros((1, 2), jnp.int32))[0]) == 0.0


def test_gradients_finite_and_single_compile(setup):
    model, params = setup

    def loss_fn(params, source, target):
        return seq2seq_loss(model.apply(params, source, target[:, :-1]), target[:, 1:])[0]

    # An all-pad source row must not produce NaNs either.
    source = SOURCE.copy()
    source[1] = 0
    grads = jax.jit(jax.grad(loss_fn))(params, source, TARGET)
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(np.all(np.isfinite(g)) for g in leaves)
    assert any(np.any(np.asarray(g) != 0) for g in leaves)

    fn = jax.jit(make_lstm_logits_fn(model, params))
    cache = jax.jit(lambda s, p: lstm_prefill(model, params, s, p))(SOURCE, TARGET[:, :1])
    tokens = jnp.asarray(TARGET)
    other = jnp.asarray(np.roll(TARGET, 1, axis=0))
    logits0, cache = fn(tokens, jnp.int32(0), cache)
    with count_compilations() as compiled:
        logits1, cache2 = fn(tokens, jnp.int32(1), cache)
        fn(other, jnp.int32(2), cache2)
    assert compiled == []
    ref = _apply(model)(params, SOURCE, TARGET[:, :2])
    np.testing.assert_allclose(logits0, ref[:, 0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(logits1, ref[:, 1], atol=1e-5, rtol=0)


def test_bad_inputs(setup):
    model, params = setup
    src, tgt = jnp.asarray(SOURCE), jnp.asarray(TARGET[:, :-1])
    cases = [
        (lambda: model.apply(params, src[0], tgt), r"`source` must be .*rank 2.*got shape \(6,\)"),
        (lambda: model.apply(params, src.astype(jnp.float32), tgt), r"`source` must be an integer array.*float32"),
        (lambda: model.apply(params, src.at[0, 0].set(V), tgt), r"`source` must be token ids in \[0, vocab_size\)"),
        (lambda: model.apply(params, src, tgt.at[0, 0].set(-1)), r"`target_in` must be token ids"),
        (lambda: model.apply(params, src, tgt[:2]), r"`target_in` must be batch size 3.*got batch size 2"),
        (lambda: model.apply(params, {"memory": jnp.zeros((3, 6, 8))}, tgt, None, method=LSTMSeq2Seq.decode_step),
         r"`token_t` must be .*rank 1"),
        (lambda: seq2seq_loss(jnp.zeros((3, 4, V)), tgt[:, :3]), r"`target_out` must be shape"),
        (lambda: seq2seq_loss(jnp.zeros((3, V)), tgt), r"`logits` must be"),
        (lambda: lstm_prefill(model, params, src, tgt[:2, :1]), r"lstm_prefill: `prompt` must be batch size 3"),
        (lambda: lstm_prefill(model, params, src, tgt[:, :0]), r"`prompt` must be \[B, P\] with P >= 1"),
        (lambda: make_lstm_recompute_logits_fn(model, params, src)(tgt[:2], 0, None), r"`tokens` must be a multiple"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()


def test_default_sizes_are_the_authors():
    """128-d shared embedding, 2 × BiLSTM(64 + 64), 2 × LSTM(128), [attn | state | pool] → 512 → V."""
    model = LSTMSeq2Seq(vocab_size=50)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), SOURCE, TARGET[:, :-1])["params"]
    assert shapes["embed"]["embedding"].shape == (50, 128)
    assert shapes["enc_bwd_1"]["cell"]["ii"]["kernel"].shape == (128, 64)
    assert shapes["dec_1"]["cell"]["hi"]["kernel"].shape == (128, 128)
    assert shapes["attn_w"]["kernel"].shape == (128, 128)
    assert shapes["hidden"]["kernel"].shape == (128 * 3, 512)
    assert shapes["out"]["kernel"].shape == (512, 50)
    assert shapes["log_scale"].shape == shapes["shift"].shape == (50,)
    assert "log_scale" not in jax.eval_shape(LSTMSeq2Seq(vocab_size=50, use_prior=False).init,
                                             jax.random.PRNGKey(0), SOURCE, TARGET[:, :-1])["params"]
