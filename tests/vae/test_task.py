"""The VAE models and task: the IWAE bound on a fixed model, batch/vmap invariance, the
smoke configs train and evaluate (nats, bits/dim, PNG grids), and bad inputs fail clearly."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.core import parallel
from zoo.core.train import init_state, make_train_step
from zoo.vae import losses as L
from zoo.vae import task
from zoo.vae.configs import vae
from zoo.vae.models import CVAE, VAE, ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder

SHAPE = (4, 4, 1)


@functools.lru_cache(maxsize=None)
def tiny(conditional=False, likelihood="bernoulli"):
    """A small MLP VAE with perturbed weights (so the posterior is not the prior) and a batch."""
    kw = dict(encoder=MLPEncoder(3, (16,)), decoder=MLPDecoder(SHAPE, (16,)), image_shape=SHAPE, latent_dim=3,
              likelihood=likelihood)  # fmt: skip
    model = CVAE(**kw, num_classes=4) if conditional else VAE(**kw)
    x = (np.random.default_rng(0).random((6, *SHAPE)) < 0.4).astype(np.float32)
    labels = jnp.arange(6) % 4
    params = jax.jit(model.init)(jax.random.key(0), x, jax.random.key(1), labels)["params"]
    params = jax.tree.map(lambda p: p + 0.3 * np.random.default_rng(2).normal(size=p.shape).astype(np.float32), params)
    return model, {"params": params}, x, labels


@functools.lru_cache(maxsize=None)
def jitted(model, method, static=()):
    """``model.apply(variables, *args, method=method)`` under jit (eager Flax is slow on CPU)."""
    return jax.jit(functools.partial(model.apply, method=method), static_argnums=static)


def test_call_shapes_and_prior_samples():
    model, v, x, labels = tiny()
    recon, mean, logvar, z = jitted(model, "__call__")(v, x, jax.random.key(3))
    assert recon.shape == x.shape and mean.shape == logvar.shape == z.shape == (6, 3)
    s = jitted(model, "sample", (2,))(v, jax.random.key(4), 5)
    assert s.shape == (5, *SHAPE) and float(s.min()) >= 0 and float(s.max()) <= 1


def test_iwae_k1_is_the_single_sample_elbo_with_the_same_key():
    model, v, x, _ = tiny()
    key = jax.random.key(5)
    got = jitted(model, "negative_iwae", (3,))(v, x, key, 1)
    mean, logvar = jitted(model, "encode")(v, x)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(jax.random.fold_in(key, 0), mean.shape)
    log_px = jitted(model, "log_likelihood")(v, jitted(model, "decode")(v, z), x)
    mc_elbo = log_px - (L.gaussian_log_density(z, mean, logvar) - L.gaussian_log_density(z, 0.0, 0.0))
    np.testing.assert_allclose(got, -mc_elbo, rtol=1e-5)


def test_iwae_bound_rises_with_k_and_exceeds_the_elbo():
    model, v, x, labels = tiny(True)  # the CVAE: a plain VAE with a learned prior mean
    n = 1200  # samples per image, regrouped into n/k independent L_k estimates for each k
    log_w = np.asarray(jitted(model, "log_weights", (3,))(v, x, jax.random.key(6), n, labels), np.float64)  # [n, B]
    keys = jax.random.split(jax.random.key(7), n)
    nelbo = jax.jit(jax.vmap(lambda k: model.apply(v, x, k, labels, method="negative_elbo")))(keys)  # [n, B]
    analytic = -np.asarray(nelbo, np.float64)
    # E[log w] is the ELBO; the analytic-KL estimator has the same expectation
    se = np.hypot(log_w.std(0), analytic.std(0)) / np.sqrt(n)
    assert np.all(np.abs(log_w.mean(0) - analytic.mean(0)) < 5 * se)
    analytic_elbo = analytic.mean(0)
    means, errs = [], []
    for k in (1, 2, 5, 20, 60):
        est = np.asarray(L.iwae_bound(log_w.reshape(n // k, k, -1).transpose(1, 0, 2).reshape(k, -1)))
        est = est.reshape(n // k, -1).mean(1)  # average over the batch, per group
        means.append(est.mean())
        errs.append(est.std(ddof=1) / np.sqrt(len(est)))
    for i in range(len(means) - 1):  # weakly increasing, within MC noise
        assert means[i + 1] >= means[i] - 3 * np.hypot(errs[i], errs[i + 1])
    assert means[-1] > means[0]  # strictly better at k = 60 than k = 1 on this model
    assert means[-1] >= analytic_elbo.mean() - 3 * errs[-1]


def nelbo_at(model, v, x, z, labels):
    """−ELBO with the posterior sample ``z`` given: a deterministic function of each example."""
    mean, logvar = model.apply(v, x, method="encode")
    log_px = model.apply(v, model.apply(v, z, method="decode"), x, method="log_likelihood")
    return -L.elbo(log_px, mean, logvar, model.apply(v, labels, method="prior_mean"))


def test_batch_loss_is_the_mean_of_vmapped_per_example_losses():
    model, v, x, labels = tiny(True)
    z = jax.random.normal(jax.random.key(8), (6, 3))
    batched = jax.jit(lambda v, x, z, y: nelbo_at(model, v, x, z, y))(v, x, z, labels)
    single = jax.vmap(lambda xi, zi, yi: nelbo_at(model, v, xi[None], zi[None], yi[None])[0])(x, z, labels)
    np.testing.assert_allclose(batched, single, rtol=1e-5)
    np.testing.assert_allclose(jnp.mean(batched), jnp.mean(single), rtol=1e-6)
    # the model's own sampled loss: jit and eager agree, same key -> same value
    key = jax.random.key(9)
    a = jitted(model, "negative_elbo")(v, x, key, labels)
    b = jax.jit(lambda v, x, y: model.apply(v, x, key, y, method="negative_elbo"))(v, x, labels)
    np.testing.assert_array_equal(a, b)
    c = jitted(model, "negative_iwae", (3,))(v, x, key, 4, labels)
    one = lambda xi, yi: model.apply(v, xi[None], key, 4, yi[None], method="log_weights")[:, 0]  # noqa: E731
    d = jax.jit(jax.vmap(one, out_axes=1))(x, labels)
    assert c.shape == (6,) and d.shape == (4, 6) and np.all(np.isfinite(d))
    # example 0 draws the same noise alone as in the batch (the first row of each fold_in(key, i) draw)
    np.testing.assert_allclose(c[0], -L.iwae_bound(d[:, :1])[0], rtol=1e-5)


def test_dequantised_input_and_its_bits_per_dim():
    images = np.array([[0, 255], [128, 7]], np.uint8).reshape(1, 2, 2, 1)
    y = np.asarray(task.model_input(images, jax.random.key(0), "none"))
    assert np.all(y >= images / 256) and np.all(y < (images.astype(np.float64) + 1) / 256)
    b = np.asarray(task.model_input(np.full((500, 1, 1, 1), 64, np.uint8), jax.random.key(1), "dynamic"))
    assert set(np.unique(b)) == {0.0, 1.0} and abs(b.mean() - 64 / 255) < 0.07
    fixed = task.binarize_once(np.full((4, 2, 2, 1), 200, np.uint8), 0)
    np.testing.assert_array_equal(fixed, task.binarize_once(np.full((4, 2, 2, 1), 200, np.uint8), 0))


def test_gaussian_decoder_learns_a_per_pixel_scale():
    model, v, x, _ = tiny(likelihood="gaussian")
    assert v["params"]["pixel_log_scale"].shape == SHAPE
    loss = lambda p: model.apply({"params": p}, x, jax.random.key(0), method="negative_elbo").mean()  # noqa: E731
    g = jax.jit(jax.grad(loss))(v["params"])
    assert float(jnp.abs(g["pixel_log_scale"]).sum()) > 0
    # scale="decoder": the decoder predicts means and log-scales (2C channels)
    d = VAE(MLPEncoder(3, (16,)), MLPDecoder((4, 4, 2), (16,)), SHAPE, 3, likelihood="gaussian", scale="decoder")
    vd = jax.jit(d.init)(jax.random.key(0), x, jax.random.key(1))
    recon, *_ = jitted(d, "__call__")(vd, x, jax.random.key(2))
    assert recon.shape == (6, 4, 4, 2) and "pixel_log_scale" not in vd["params"]
    mean, log_scale = d.apply(vd, recon, method="gaussian_params")
    assert mean.shape == log_scale.shape == x.shape and float(jnp.abs(log_scale).max()) < 8.0
    ll = d.apply(vd, recon, x, method="log_likelihood")
    np.testing.assert_allclose(ll, L.gaussian_log_likelihood(mean, x, log_scale), rtol=1e-6)
    assert jitted(d, "sample", (2,))(vd, jax.random.key(3), 2).shape == (2, *SHAPE)


def test_conv_encoder_decoder_shapes():
    enc, dec = ConvEncoder(5, 4, 2), ConvDecoder((28, 28, 1), 4, 2)
    x = jnp.zeros((2, 28, 28, 1))
    (mean, logvar), pe = jax.jit(enc.init_with_output)(jax.random.key(0), x)
    assert mean.shape == logvar.shape == (2, 5)
    assert pe["params"]["Conv_0"]["kernel"].shape[-1] == 8 and pe["params"]["Conv_2"]["kernel"].shape[-1] == 16
    out, _ = jax.jit(dec.init_with_output)(jax.random.key(0), mean)
    assert out.shape == (2, 28, 28, 1)


@pytest.mark.parametrize("variant", ["smoke", "conv_smoke", "cvae_smoke", "iwae_smoke"])
def test_smoke_configs_train_and_evaluate(variant, tmp_path, data_dir):
    """The step ``zoo train`` runs: finite losses; evaluation: finite nats and bits/dim, grids."""
    config = vae.get_config(variant)
    config.train.num_steps = 3
    if variant == "conv_smoke":
        config.data.test_limit = 25
    t = task.get_task(config, tmp_path)
    mesh = parallel.data_mesh(1)
    state = init_state(t, jax.random.key(0), mesh)
    step = make_train_step(t, mesh)
    batches = t.train_batches(0)
    for _ in range(config.train.num_steps):
        state, metrics = step(state, parallel.shard_batch(next(batches), mesh), jax.random.key(1))
        assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["bpd"]))
    ev = t.evaluate(state.params)
    assert set(ev) == {"test_nelbo", "test_nelbo_bpd", "test_iwae3", "test_iwae3_bpd"}
    assert all(np.isfinite(v) for v in ev.values())
    assert ev["test_iwae3"] <= ev["test_nelbo"] + 0.05 * abs(ev["test_nelbo"])
    assert 0 < ev["test_nelbo_bpd"] < 1.5  # untrained: about 1 bit per binary pixel
    assert (tmp_path / "samples.png").stat().st_size > 0 and (tmp_path / "reconstructions.png").stat().st_size > 0
    assert ev == t.evaluate(state.params)  # fixed noise: the evaluation is reproducible


@pytest.mark.parametrize("scale", ["decoder", "pixel"])
def test_discretized_logistic_decoder_trains_and_evaluates(scale, tmp_path, data_dir):
    """``model.likelihood="logistic"`` on dequantised pixels: finite steps and bounds, and the
    decoder's output carries a log-scale channel per pixel when ``scale="decoder"``."""
    config = vae.get_config("gaussian_smoke")
    config.model.update(likelihood="logistic", scale=scale)
    config.train.num_steps = 3
    t = task.get_task(config, tmp_path)
    mesh = parallel.data_mesh(1)
    state = init_state(t, jax.random.key(0), mesh)
    out = state.params["decoder"]["out"]["kernel"].shape[-1]
    assert out == (2 * 784 if scale == "decoder" else 784)
    step = make_train_step(t, mesh)
    batches = t.train_batches(0)
    for _ in range(config.train.num_steps):
        state, metrics = step(state, parallel.shard_batch(next(batches), mesh), jax.random.key(1))
        assert np.isfinite(float(metrics["loss"]))
    ev = t.evaluate(state.params)
    assert all(np.isfinite(v) for v in ev.values()) and ev["test_nelbo_bpd"] > 0


