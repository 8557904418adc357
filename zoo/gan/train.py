"""GAN updates with optax: one parameter tree ``{"g", "d"}``, one ``optax.partition``.

Both players' parameters live in one tree and one transformation,
``optax.partition({"g": tx_g, "d": tx_d}, {"g": "g", "d": "d"})``, which keeps a separate
optimiser state per player (sharing Adam moments between G and D is a known bug class).
Two updates, each one jitted step (:func:`make_update`):

* **alternating**: ``n_critic`` discriminator updates, each with a fresh real batch and
  fresh noise, then one generator update with fresh noise. A player's update runs the
  partition with zero gradients for the other player and keeps only its own parameters and
  inner optimiser state (:func:`update_player`), so the idle player's Adam moments and
  step count do not move; XLA drops the discarded half.
* **single loss** (post 33, "巧断梯度"): ``L = L_D(D(x), D(sg(G(z)))) + λ·L_G(D_sg(G(z)))``
  where ``sg`` is ``stop_gradient`` and ``D_sg`` is the discriminator with stopped
  parameters: each player's gradient flows through exactly one term, so one
  ``value_and_grad`` and one ``tx.update`` move both players — a *simultaneous* update
  (both gradients are taken at the same point), equivalent to a 1:1 alternating update
  only to first order. λ scales the generator's gradient: a D:G learning-rate ratio 1:λ.
  ``D(sg(G(z)))`` and ``D_sg(G(z))`` are one forward pass (:func:`route_gradients`).

Model state (``TrainState.model_state``): ``{"g": G's collections, "d": D's collections,
"ema_g": EMA of G's params}``. Every train-mode call updates running statistics in call
order, as PyTorch and Keras do: alternating = G(z) then D(real), D(fake) per critic step,
then G(z), D(G(z)) (and D(real) for relativistic losses); single loss = G(z), D(real),
D(fake) (one pass for both terms). Gradient penalties call D in eval mode (no update).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from zoo.gan import energy, losses, penalties

PLAYERS = ("g", "d")
LABELS = {"g": "g", "d": "d", "e": "g"}  # parameter key -> player; the encoder trains with G
UPDATES = ("alternating", "single")
PENALTIES = ("none", "wgan_gp", "wgan_gp_one_sided", "wgan_div", "zero_gp")
RELATIVISTIC = ("rsgan", "rasgan")  # losses whose generator term needs D(real)


class Players(NamedTuple):
    """The pure functions of a GAN. ``*_state`` are the modules' non-param collections."""

    generate: Callable  # (params_g, state_g, z [B, Z], train) -> (x [B, H, W, C], state_g)
    discriminate: Callable  # (params_d, state_d, x, train) -> (out [B], state_d)
    sample_z: Callable  # (key, n) -> z [n, Z]
    encode: Callable | None = None  # (params_e, x) -> z_rec [B, Z]: the energy view's encoder


def _applier(module):
    def apply(params, state, x, train=True):
        variables = {"params": params, **state}
        if train and state:  # BatchNorm / SpectralNorm statistics update in train mode
            out, new_state = module.apply(variables, x, train=True, mutable=list(state))
            return out, dict(new_state)
        return module.apply(variables, x, train=train), state

    return apply


def make_players(generator, discriminator, z_dim: int, z_dist: str = "normal", encoder=None) -> Players:
    """``z_dist``: ``"normal"`` (N(0, I)) or ``"uniform"`` (U(−1, 1), the author's post 20);
    ``encoder``: an optional module ``x -> z`` (no collections) for the entropy term."""
    if z_dist not in ("normal", "uniform"):
        raise ValueError(f"model.z_dist must be 'normal' or 'uniform'; got {z_dist!r}")

    def sample_z(key, n):
        if z_dist == "normal":
            return jax.random.normal(key, (n, z_dim))
        return jax.random.uniform(key, (n, z_dim), minval=-1.0, maxval=1.0)

    encode = None if encoder is None else (lambda params_e, x: encoder.apply({"params": params_e}, x))
    return Players(_applier(generator), _applier(discriminator), sample_z, encode)


