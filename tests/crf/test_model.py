"""The tagger: shapes, padding invariance, and that it can fit."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kernels import crf
from zoo.crf import Tagger


@pytest.mark.parametrize("encoder", ["cnn", "bilstm"])
def test_emissions_inside_a_sequence_ignore_trailing_padding(rng, encoder):
    model = Tagger(vocab_size=30, num_tags=5, embed_dim=8, encoder=encoder, features=8, dilations=(1, 2), residual=True)
    tokens = rng.integers(2, 30, size=(3, 7)).astype(np.int32)
    lengths = np.array([7, 4, 1], np.int32)
    params = model.init(jax.random.key(0), tokens, lengths)["params"]
    short = model.apply({"params": params}, tokens, lengths)
    padded_tokens = np.concatenate([tokens, rng.integers(2, 30, size=(3, 9)).astype(np.int32)], axis=1)
    long = model.apply({"params": params}, padded_tokens, lengths)
    assert short.emissions.shape == (3, 7, 5) and short.transitions.shape == (5, 5)
    for b, n in enumerate(lengths):
        np.testing.assert_allclose(short.emissions[b, :n], long.emissions[b, :n], atol=1e-5)


def test_start_end_scores_are_optional_parameters():
    model = Tagger(vocab_size=10, num_tags=4, use_start_end=True, embed_dim=4, features=4)
    params = model.init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32), jnp.ones((1,), jnp.int32))["params"]
    assert params["crf_start"].shape == (4,) and params["crf_end"].shape == (4,)


def test_bad_encoder_name_is_a_clear_error():
    with pytest.raises(ValueError, match="Tagger.encoder must be 'cnn' or 'bilstm'; got 'gru'"):
        Tagger(vocab_size=10, num_tags=4, encoder="gru").init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32), jnp.ones((1,), jnp.int32))


def test_tagger_overfits_one_batch_and_viterbi_recovers_the_tags(rng):
    model = Tagger(vocab_size=20, num_tags=4, embed_dim=16, features=32)
    tokens = rng.integers(2, 20, size=(4, 9)).astype(np.int32)
    tags = (tokens % 4).astype(np.int32)  # a learnable function of the token
    lengths = np.array([9, 5, 3, 8], np.int32)
    params = model.init(jax.random.key(1), tokens, lengths)["params"]
    tx = optax.adam(0.05)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        def loss_fn(p):
            out = model.apply({"params": p}, tokens, lengths)
            return -jnp.mean(crf.crf_log_likelihood(out.emissions, out.transitions, lengths, tags))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(60):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.05 * losses[0]
    out = model.apply({"params": params}, tokens, lengths)
    decoded, _ = crf.crf_viterbi(out.emissions, out.transitions, lengths)
    valid = np.arange(9)[None] < lengths[:, None]
    np.testing.assert_array_equal(np.asarray(decoded)[valid], tags[valid])


def test_lengths_must_be_one_per_sequence():
    model = Tagger(vocab_size=10, num_tags=4, embed_dim=4, features=4)
    with pytest.raises(ValueError, match=r"Tagger: `tokens` must be \[B, T\] and `lengths` \[B\] = \(2,\); got tokens \(2, 6\), lengths \(2, 1\)"):
        model.init(jax.random.key(0), jnp.zeros((2, 6), jnp.int32), jnp.ones((2, 1), jnp.int32))
