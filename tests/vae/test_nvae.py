"""NVAE: the residual KL against the general Gaussian KL and Monte Carlo, NVlabs's KL balancer
and spectral regulariser against transcriptions / the SVD, the model's passes on a tiny
configuration, the task's update and evaluation, BatchNorm re-estimation, and bad inputs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.core.train import TrainState
from zoo.vae import nvae, nvae_task
from zoo.vae.configs import nvae as nvae_configs


def general_kl(mq, sq, mp, sp):
    """KL(N(mq, sq²) ‖ N(mp, sp²)) per element, scales (not logs), summed over all but axis 0."""
    t = np.log(sp / sq) + (sq**2 + (mq - mp) ** 2) / (2 * sp**2) - 0.5
    return t.reshape(t.shape[0], -1).sum(-1)


def test_residual_kl_equals_the_gaussian_kl_and_its_monte_carlo_estimate():
    rng = np.random.default_rng(0)
    mp, lsp, dm, dls = (rng.normal(size=(3, 2, 2, 4)).astype(np.float32) * s for s in (1.0, 0.5, 1.0, 0.4))
    kl = nvae.residual_gaussian_kl(dm, dls, lsp)
    np.testing.assert_allclose(kl, general_kl(mp + dm, np.exp(lsp + dls), mp, np.exp(lsp)), rtol=1e-5)
    # Monte Carlo: E_q[log q(z) − log p(z)]
    eps = jax.random.normal(jax.random.key(0), (20000, *mp.shape))
    z = mp + dm + np.exp(lsp + dls) * eps
    log_q = jax.vmap(lambda z: nvae.normal_log_density(z, mp + dm, lsp + dls))(z)
    log_p = jax.vmap(lambda z: nvae.normal_log_density(z, mp, lsp))(z)
    diff = np.asarray(log_q - log_p)
    np.testing.assert_allclose(diff.mean(0), kl, atol=4 * diff.std(0).max() / np.sqrt(len(diff)))
    # the first group's prior N(0, I): the plain VAE's KL
    np.testing.assert_allclose(nvae.residual_gaussian_kl(dm, dls, 0.0), general_kl(dm, np.exp(dls), 0.0, 1.0), rtol=1e-5)


def nvlabs_kl_balancer(kl_all, kl_coeff, alpha):
    """NVlabs/NVAE utils.kl_balancer with kl_balance=True, in numpy (for kl_coeff < 1)."""
    kl_coeff_i = np.abs(kl_all).mean(0, keepdims=True) + 0.01
    total = kl_coeff_i.sum()
    kl_coeff_i = kl_coeff_i / alpha[None] * total
    kl_coeff_i = kl_coeff_i / kl_coeff_i.mean(1, keepdims=True)
    return kl_coeff * (kl_all * kl_coeff_i).sum(1)


def test_kl_balancer_and_weights_follow_nvlabs():
    np.testing.assert_allclose(nvae.kl_balance_weights((2, 2)), [1, 1, 4, 4])
    np.testing.assert_allclose(nvae.kl_balance_weights((1, 2)), [1, 2, 2])  # 4**1 / 2 groups, over min 1
    kl = np.abs(np.random.default_rng(1).normal(size=(5, 4))).astype(np.float32) * [1, 10, 3, 0.1]
    w = nvae.kl_balance_weights((2, 2))
    np.testing.assert_allclose(nvae.kl_balancer(kl, 0.3, w), nvlabs_kl_balancer(kl, 0.3, w), rtol=1e-5)
    np.testing.assert_allclose(nvae.kl_balancer(kl, 1.0, w), kl.sum(1), rtol=1e-6)  # no balancing at beta = 1
    np.testing.assert_allclose(nvae.kl_balancer(kl, 0.3, w, balance=False), 0.3 * kl.sum(1), rtol=1e-6)
    # the coefficients carry no gradient: d/dkl is beta·c
    g = jax.grad(lambda k: jnp.sum(nvae.kl_balancer(k, 0.3, w)))(jnp.asarray(kl))
    coeff = np.asarray(g[0]) / 0.3
    np.testing.assert_allclose(np.asarray(g), np.broadcast_to(0.3 * coeff, kl.shape), rtol=1e-6)
    np.testing.assert_allclose(coeff.mean(), 1.0, rtol=1e-5)


def test_spectral_regulariser_converges_to_the_largest_singular_values_with_their_gradient():
    rng = np.random.default_rng(2)
    params = {"a": {"kernel": rng.normal(size=(3, 3, 4, 5)).astype(np.float32)},
              "b": {"kernel": rng.normal(size=(5, 5, 1, 6)).astype(np.float32), "bias": np.zeros(6, np.float32)},
              "dense": {"kernel": rng.normal(size=(4, 4)).astype(np.float32)}}  # fmt: skip
    u = nvae.init_power_vectors(params, jax.random.key(0))
    assert sorted(u) == ["a/kernel", "b/kernel"]  # convolutions only
    total, u = nvae.spectral_regulariser(params, u, num_iters=200)
    mats = nvae.spectral_matrices(params)
    sv = {k: np.linalg.svd(np.asarray(m)) for k, m in mats.items()}
    np.testing.assert_allclose(total, sum(s[1][0] for s in sv.values()), rtol=1e-4)
    grad = jax.grad(lambda p: nvae.spectral_regulariser(p, u, 1)[0])(params)
    left, _, right = sv["a/kernel"]
    expect = np.outer(left[:, 0], right[0])  # d sigma_max / dW = u1 v1^T (the SVD's sign choice cancels)
    got = np.asarray(grad["a"]["kernel"]).reshape(-1, 5).T
    np.testing.assert_allclose(got, expect, atol=1e-5)
    assert float(jnp.sum(jnp.abs(grad["dense"]["kernel"]))) == 0.0
    # a zero-initialised kernel keeps its power vector, so its sigma counts once it is non-zero
    zero = {"k": {"kernel": np.zeros((1, 1, 2, 3), np.float32)}}
    u0 = nvae.init_power_vectors(zero, jax.random.key(1))
    sigma, u1 = nvae.spectral_regulariser(zero, u0, num_iters=2)
    assert float(sigma) == 0.0 and np.allclose(u1["k/kernel"], u0["k/kernel"])
    grown = {"k": {"kernel": np.ones((1, 1, 2, 3), np.float32)}}
    sigma, _ = nvae.spectral_regulariser(grown, u1, num_iters=3)
    assert float(sigma) == pytest.approx(np.sqrt(6.0), rel=1e-5)  # ones(3, 2): sigma_max = sqrt(6)
    with pytest.raises(ValueError, match="spectral_regulariser: `power_vectors` must be one vector per convolution"):
        nvae.spectral_regulariser(params, {"a/kernel": u["a/kernel"]})


def test_batchnorm_scale_regulariser_sums_the_largest_scale_per_layer():
    params = {"cell": {"BatchNorm_0": {"scale": jnp.asarray([0.5, -2.0]), "bias": jnp.ones(2)},
                       "BatchNorm_1": {"scale": jnp.asarray([1.5])}, "Conv_0": {"kernel": 9 * jnp.ones((1, 1, 1, 1))}}}  # fmt: skip
    assert float(nvae.batchnorm_scale_regulariser(params)) == pytest.approx(3.5)


@functools.lru_cache(maxsize=None)
def tiny(likelihood="bernoulli"):
    model = nvae.NVAE(image_shape=(8, 8, 1), channels=4, latent_channels=2, groups_per_scale=(1, 2), expand=1,
                      pre_cells=0, likelihood=likelihood)  # fmt: skip
    x = (np.random.default_rng(0).random((3, 8, 8, 1)) < 0.4).astype(np.float32)
    variables = jax.jit(model.init)(jax.random.key(0), x, jax.random.key(1))
    return model, variables, x


def perturbed(variables, scale=0.3):
    leaves, tree = jax.tree.flatten(variables["params"])
    rng = np.random.default_rng(3)
    noisy = [p + scale * rng.normal(size=p.shape).astype(np.float32) for p in leaves]
    return {**variables, "params": jax.tree.unflatten(tree, noisy)}


@functools.lru_cache(maxsize=None)
def jitted_pass(model):
    return jax.jit(lambda v, x, key: model.apply(v, x, key, mutable=["batch_stats"])[0])


def test_passes_shapes_and_the_zero_initialised_start():
    model, v, x = tiny()
    assert model.latent_shapes() == [(2, 2, 2), (4, 4, 2), (4, 4, 2)]
    out, kl, log_ratio = jitted_pass(model)(v, x, jax.random.key(2))
    assert out.shape == (3, 8, 8, 1) and kl.shape == (3, 3) and log_ratio.shape == (3,)
    np.testing.assert_allclose(kl, 0.0, atol=1e-6)  # q = p at initialisation
    np.testing.assert_allclose(log_ratio, 0.0, atol=1e-4)
    np.testing.assert_allclose(out, 0.0, atol=1e-6)  # fair-coin decoder
    pv = perturbed(v)
    _, kl, log_ratio = jitted_pass(model)(pv, x, jax.random.key(2))
    assert np.all(np.asarray(kl) > 0) and np.all(np.isfinite(log_ratio))
    sample = jax.jit(lambda v, key: model.apply(v, key, 5, 0.7, method="sample", mutable=["batch_stats"])[0])
    samples = sample(pv, jax.random.key(4))
    assert samples.shape == (5, 8, 8, 1) and 0 <= float(samples.min()) and float(samples.max()) <= 1


def test_model_kl_is_the_expected_log_ratio():
    """The analytic per-group KLs (floored scales, clamped residuals) against Monte Carlo:
    E_q[Σ_l KL_l] = E_q[log q(z) − log p(z)] = −E_q[log_ratio] over draws of the whole hierarchy."""
    model, v, x = tiny()
    v = perturbed(v, 0.2)
    ev = model.clone(train=False)
    draws = jax.jit(jax.vmap(lambda k: ev.apply(v, x, k, method="terms")[1:]))(jax.random.split(jax.random.key(7), 4000))
    kl, ratio = np.asarray(draws[0]).sum(-1), -np.asarray(draws[1])  # [draws, B]
    diff = ratio - kl
    assert np.all(kl.mean(0) > 1.0)
    np.testing.assert_allclose(diff.mean(0), 0.0, atol=4 * diff.std(0).max() / np.sqrt(len(diff)) + 1e-3)


def test_eval_mode_is_batch_independent():
    model, v, x = tiny()
    v = perturbed(v)
    ev = model.clone(train=False)
    terms = jax.jit(lambda v, x: ev.apply(v, x, jax.random.key(5), method="terms"))
    full, one = terms(v, x), terms(v, x[:2])
    # running averages, and (partitionable threefry) the first rows draw the same noise in both
    # batches: a row's terms do not depend on the rest of the batch
    for a, b in zip(full, one):
        np.testing.assert_allclose(a[:2], b, rtol=1e-4, atol=1e-3)


def test_smoke_task_updates_and_evaluates(tmp_path):
    c = nvae_configs.get_config("smoke")
    c.data.test_limit = 25
    c.eval.update(num_samples=4, num_reconstructions=4)
    t = nvae_task.get_task(c, tmp_path)
    key = jax.random.key(0)
    params = t.init(key)
    state = TrainState(jnp.zeros((), jnp.int32), params, t.optimizer.init(params), t.init_model_state(key))
    update = jax.jit(t.update)
    batches = t.train_batches(0)
    for i in range(2):
        state, m = update(state, next(batches), jax.random.key(i))
        assert np.isfinite(float(m["loss"])) and int(state.step) == i + 1
        assert float(m["beta"]) == pytest.approx(min(max(i / 1.0, 1e-4), 1.0))  # kl warm-up over 30% of 4 steps
    ev = t.evaluate({"params": state.params, "model_state": state.model_state})
    assert set(ev) == {"test_nelbo", "test_nelbo_bpd", "test_iwae3", "test_iwae3_bpd"}
    assert all(np.isfinite(v) for v in ev.values()) and ev["test_iwae3"] <= ev["test_nelbo"] + 1.0
    assert (tmp_path / "samples_t1.png").stat().st_size > 0 and (tmp_path / "reconstructions.png").stat().st_size > 0
    # BatchNorm re-estimation (the pass evaluate compiled): only the decoder's statistics move,
    # the encoder's come back bit for bit, whatever the number of batches
    model = nvae_task.make_model(c)
    v = {"params": state.params, "batch_stats": state.model_state["batch_stats"]}
    stats = nvae_task.readjust_batch_stats(model, v, jax.random.key(0), 1.0, 3, c.eval.num_samples)
    assert jax.tree.structure(stats) == jax.tree.structure(v["batch_stats"])
    old = v["batch_stats"]
    np.testing.assert_array_equal(old["down_0"]["BatchNorm_0"]["mean"], stats["down_0"]["BatchNorm_0"]["mean"])
    assert not np.allclose(old["up_1"]["BatchNorm_0"]["mean"], stats["up_1"]["BatchNorm_0"]["mean"])
    with pytest.raises(ValueError, match="`num_batches` must be an integer >= 1"):
        nvae_task.readjust_batch_stats(model, v, jax.random.key(0), 1.0, 0, 4)


def test_configs_and_bad_inputs():
    assert nvae_configs.get_config("").data.name == "fashion_mnist"
    assert nvae_configs.get_config("mnist").model.likelihood == "bernoulli"
    with pytest.raises(ValueError, match="unknown variant 'big'"):
        nvae_configs.get_config("big")
    x = jnp.zeros((2, 8, 8, 1))
    with pytest.raises(ValueError, match=r"NVAE: `image_shape` must be H and W divisible by 2\*\*len\(groups_per_scale\) = 8"):
        nvae.NVAE(image_shape=(12, 12, 1), groups_per_scale=(1, 1, 1)).init(jax.random.key(0), jnp.zeros((2, 12, 12, 1)), jax.random.key(0))
    with pytest.raises(ValueError, match=r"NVAE: `groups_per_scale` must be a non-empty tuple"):
        nvae.NVAE(image_shape=(8, 8, 1), groups_per_scale=()).init(jax.random.key(0), x, jax.random.key(0))
    with pytest.raises(ValueError, match=r"NVAE: `x` must be images \[B, 8, 8, 1\]; got shape \(2, 8, 8\)"):
        nvae.NVAE(image_shape=(8, 8, 1), channels=4).init(jax.random.key(0), x[..., 0], jax.random.key(0))
    for field, value, message in [
        ("loss.kl_min", 0.0, r"`config.loss.kl_min` must be a value in \(0, 1\]"),
        ("loss.power_iters", 0, r"`config.loss.power_iters` must be an integer >= 1"),
        ("model.likelihood", "'gaussian'", r"`config.model.likelihood` must be 'bernoulli' with data.binarize='dynamic'"),
        ("eval.temperatures", (0.0,), r"`config.eval.temperatures / iwae_k` must be temperatures > 0"),
        ("model.bn_momentum", 1.0, r"`config.model.bn_momentum` must be a value in \[0, 1\)"),
    ]:
        c = nvae_configs.get_config("mnist_smoke")
        section, name = field.split(".")
        c[section][name] = value if not isinstance(value, str) else value.strip("'")
        with pytest.raises(ValueError, match="nvae task: " + message):
            nvae_task.check_config(c)
    c = nvae_configs.get_config("smoke")  # dequantised pixels: NVAE has no logistic decoder (the VAE has)
    c.model.likelihood = "logistic"
    with pytest.raises(ValueError, match=r"nvae task: `config.model.likelihood` must be 'gaussian' with data.binarize='none'"):
        nvae_task.check_config(c)


def test_remat_gives_the_same_loss_and_gradients():
    model = nvae.NVAE(image_shape=(4, 4, 1), channels=2, latent_channels=1, groups_per_scale=(1,), pre_cells=0,
                      post_cells=0, expand=1)  # fmt: skip
    x = jnp.asarray(np.random.default_rng(4).random((2, 4, 4, 1)) < 0.5, jnp.float32)
    v = perturbed(jax.jit(model.init)(jax.random.key(0), x, jax.random.key(1)), 0.1)

    def loss(m):
        def f(params):
            (ll, kl, _), _ = m.apply({**v, "params": params}, x, jax.random.key(3), method="terms",
                                     mutable=["batch_stats"])  # fmt: skip
            return jnp.mean(-ll + jnp.sum(kl, -1))

        return jax.jit(jax.value_and_grad(f))(v["params"])

    (a, ga), (b, gb) = loss(model), loss(model.clone(remat=True))
    np.testing.assert_allclose(a, b, rtol=1e-5)
    for p, q in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(p, q, rtol=1e-4, atol=1e-5)