def test_batches_resume_exactly(data_dir):
    t = task.get_task(vae.get_config("smoke"), None)
    a = t.train_batches(0)
    first = [next(a) for _ in range(30)]
    again = next(t.train_batches(27))
    np.testing.assert_array_equal(again["images"], first[27]["images"])
    np.testing.assert_array_equal(again["labels"], first[27]["labels"])


def test_configs_and_variants():
    assert vae.get_config("").model.hidden == (256,) and vae.get_config("").model.latent_dim == 2
    assert vae.get_config("cvae").model.conditional and vae.get_config("iwae").loss.iwae_k == 5
    assert vae.get_config("conv").model.kind == "conv" and vae.get_config("gaussian").data.binarize == "none"
    assert tuple(vae.get_config("").eval.iwae_k) == (5, 50)
    f = vae.get_config("fashion")
    assert (f.data.name, f.model.likelihood) == ("fashion_mnist", "gaussian")
    with pytest.raises(ValueError, match="unknown variant 'big'"):
        vae.get_config("big")


def test_clamp_defaults_to_hard_and_old_run_configs_load_soft():
    """New configs clip (the soft clamp drifts under Adam, docs/vae/long_runs.md); a config
    saved before ``model.clamp`` existed was trained with the soft clamp and rebuilds with it."""
    c = vae.get_config("smoke")
    assert c.model.clamp == "hard" and task.make_model(c, SHAPE).clamp == "hard"
    del c.model["clamp"]
    assert task.make_model(c, SHAPE).clamp == "soft"