def init_variables(players_modules, key, image_shape, z_dim, encoder=None):
    """``(params {"g", "d"[, "e"]}, model_state {"g", "d", "ema_g"})`` from one key."""
    generator, discriminator = players_modules
    k_g, k_d, k_e = jax.random.split(key, 3)
    g_vars = generator.init(k_g, jnp.zeros((2, z_dim)), train=False)
    d_vars = discriminator.init(k_d, jnp.zeros((2, *image_shape)), train=False)
    params = {"g": g_vars["params"], "d": d_vars["params"]}
    if encoder is not None:
        params["e"] = encoder.init(k_e, jnp.zeros((2, *image_shape)))["params"]
    state = {
        "g": {k: v for k, v in g_vars.items() if k != "params"},
        "d": {k: v for k, v in d_vars.items() if k != "params"},
        "ema_g": jax.tree.map(jnp.copy, g_vars["params"]),  # its own buffers: the step donates both
    }
    return params, state


# --------------------------------------------------------------------------- #
# optimisers
# --------------------------------------------------------------------------- #


def player_optimizer(cfg) -> optax.GradientTransformation:
    """``cfg.name``: ``"adam"`` (``learning_rate, b1, b2``) or ``"rmsprop"`` (``learning_rate,
    decay``; post 33 uses RMSprop(1e-4, ρ = 0.99))."""
    if cfg.name == "adam":
        return optax.adam(cfg.learning_rate, b1=cfg.b1, b2=cfg.b2)
    if cfg.name == "rmsprop":
        return optax.rmsprop(cfg.learning_rate, decay=cfg.decay, eps=1e-7)
    raise ValueError(f"optim.<player>.name must be 'adam' or 'rmsprop'; got {cfg.name!r}")


def make_optimizer(optim_config) -> optax.GradientTransformation:
    """One ``optax.partition`` with a state per player over ``{"g", "d"[, "e"]}`` (the
    encoder ``"e"`` is labelled ``"g"``: it trains with the generator's optimiser)."""
    return optax.partition(
        {p: player_optimizer(optim_config[p]) for p in PLAYERS},
        lambda params: {k: LABELS[k] for k in params},
    )


def update_player(tx, opt_state, params, grads, player: str):
    """Applies ``tx`` to one player's gradients only.

    Args:
      grads: ``{key: gradient subtree}`` for the parameter keys of ``player`` (``{"d": ...}``,
        or ``{"g": ...[, "e": ...]}``).
    Returns:
      ``(params, opt_state)`` with the other player's parameters and inner optimiser state
      untouched (its Adam moments and step count do not move).
    """
    mine = [k for k in params if LABELS[k] == player]
    if sorted(grads) != sorted(mine):
        raise ValueError(f"update_player: `grads` must have the keys {mine} of player {player!r}; got {sorted(grads)}")
    full = {k: grads[k] if k in grads else jax.tree.map(jnp.zeros_like, v) for k, v in params.items()}
    updates, new_state = tx.update(full, opt_state, params)
    params = {**params, **{k: optax.apply_updates(params[k], updates[k]) for k in mine}}
    inner = {**opt_state.inner_states, player: new_state.inner_states[player]}
    return params, opt_state._replace(inner_states=inner)


# --------------------------------------------------------------------------- #
# the author's spectral-norm constraint and the generator EMA
# --------------------------------------------------------------------------- #


def spectral_norm_from_ones(w, num_iters: int = 5):
    """Largest singular value of ``w`` reshaped to ``[prod(shape[:-1]), shape[-1]]`` by
    ``num_iters`` power iterations started from a ones vector (the author's Keras
    constraint, post 31: no persistent ``u``). A 1-D ``w`` gives ``‖w‖₂``."""
    m = w.reshape(-1, w.shape[-1])
    u = jnp.ones((m.shape[0],), w.dtype)
    for _ in range(num_iters):
        v = m.T @ u
        v = v / (jnp.linalg.norm(v) + 1e-12)
        u = m @ v
        u = u / (jnp.linalg.norm(u) + 1e-12)
    return u @ m @ v


