"""The self-terminating head (post 7500): normalised, equal to the product formula, stable at
extreme inputs, and greedy decoding stops within its bound however the model resists."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.seq2seq import greedy
from zoo.seq2seq.self_terminating import greedy_stop_bound, self_terminating_log_probs, self_terminating_step


def naive(logits, eos_logits, eos_id, eps):
    """The definition with explicit products, float64."""
    b, t, v = logits.shape
    out = np.zeros((b, t, v))
    for i in range(b):
        alpha = 1.0
        for s in range(t):
            alpha *= (1 - eps) / (1 + np.exp(-eos_logits[i, s]))
            z = np.exp(np.delete(logits[i, s], eos_id) - np.delete(logits[i, s], eos_id).max())
            out[i, s] = np.insert(alpha * z / z.sum(), eos_id, 1 - alpha)
    return out


def test_head_is_normalised_and_equals_the_product_formula(rng):
    logits = rng.normal(size=(2, 6, 5)) * 3
    eos_logits = rng.normal(size=(2, 6)) * 3
    got = self_terminating_log_probs(jnp.asarray(logits, jnp.float32), jnp.asarray(eos_logits, jnp.float32), eos_id=2, epsilon=0.1)
    np.testing.assert_allclose(np.exp(got), naive(logits, eos_logits, 2, 0.1), atol=1e-6)
    np.testing.assert_allclose(jax.scipy.special.logsumexp(got, axis=-1), 0.0, atol=1e-5)
    # the step form, carried along the sequence, gives the same rows
    log_alpha = jnp.zeros(2)
    for t in range(6):
        row, log_alpha = self_terminating_step(jnp.asarray(logits[:, t], jnp.float32), jnp.asarray(eos_logits[:, t], jnp.float32),
                                               log_alpha, eos_id=2, epsilon=0.1)  # fmt: skip
        np.testing.assert_allclose(row, got[:, t], atol=1e-6)


def test_extreme_stop_logits_stay_finite():
    logits = jnp.zeros((1, 4, 3))
    for s in (-80.0, 80.0):
        out = self_terminating_log_probs(logits, jnp.full((1, 4), s), eos_id=0, epsilon=1e-3)
        grads = jax.grad(lambda e: jnp.sum(self_terminating_log_probs(logits, e, eos_id=0, epsilon=1e-3)[..., 1]))(jnp.full((1, 4), s))
        assert np.all(np.isfinite(out)) and np.all(np.isfinite(grads)), s


@pytest.mark.parametrize("epsilon", [0.1, 0.25])
def test_greedy_stops_within_the_bound_even_when_the_model_never_wants_to(epsilon):
    # The toy model strongly prefers token 1 and sets s_t = +30 (σ(s_t) ≈ 1: as little stopping as the head allows).
    eos = 0
    bound = greedy_stop_bound(epsilon)
    assert (1 - epsilon) ** bound < 0.5 <= (1 - epsilon) ** (bound - 1)

    def logits_fn(tokens, step, log_alpha):
        logits = jnp.tile(jnp.array([0.0, 10.0, 0.0, 0.0]), (tokens.shape[0], 1))
        return self_terminating_step(logits, jnp.full(tokens.shape[:1], 30.0), log_alpha, eos_id=eos, epsilon=epsilon)

    prompt = jnp.ones((2, 1), jnp.int32)
    out = jax.jit(lambda p: greedy(logits_fn, p, max_new_tokens=3 * bound, eos_id=eos, cache=jnp.zeros(2)))(prompt)
    np.testing.assert_array_equal(out.lengths, [bound, bound])
    assert np.all(out.tokens[:, bound] == eos) and np.all(out.tokens[:, 1:bound] == 1)


def test_bad_arguments():
    with pytest.raises(ValueError, match="`epsilon` must lie in \\(0, 1\\); got 0.0"):
        greedy_stop_bound(0.0)
    with pytest.raises(ValueError, match="`eos_logits` must have shape"):
        self_terminating_log_probs(jnp.zeros((1, 3, 4)), jnp.zeros((1, 2)), eos_id=0, epsilon=0.1)
    with pytest.raises(ValueError, match="`eos_id` must lie in \\[0, 4\\); got 4"):
        self_terminating_log_probs(jnp.zeros((1, 3, 4)), jnp.zeros((1, 3)), eos_id=4, epsilon=0.1)


def test_step_rejects_shapes_that_would_broadcast_and_a_bad_eos_id():
    logits, zeros = jnp.zeros((3, 5)), jnp.zeros(3)
    with pytest.raises(ValueError, match=r"self_terminating_step: `eos_logit` must have shape \(3,\) \(logits' \[B\]\); got \(3, 1\)"):
        self_terminating_step(logits, jnp.zeros((3, 1)), zeros, eos_id=0, epsilon=0.1)
    with pytest.raises(ValueError, match=r"`log_alpha` must have shape \(3,\) \(logits' \[B\]\); got \(\)"):
        self_terminating_step(logits, zeros, jnp.zeros(()), eos_id=0, epsilon=0.1)
    with pytest.raises(ValueError, match=r"`eos_id` must lie in \[0, 5\); got 5"):
        self_terminating_step(logits, zeros, zeros, eos_id=5, epsilon=0.1)
    with pytest.raises(ValueError, match=r"`logits` must be \[B, V\] \(rank 2\); got shape \(5,\)"):
        self_terminating_step(logits[0], zeros, zeros, eos_id=0, epsilon=0.1)