def test_bad_inputs_raise_clear_errors(data_dir):
    model, v, x, _ = tiny()
    with pytest.raises(ValueError, match=r"VAE: `x` must be images \[B, 4, 4, 1\]"):
        model.apply(v, x[..., 0], jax.random.key(0))
    with pytest.raises(ValueError, match="VAE: `x` must be floating point"):
        model.apply(v, x.astype(np.uint8), jax.random.key(0))
    cmodel, cv, _, _ = tiny(True)
    with pytest.raises(ValueError, match="CVAE: `labels` must be"):
        cmodel.apply(cv, x, jax.random.key(0), None, method="negative_elbo")
    with pytest.raises(ValueError, match="`likelihood` must be one of"):
        bad = VAE(MLPEncoder(2), MLPDecoder(SHAPE), SHAPE, 2, likelihood="poisson")
        bad.init(jax.random.key(0), x, jax.random.key(0))
    with pytest.raises(ValueError, match=r"VAE: `clamp` must be one of \('soft', 'hard'\); got 'tanh'"):
        bad = VAE(MLPEncoder(2), MLPDecoder(SHAPE), SHAPE, 2, clamp="tanh")
        bad.init(jax.random.key(0), x, jax.random.key(0))
    c = vae.get_config("smoke")
    c.data.binarize = "none"
    with pytest.raises(ValueError, match=r"`config.model.likelihood` must be one of \('gaussian', 'logistic'\) with data.binarize='none'"):
        task.get_task(c, None)
    c = vae.get_config("smoke")
    c.data.binarize = "sometimes"
    with pytest.raises(ValueError, match="`config.data.binarize` must be one of"):
        task.get_task(c, None)
    c = vae.get_config("smoke")
    c.model.kind = "rnn"
    with pytest.raises(ValueError, match="`config.model.kind` must be one of"):
        task.get_task(c, None)