def spectral_constraint(params_d, num_iters: int = 5):
    """Post-update weight constraint (post 31's Keras ``kernel_constraint``): every kernel
    ``W ← W / σ(W)`` and every BatchNorm scale ``γ ← γ / ‖γ‖₂``; biases untouched."""

    def constrain(path, w):
        name = getattr(path[-1], "key", None)
        if name in ("kernel", "scale"):
            return w / spectral_norm_from_ones(w, num_iters)
        return w

    return jax.tree_util.tree_map_with_path(constrain, params_d)


def ema_update(ema, params, step, decay: float):
    """``ema ← d·ema + (1 − d)·params`` with ``d = min(decay, (1 + t)/(10 + t))``: the
    warm-up (TensorFlow's ``num_updates``) keeps short runs from averaging in the
    initialisation (post 9: EMA of the weights, "the most powerful trick")."""
    t = step.astype(jnp.float32)
    d = jnp.minimum(decay, (1.0 + t) / (10.0 + t))
    return optax.incremental_update(params, ema, 1.0 - d)


# --------------------------------------------------------------------------- #
# the two updates
# --------------------------------------------------------------------------- #


def make_penalty(gan_cfg) -> Callable:
    """``penalty(d_fn, key, real, fake) -> scalar`` for ``gan.penalty``."""
    name, w = gan_cfg.penalty, gan_cfg.penalty_weight
    if name == "none":
        return lambda d_fn, key, real, fake: jnp.zeros(())
    if name == "wgan_gp":
        return lambda d_fn, key, real, fake: penalties.wgan_gp(d_fn, key, real, fake, weight=w)
    if name == "wgan_gp_one_sided":
        return lambda d_fn, key, real, fake: penalties.wgan_gp_one_sided(d_fn, key, real, fake, weight=w)
    if name == "wgan_div":
        k, p = gan_cfg.div_k, gan_cfg.div_p
        return lambda d_fn, key, real, fake: penalties.wgan_div(d_fn, key, real, fake, k=k, p=p)
    if name == "zero_gp":
        return lambda d_fn, key, real, fake: penalties.zero_centred_gp(d_fn, real, weight=w)
    raise ValueError(f"gan.penalty must be one of {PENALTIES}; got {name!r}")


class GanSpec(NamedTuple):
    players: Players
    loss: Any  # losses.GanLoss
    penalty: Callable
    update: str
    n_critic: int
    single_loss_weight: float
    ema_decay: float
    spectral_constraint: bool
    encoder_weight: float = 0.0  # λ₂ of post 32's entropy term (needs players.encode)


def make_spec(players: Players, gan_cfg) -> GanSpec:
    if gan_cfg.update_mode not in UPDATES:
        raise ValueError(f"gan.update_mode must be one of {UPDATES}; got {gan_cfg.update_mode!r}")
    if gan_cfg.n_critic < 1:
        raise ValueError(f"gan.n_critic must be >= 1; got {gan_cfg.n_critic}")
    if gan_cfg.update_mode == "single" and gan_cfg.n_critic != 1:
        raise ValueError(f"gan.update_mode 'single' moves both players once per step: gan.n_critic must be 1; got {gan_cfg.n_critic}")
    if gan_cfg.encoder_weight and players.encode is None:
        raise ValueError(f"gan.encoder_weight {gan_cfg.encoder_weight} needs an encoder: build the players with one")
    return GanSpec(
        players, losses.get_loss(gan_cfg.loss), make_penalty(gan_cfg), gan_cfg.update_mode, gan_cfg.n_critic,
        gan_cfg.single_loss_weight, gan_cfg.ema_decay, gan_cfg.spectral_constraint, gan_cfg.encoder_weight,
    )  # fmt: skip


