"""zoo.gan.train: the single-loss step's gradients and update, the alternating step's order
and batches, the idle player's optimiser state, the constraint and EMA, every loss on the
smoke DCGAN, and no recompilation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax import lax

from tests.helpers import count_compilations, optimised_jit
from zoo.core.train import TrainState
from zoo.gan import losses, penalties
from zoo.gan.configs import dcgan
from zoo.gan.models import MLPDiscriminator, MLPGenerator
from zoo.gan.train import (
    init_variables,
    make_optimizer,
    make_players,
    make_spec,
    make_update,
    spectral_constraint,
    spectral_norm_from_ones,
    update_player,
)


def gan_config(**overrides):
    c = dcgan.get_config("smoke").gan
    c.update(**overrides)
    return c


def adam_optim():
    adam = dict(name="adam", learning_rate=1e-2, b1=0.5, b2=0.9, decay=0.9)
    return ml_collections.ConfigDict(dict(g=adam, d=dict(adam, learning_rate=3e-3)))


def tiny_mlp_gan(rng, shape=(4, 4, 1), z_dim=3, batch=6):
    modules = (MLPGenerator(shape, hidden=(8,)), MLPDiscriminator(hidden=(8,)))
    players = make_players(*modules, z_dim)
    params, model_state = init_variables(modules, jax.random.key(0), shape, z_dim)
    real = jnp.asarray(rng.uniform(-1, 1, size=(batch, *shape)), jnp.float32)
    return players, params, model_state, real


@pytest.mark.parametrize("loss,penalty", [("hinge", "none"), ("rasgan", "wgan_gp")])
def test_single_loss_gradients_and_update_equal_the_two_separate_losses(rng, loss, penalty):
    players, params, ms, real = tiny_mlp_gan(rng)
    lam = 0.7
    spec = make_spec(players, gan_config(loss=loss, update_mode="single", penalty=penalty, single_loss_weight=lam))
    # eps = 1e-3 keeps Adam's update Lipschitz in the gradient: some gradients are exactly 0
    # (D's output bias under rasgan, whose D loss only sees differences), and Adam with a
    # tiny eps turns their float rounding into ±lr steps of either sign.
    tx = optax.partition({"g": optax.adam(1e-2, eps=1e-3), "d": optax.adam(3e-3, eps=1e-3)}, {"g": "g", "d": "d"})
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), ms)
    key = jax.random.key(3)
    new_state, metrics = jax.jit(make_update(spec, tx))(state, {"images": real}, key)

    # The same draws as the step: z from the first half of split(key), the penalty's from the second.
    k_z, k_pen = jax.random.split(key)
    z = players.sample_z(k_z, real.shape[0])
    gan_loss = losses.get_loss(loss)

    def discriminate(pd, x):
        return players.discriminate(pd, {}, x)[0]

    def loss_d(pd):
        fake = lax.stop_gradient(players.generate(params["g"], {}, z)[0])
        d_fn = lambda x: discriminate(pd, x)  # noqa: E731
        pen = penalties.wgan_gp(d_fn, k_pen, real, fake, weight=10.0) if penalty == "wgan_gp" else 0.0
        return gan_loss.d_loss(discriminate(pd, real), discriminate(pd, fake)) + pen

    def loss_g(pg):
        fake = players.generate(pg, {}, z)[0]
        return lam * gan_loss.g_loss(discriminate(params["d"], real), discriminate(params["d"], fake))

    grads = {"d": jax.grad(loss_d)(params["d"]), "g": jax.grad(loss_g)(params["g"])}
    updates, _ = tx.update(grads, tx.init(params), params)
    want = optax.apply_updates(params, updates)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), new_state.params, want)
    np.testing.assert_allclose(metrics["loss_g"] * lam, loss_g(params["g"]), rtol=1e-6)

    # With SGD(1) the update *is* minus the gradient: compare the gradients themselves.
    sgd = optax.partition({"g": optax.sgd(1.0), "d": optax.sgd(1.0)}, {"g": "g", "d": "d"})
    sgd_state = TrainState(jnp.zeros((), jnp.int32), params, sgd.init(params), ms)
    moved = jax.jit(make_update(spec, sgd))(sgd_state, {"images": real}, key)[0].params
    got = jax.tree.map(lambda old, new: old - new, params, moved)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), got, grads)


class LinearGenerator(nn.Module):
    """x = a·z + c, one pixel."""

    @nn.compact
    def __call__(self, z, train=True):
        a = self.param("a", nn.initializers.zeros, ())
        c = self.param("c", nn.initializers.constant(0.25), ())
        return (a * z[:, :1] + c).reshape(-1, 1, 1, 1)


class LinearDiscriminator(nn.Module):
    """D(x) = w·x + b."""

    @nn.compact
    def __call__(self, x, train=True):
        w = self.param("w", nn.initializers.constant(0.5), ())
        b = self.param("b", nn.initializers.constant(0.1), ())
        return w * x.reshape(-1) + b


def test_alternating_step_updates_d_n_critic_times_on_its_batches_then_g_against_the_new_d():
    # WGAN with SGD(η): ∂/∂w = mean(fake) − mean(real_i) = c − mean(real_i) (a = 0 so every
    # fake is c), ∂/∂b = 0; then G: ∂/∂c = −w_new. Distinct batch means pin the order.
    modules = (LinearGenerator(), LinearDiscriminator())
    players = make_players(*modules, z_dim=1)
    params, ms = init_variables(modules, jax.random.key(0), (1, 1, 1), 1)
    eta = 0.1
    tx = optax.partition({"g": optax.sgd(eta), "d": optax.sgd(eta)}, {"g": "g", "d": "d"})
    spec = make_spec(players, gan_config(loss="wgan", n_critic=3, ema_decay=0.0))
    batches = np.array([1.0, 1.0, -2.0, -2.0, 0.5, 0.5], np.float32).reshape(6, 1, 1, 1)  # 3 critic batches of 2
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), ms)
    new = jax.jit(make_update(spec, tx))(state, {"images": batches}, jax.random.key(1))[0].params

    w, c = 0.5, 0.25
    for mean_real in (1.0, -2.0, 0.5):
        w -= eta * (c - mean_real)
    np.testing.assert_allclose(new["d"]["w"], w, rtol=1e-6)
    np.testing.assert_allclose(new["d"]["b"], 0.1, rtol=1e-6)
    np.testing.assert_allclose(new["g"]["c"], c + eta * w, rtol=1e-6)


def test_a_player_update_leaves_the_other_players_params_and_adam_state_alone(rng):
    players, params, ms, real = tiny_mlp_gan(rng)
    tx = make_optimizer(adam_optim())
    opt_state = tx.init(params)
    grads_d = jax.tree.map(jnp.ones_like, params["d"])
    new_params, new_state = update_player(tx, opt_state, params, {"d": grads_d}, "d")
    jax.tree.map(np.testing.assert_array_equal, new_params["g"], params["g"])
    jax.tree.map(np.testing.assert_array_equal, new_state.inner_states["g"], opt_state.inner_states["g"])
    assert not np.allclose(new_params["d"]["Dense_0"]["kernel"], params["d"]["Dense_0"]["kernel"])
    with pytest.raises(ValueError, match=r"`grads` must have the keys \['g'\] of player 'g'; got \['d'\]"):
        update_player(tx, opt_state, params, {"d": grads_d}, "g")

    spec = make_spec(players, gan_config(loss="gan", n_critic=2))
    state = TrainState(jnp.zeros((), jnp.int32), params, opt_state, ms)
    images = jnp.concatenate([real, real])
    after = jax.jit(make_update(spec, tx))(state, {"images": images}, jax.random.key(0))[0]
    counts = {p: int(after.opt_state.inner_states[p].inner_state[0].count) for p in ("g", "d")}
    assert counts == {"g": 1, "d": 2}


def test_spectral_constraint_normalises_kernels_and_batchnorm_scales(rng):
    kernel = rng.normal(size=(4, 4, 3, 5)).astype(np.float32)
    sigma_max = np.linalg.svd(kernel.reshape(-1, 5), compute_uv=False)[0]
    # From a ones vector, 50 iterations converge on this random matrix (5 do approximately).
    np.testing.assert_allclose(spectral_norm_from_ones(jnp.asarray(kernel), 50), sigma_max, rtol=1e-4)
    params = {"Conv_0": {"kernel": kernel, "bias": np.ones(5, np.float32)}, "BatchNorm_1": {"scale": np.full(5, 2.0, np.float32)}}
    out = spectral_constraint(params, num_iters=50)
    np.testing.assert_allclose(np.linalg.svd(np.asarray(out["Conv_0"]["kernel"]).reshape(-1, 5), compute_uv=False)[0], 1.0, rtol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(out["BatchNorm_1"]["scale"]), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(out["Conv_0"]["bias"], params["Conv_0"]["bias"])


def test_bad_gan_settings_raise_clear_errors(rng):
    players, *_ = tiny_mlp_gan(rng)
    with pytest.raises(ValueError, match="gan.update_mode must be one of .*got 'both'"):
        make_spec(players, gan_config(update_mode="both"))
    with pytest.raises(ValueError, match="gan.n_critic must be 1; got 5"):
        make_spec(players, gan_config(update_mode="single", n_critic=5))
    with pytest.raises(ValueError, match="gan.penalty must be one of"):
        make_spec(players, gan_config(penalty="r2"))
    with pytest.raises(ValueError, match="get_loss: `name` must be one of"):
        make_spec(players, gan_config(loss="wasserstein"))


def test_every_loss_trains_the_smoke_dcgan_200_steps_without_nan():
    # One program for all losses: the loss is picked by a traced index (lax.switch), so it
    # compiles once and runs once per loss. (vmapping over the index was 5x slower on CPU:
    # the per-loss parameters turn each convolution into a grouped one, and a batched index
    # makes lax.switch evaluate every branch.)
    # Named as a relativistic loss so the generator term always receives D(real).
    config = dcgan.get_config("smoke")
    from zoo.gan.task import build

    (generator, discriminator, _), players, spec, tx = build(config)
    params, ms = init_variables((generator, discriminator), jax.random.key(0), (28, 28, 1), config.model.z_dim)
    names = list(losses.LOSSES)
    images = jax.random.uniform(jax.random.key(1), (8, 28, 28, 1), minval=-1, maxval=1)

    def run(index):
        loss = losses.GanLoss(
            "rasgan",
            lambda r, f: lax.switch(index, [losses.LOSSES[n].d_loss for n in names], r, f),
            lambda r, f: lax.switch(index, [losses.LOSSES[n].g_loss for n in names], r, f),
        )
        update = make_update(spec._replace(loss=loss), tx)
        state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), ms)

        def body(state, key):
            state, metrics = update(state, {"images": images}, key)
            return state, metrics["loss"]

        return lax.scan(body, state, jax.random.split(jax.random.key(2), 200))

    run = optimised_jit(run)  # 4,200 steps: run time, not compile time, dominates
    for i, name in enumerate(names):
        state, trace = run(i)
        trace = np.asarray(trace)
        assert trace.shape == (200,)
        assert np.all(np.isfinite(trace)), f"{name}: non-finite loss at step {int(np.argmax(~np.isfinite(trace)))}"
        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params)), name
        assert not np.allclose(trace[0], trace[-1]), f"{name}: the loss never moved"


def test_second_step_does_not_recompile(rng):
    players, params, ms, real = tiny_mlp_gan(rng)
    for mode in ("alternating", "single"):
        spec = make_spec(players, gan_config(loss="hinge", update_mode=mode))
        tx = make_optimizer(adam_optim())
        step = jax.jit(make_update(spec, tx))
        state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), ms)
        state, _ = step(state, {"images": real}, jax.random.key(0))
        with count_compilations() as compiled:
            state, metrics = step(state, {"images": real}, jax.random.key(1))
            jax.block_until_ready(metrics)
        assert compiled == [], mode
        assert int(state.step) == 2


def test_energy_view_encoder_trains_with_the_generator_on_the_reconstruction_term(rng):
    # Post 32: G and E descend λ₂·E‖z − E(G(z))‖²; E lives under params["e"] with G's optimiser.
    from zoo.gan.models import MLPDiscriminator as Encoder

    shape, z_dim = (4, 4, 1), 3
    modules = (MLPGenerator(shape, hidden=(8,)), MLPDiscriminator(hidden=(8,)))
    encoder = Encoder(hidden=(8,), outputs=z_dim)
    players = make_players(*modules, z_dim, encoder=encoder)
    params, ms = init_variables(modules, jax.random.key(0), shape, z_dim, encoder)
    real = jnp.asarray(rng.uniform(-1, 1, size=(6, *shape)), jnp.float32)
    tx = make_optimizer(adam_optim())
    for mode in ("alternating", "single"):
        spec = make_spec(players, gan_config(loss="wgan", penalty="zero_gp", encoder_weight=2.0, update_mode=mode))
        state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), ms)
        new, metrics = jax.jit(make_update(spec, tx))(state, {"images": real}, jax.random.key(1))
        assert float(metrics["entropy"]) > 0
        counts = {p: int(new.opt_state.inner_states[p].inner_state[0].count) for p in ("g", "d")}
        assert counts == {"g": 1, "d": 1}, mode
        moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), new.params["e"], params["e"])
        assert all(jax.tree.leaves(moved)), mode
    with pytest.raises(ValueError, match="needs an encoder"):
        make_spec(make_players(*modules, z_dim), gan_config(encoder_weight=1.0))
