"""The CNN + VAE poem generator: couplet extraction, the gated convolution, the loss, a smoke run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.core import load_config, train_and_evaluate
from zoo.data.poetry import Poem
from zoo.vae import poem as P


def test_couplets_drop_punctuation():
    body = "春眠不覺曉，處處聞啼鳥。夜來風雨聲，花落知多少。"
    assert P.couplets([Poem("春曉", body)]) == ["春眠不覺曉處處聞啼鳥", "夜來風雨聲花落知多少"]
    assert P.format_couplet("春眠不覺曉處處聞啼鳥") == "春眠不覺曉，處處聞啼鳥。"


def test_gated_conv_is_residual_and_gated():
    conv = P.GatedConv()
    x = jax.random.normal(jax.random.key(0), (2, 10, 4))
    params = conv.init(jax.random.key(1), x)
    zero = jax.tree_util.tree_map(jnp.zeros_like, params)
    np.testing.assert_array_equal(conv.apply(zero, x), x)  # a = 0: the residual alone
    # by hand: [a | b] = conv(x); out = x + a * sigmoid(b)
    kernel, bias = params["params"]["Conv_0"]["kernel"], params["params"]["Conv_0"]["bias"]
    padded = np.pad(np.asarray(x), ((0, 0), (1, 1), (0, 0)))
    h = sum(np.einsum("btc,cd->btd", padded[:, i : i + 10], np.asarray(kernel[i])) for i in range(3)) + np.asarray(bias)
    a, b = h[..., :4], h[..., 4:]
    np.testing.assert_allclose(conv.apply(params, x), np.asarray(x) + a / (1 + np.exp(-b)), atol=1e-5)


def test_negative_elbo_terms():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(3, 10, 7)), jnp.float32)
    tokens = jnp.asarray(rng.integers(0, 7, size=(3, 10)), jnp.int32)
    mean = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
    logvar = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
    recon, kl = P.negative_elbo(logits, tokens, mean, logvar)
    lg = np.asarray(logits, np.float64)
    logp = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
    want = -np.array([sum(logp[b, t, tokens[b, t]] for t in range(10)) for b in range(3)])
    np.testing.assert_allclose(recon, want, rtol=1e-5)
    m, lv = np.asarray(mean, np.float64), np.asarray(logvar, np.float64)
    np.testing.assert_allclose(kl, 0.5 * np.sum(m**2 + np.exp(lv) - 1 - lv, axis=1), rtol=1e-5)


def test_kl_warmup_and_free_bits():
    assert float(P.kl_weight(5, 0)) == 1.0
    np.testing.assert_allclose([float(P.kl_weight(s, 100)) for s in (0, 25, 100, 400)], [0.0, 0.25, 1.0, 1.0])
    rng = np.random.default_rng(1)
    mean = jnp.asarray(rng.normal(size=(4, 3)) * [[0.05, 1.0, 2.0]] + [[0.0, 0.0, 2.0]], jnp.float32)
    logvar = jnp.asarray(rng.normal(size=(4, 3)) * 0.1, jnp.float32)
    per_dim = np.mean(0.5 * (np.exp(logvar) + np.square(mean) - 1 - logvar), axis=0)
    _, kl = P.negative_elbo(jnp.zeros((4, 10, 2)), jnp.zeros((4, 10), jnp.int32), mean, logvar)
    np.testing.assert_allclose(P.free_bits_kl(mean, logvar, 0.0), np.mean(kl), rtol=1e-5)
    np.testing.assert_allclose(P.free_bits_kl(mean, logvar, 0.5), np.sum(np.maximum(per_dim, 0.5)), rtol=1e-5)
    # below the floor a dimension gets no gradient: nothing pulls it further towards the prior
    g = jax.grad(lambda m: P.free_bits_kl(m, logvar, 0.5))(mean)
    assert per_dim[0] < 0.5 < per_dim[2] and np.all(np.asarray(g)[:, 0] == 0) and np.all(np.asarray(g)[:, 2] != 0)


def test_smoke_run_writes_couplets(tmp_path):
    config = load_config("zoo.vae.configs.poem_vae:smoke")
    config.train.update(progress=False)
    config.loss.update(kl_warmup_steps=3, free_bits=0.1)  # the remedies run through the jitted step
    _, metrics = train_and_evaluate(config, tmp_path)
    assert all(np.isfinite(v) for v in metrics.values())
    np.testing.assert_allclose(metrics["test_neg_elbo"], metrics["test_reconstruction"] + metrics["test_kl"], rtol=1e-6)
    lines = (tmp_path / "samples.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == config.eval.num_samples
    assert all(len(line) == 12 and line[5] == "，" and line[11] == "。" for line in lines)


def test_bad_shape_is_refused():
    model = P.PoemVAE(vocab_size=11, embed_dim=4, latent_dim=2)
    with pytest.raises(ValueError, match=r"`tokens` must be \[B, 10\]"):
        model.init(jax.random.key(0), jnp.zeros((1, 9), jnp.int32), jax.random.key(1))


def test_negative_elbo_rejects_bad_tokens():
    logits, stats = jnp.zeros((2, 3, 5)), jnp.zeros((2, 4))
    with pytest.raises(ValueError, match=r"`tokens` must be token ids in \[0, vocab_size\) = \[0, 5\); got ids in \[1, 5\]"):
        P.negative_elbo(logits, jnp.array([[1, 2, 5]] * 2), stats, stats)
    with pytest.raises(ValueError, match=r"`tokens` must be an integer array \[B, L\]; got dtype float32"):
        P.negative_elbo(logits, jnp.ones((2, 3)), stats, stats)
    with pytest.raises(ValueError, match=r"`tokens` must be \[B, L\] = \(2, 3\) .*; got shape \(2, 4\)"):
        P.negative_elbo(logits, jnp.ones((2, 4), jnp.int32), stats, stats)