def route_gradients(discriminate: Callable) -> Callable:
    """One discriminator pass whose output comes out twice, each copy passing gradients to
    one side only:

    ``routed(params_d, state_d, x) -> (out_to_params, out_to_input, state_d)`` where
    ``out_to_params`` acts as ``D(params_d, stop_gradient(x))`` and ``out_to_input`` as
    ``D(stop_gradient(params_d), x)``. The single-loss step feeds the first to D's loss and
    the second to G's, so ``D(G(z))`` runs forward once; under ``jit`` each pull-back keeps
    only the half it returns (the parameter half for D, the input half for G).
    """

    @jax.custom_vjp
    def routed(params_d, state_d, x):
        out, state_d = discriminate(params_d, state_d, x)
        return out, out, state_d

    def forward(params_d, state_d, x):
        out, pull_back, new_state = jax.vjp(lambda p, xx: discriminate(p, state_d, xx), params_d, x, has_aux=True)
        return (out, out, new_state), (pull_back, state_d)

    def backward(residuals, cotangents):
        pull_back, state_d = residuals
        to_params, to_input, _ = cotangents
        return pull_back(to_params)[0], jax.tree.map(jnp.zeros_like, state_d), pull_back(to_input)[1]

    routed.defvjp(forward, backward)
    return routed


def _d_terms(spec: GanSpec, params_d, state_d, real, fake, d_real, d_fake, key):
    """D's loss from its outputs on ``real`` and ``fake`` (already stopped), plus the
    penalty (D in eval mode). Returns ``(loss_d, metrics)``."""
    adversarial = spec.loss.d_loss(d_real, d_fake)
    penalty = spec.penalty(lambda x: spec.players.discriminate(params_d, state_d, x, False)[0], key, real, fake)
    metrics = {"loss_d": adversarial, "penalty": penalty, "d_real": jnp.mean(d_real), "d_fake": jnp.mean(d_fake)}
    return adversarial + penalty, metrics


def _g_terms(spec: GanSpec, d_real, d_fake, z, fake, params_e):
    """G's loss from D's outputs (``d_real`` only for relativistic losses, stopped), plus
    post 32's entropy term ``λ₂·E‖z − E(G(z))‖²`` with an encoder. Returns ``(loss_g, entropy)``."""
    d_real = jnp.zeros_like(d_fake) if d_real is None else lax.stop_gradient(d_real)
    loss_g = spec.loss.g_loss(d_real, d_fake)
    entropy = jnp.zeros(())
    if spec.encoder_weight:
        entropy = energy.encoder_entropy_term(z, spec.players.encode(params_e, fake))
        loss_g = loss_g + spec.encoder_weight * entropy
    return loss_g, entropy


def _finish(spec: GanSpec, state, params, opt_state, model_state, metrics):
    if spec.spectral_constraint and spec.update == "single":  # alternating constrains after each D update
        params = {**params, "d": spectral_constraint(params["d"])}
    model_state = {**model_state, "ema_g": ema_update(model_state["ema_g"], params["g"], state.step, spec.ema_decay)}
    metrics = {"loss": metrics["loss_d"] + metrics["penalty"] + metrics["loss_g"], **metrics}
    return state._replace(step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state), metrics