def test_clamp_applies_to_both_log_variances():
    """``clamp="hard"`` clips the encoder's log-variance and the decoder's log-scales to their
    bounds (here the median raw magnitude, so that half the values pass it); ``"soft"`` is
    ``bound·tanh(raw/bound)``."""
    model, v, x, _ = tiny()
    _, raw = model.apply(v, x, method=lambda mod, x: mod.encoder(x))
    bound = float(np.median(np.abs(raw)))
    for clamp in ("soft", "hard"):
        _, logvar = model.clone(clamp=clamp, logvar_bound=bound).apply(v, x, method="encode")
        want = np.clip(raw, -bound, bound) if clamp == "hard" else bound * np.tanh(raw / bound)
        np.testing.assert_allclose(logvar, want, rtol=1e-6, atol=1e-6)
    g = VAE(MLPEncoder(3, (16,)), MLPDecoder((*SHAPE[:2], 2), (16,)), SHAPE, 3, likelihood="gaussian",
            scale="decoder", log_scale_bound=0.5, clamp="hard")  # fmt: skip
    recon = np.random.default_rng(3).normal(0, 3, (6, *SHAPE[:2], 2)).astype(np.float32)
    mean, log_scale = g.gaussian_params(recon)
    np.testing.assert_array_equal(log_scale, np.clip(recon[..., 1:], -0.5, 0.5))
    np.testing.assert_array_equal(mean, recon[..., :1])


def test_cosine_schedule_decays_the_learning_rate_to_zero():
    """``optim.schedule="cosine"``: Adam's first step moves a parameter by the full learning rate,
    the step at ``train.num_steps`` by nothing; ``"constant"`` keeps it; unknown names fail."""
    c = vae.get_config("smoke")
    c.train.num_steps = 10
    sizes = {}
    for schedule in ("constant", "cosine"):
        c.optim.schedule = schedule
        tx = task.make_optimizer(c)
        params = jnp.zeros(3)
        state = tx.init(params)
        steps = []
        for _ in range(11):
            updates, state = tx.update(jnp.ones(3), state, params)
            steps.append(float(jnp.abs(updates).max()))
        sizes[schedule] = steps
    lr = c.optim.learning_rate
    assert sizes["constant"][0] == pytest.approx(lr, rel=1e-4) and sizes["constant"][10] == pytest.approx(lr, rel=1e-4)
    assert sizes["cosine"][0] == pytest.approx(lr, rel=1e-4) and sizes["cosine"][10] == 0.0
    assert sizes["cosine"][5] == pytest.approx(lr / 2, rel=1e-3)  # half way down the cosine
    c.optim.schedule = "linear"
    with pytest.raises(ValueError, match="`config.optim.schedule` must be one of"):
        task.make_optimizer(c)
