"""zoo.transformer.objectives.token_cross_entropy: the weighted mean, pads of any id, bad targets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.transformer.objectives import token_cross_entropy


def test_weighted_mean_of_token_nll_and_pads_may_hold_any_id(rng):
    logits = jnp.asarray(rng.normal(size=(2, 4, 6)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 6, size=(2, 4)), jnp.int32)
    weights = jnp.array([[1, 1, 0, 0], [1, 1, 1, 0]], jnp.float32)
    nll = -np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), np.asarray(targets)[..., None], -1)[..., 0]
    loss, count = token_cross_entropy(logits, targets, weights)
    np.testing.assert_allclose(loss, (nll * np.asarray(weights)).sum() / 5, rtol=1e-6)
    assert float(count) == 5
    # weight-0 positions (pads) may hold ids outside [0, V), e.g. -100 or V: the loss is unchanged, not NaN
    padded = targets.at[0, 2].set(-100).at[1, 3].set(6)
    for fn in (token_cross_entropy, jax.jit(token_cross_entropy)):
        np.testing.assert_allclose(fn(logits, padded, weights)[0], loss, rtol=1e-6)
    grad = lambda t: jax.grad(lambda lg: token_cross_entropy(lg, t, weights)[0])(logits)  # noqa: E731
    np.testing.assert_allclose(grad(padded), grad(targets), atol=1e-7)


def test_bad_targets_raise():
    logits, w = jnp.zeros((1, 3, 4)), jnp.ones((1, 3))
    with pytest.raises(ValueError, match=r"token_cross_entropy: `targets` must be ids in \[0, 4\) where weights > 0; got ids in \[-1, 2\]"):
        token_cross_entropy(logits, jnp.array([[1, 2, -1]]), w)
    with pytest.raises(ValueError, match=r"`targets` must be integer token ids; got dtype float32"):
        token_cross_entropy(logits, jnp.array([[1.7, 1.2, 1.9]]), w)
    with pytest.raises(ValueError, match=r"targets and weights \[B, T\] must agree"):
        token_cross_entropy(logits, jnp.array([[1, 2]]), w)


def test_permutation_lm_rejects_a_perm_that_is_not_a_permutation():
    from zoo.transformer import TransformerLM
    from zoo.transformer.objectives import permutation_lm_loss

    model = TransformerLM(vocab_size=11, num_layers=1, num_heads=1, head_dim=8, mlp_dim=16, max_len=8)
    tokens = jnp.array([[1, 2, 3, 4, 5]])
    params = model.init(jax.random.key(0), tokens)
    permutation_lm_loss(model, params, tokens, jnp.array([[4, 2, 0, 1, 3]]))
    with pytest.raises(ValueError, match=r"`perm` must be rows that are permutations of 0..4; got row 0 = \[0, 0, 1, 2, 3\]"):
        permutation_lm_loss(model, params, tokens, jnp.array([[0, 0, 1, 2, 3]]))
    with pytest.raises(ValueError, match=r"`perm` must be an integer array of shape \(1, 5\) \(that of tokens\); got shape \(5,\)"):
        permutation_lm_loss(model, params, tokens, jnp.arange(5))