def make_update(spec: GanSpec, tx: optax.GradientTransformation) -> Callable:
    """``update(state, batch, key) -> (state, metrics)`` for ``zoo.core.train.Task.update``.

    ``batch["images"]``: ``[n_critic · B, H, W, C]`` float on ``[−1, 1]`` (critic step ``i``
    takes rows ``i·B … (i+1)·B − 1``). Metrics: ``loss`` (= loss_d + penalty + loss_g),
    ``loss_d``, ``penalty``, ``loss_g`` (with the entropy term), ``entropy``, ``d_real``,
    ``d_fake`` (D's metrics are means over critic steps).
    """
    players = spec.players
    routed = route_gradients(players.discriminate)

    def alternating(state, batch, key):
        images = batch["images"]
        reals = images.reshape(spec.n_critic, -1, *images.shape[1:])
        n = reals.shape[1]

        def critic_step(carry, inputs):
            params, opt_state, ms = carry
            real, k = inputs
            k_z, k_pen = jax.random.split(k)
            fake, g_state = players.generate(params["g"], ms["g"], players.sample_z(k_z, n))
            fake = lax.stop_gradient(fake)

            def d_loss(params_d):
                d_real, d_state = players.discriminate(params_d, ms["d"], real)
                d_fake, d_state = players.discriminate(params_d, d_state, fake)
                loss_d, metrics = _d_terms(spec, params_d, d_state, real, fake, d_real, d_fake, k_pen)
                return loss_d, (d_state, metrics)

            grads, (d_state, metrics) = jax.grad(d_loss, has_aux=True)(params["d"])
            params, opt_state = update_player(tx, opt_state, params, {"d": grads}, "d")
            if spec.spectral_constraint:  # the constraint follows every D update
                params = {**params, "d": spectral_constraint(params["d"])}
            return (params, opt_state, {**ms, "g": g_state, "d": d_state}), metrics

        carry = (state.params, state.opt_state, state.model_state)
        critic_keys = jax.random.split(jax.random.fold_in(key, 0), spec.n_critic)
        if spec.n_critic == 1:
            carry, metrics = critic_step(carry, (reals[0], critic_keys[0]))
        else:
            carry, metrics = lax.scan(critic_step, carry, (reals, critic_keys))
            metrics = jax.tree.map(jnp.mean, metrics)
        params, opt_state, ms = carry

        z = players.sample_z(jax.random.fold_in(key, 1), n)

        def g_loss(mine):  # {"g": ...[, "e": ...]}
            fake, g_state = players.generate(mine["g"], ms["g"], z)
            frozen_d = lax.stop_gradient(params["d"])
            d_fake, d_state = players.discriminate(frozen_d, ms["d"], fake)
            d_real = None
            if spec.loss.name in RELATIVISTIC:
                d_real, d_state = players.discriminate(frozen_d, d_state, reals[-1])
            loss_g, entropy = _g_terms(spec, d_real, d_fake, z, fake, mine.get("e"))
            return loss_g, ({**ms, "g": g_state, "d": d_state}, entropy)

        mine = {k: v for k, v in params.items() if LABELS[k] == "g"}
        (loss_g, (ms, entropy)), grads = jax.value_and_grad(g_loss, has_aux=True)(mine)
        params, opt_state = update_player(tx, opt_state, params, grads, "g")
        return _finish(spec, state, params, opt_state, ms, {**metrics, "loss_g": loss_g, "entropy": entropy})

    def single(state, batch, key):
        real = batch["images"]
        k_z, k_pen = jax.random.split(key)
        z = players.sample_z(k_z, real.shape[0])
        ms = state.model_state

        def objective(params):
            fake, g_state = players.generate(params["g"], ms["g"], z)
            d_real, d_state = players.discriminate(params["d"], ms["d"], real)
            d_fake_to_d, d_fake_to_g, d_state = routed(params["d"], d_state, fake)
            loss_d, metrics = _d_terms(spec, params["d"], d_state, real, lax.stop_gradient(fake), d_real, d_fake_to_d, k_pen)
            loss_g, entropy = _g_terms(spec, d_real if spec.loss.name in RELATIVISTIC else None, d_fake_to_g, z, fake, params.get("e"))
            total = loss_d + spec.single_loss_weight * loss_g
            return total, ({**ms, "g": g_state, "d": d_state}, {**metrics, "loss_g": loss_g, "entropy": entropy})

        grads, (new_ms, metrics) = jax.grad(objective, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return _finish(spec, state, params, opt_state, new_ms, metrics)

    return alternating if spec.update == "alternating" else single
