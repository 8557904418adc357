"""NVAE (:mod:`zoo.vae.nvae`) on 28×28 images as a :class:`zoo.core.Task` (post 7574).

Data as the VAE task (:mod:`zoo.vae.task`): ``data.binarize`` ``"dynamic"``/``"fixed"``
with a Bernoulli decoder, or ``"none"`` (uniformly dequantised pixels) with a Gaussian one.

The update (one jitted step; BatchNorm statistics and the power-iteration vectors are the
model state):

* objective: batch mean of ``−log p(x|z) + β·Σ_l c_l·KL_l`` with NVlabs's KL warm-up
  ``β = max(min(step / (loss.kl_warmup_fraction·num_steps), 1), loss.kl_min)`` and, while
  ``β < 1``, its KL balancing ``c_l`` (:func:`zoo.vae.nvae.kl_balancer`);
* plus ``λ·(Σ_conv σ_max(W) + Σ_BN max|γ|)``, the spectral and BatchNorm-scale
  regularisers, with ``λ`` annealed log-linearly from ``loss.norm_weight_init`` to
  ``loss.norm_weight`` over the warm-up (NVlabs's ``--weight_decay_norm_anneal``);
* NVlabs's optimiser: Adamax (``eps = 1e-3``) with L2 weight decay ``optim.weight_decay``
  added to the gradient (PyTorch's ``weight_decay``), a linear learning-rate warm-up and
  cosine decay; here also an optional global-norm clip (NVlabs has none);
* the power vectors take ``loss.power_iters`` iterations a step (NVlabs: 4), and 10× that
  at initialisation.

Evaluation on the test split (BatchNorm on the running averages), per image:
``test_nelbo`` (analytic KLs, one sample) and ``test_iwae{k}`` (``−L_k`` from ``k``
samples of the whole hierarchy), in nats and bits/dim. ``samples_t{T}.png`` for each
temperature of ``eval.temperatures``, drawn after NVlabs's BatchNorm re-estimation
(``eval.readjust_bn_batches`` batches sampled in train mode at that temperature, their
statistics averaged; the training statistics are kept for everything else), and
``reconstructions.png``.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from kernels.checks import argument_error as _error
from zoo.core.images import save_grid
from zoo.core.train import Task, TrainState
from zoo.data.batching import shuffled_batches
from zoo.vae import losses, nvae
from zoo.vae.task import (check_data_and_likelihood, load_data, model_input, padded_batch_means,
                          save_reconstruction_grid, to_uint8)  # fmt: skip


def make_model(config, image_shape=(28, 28, 1), train: bool = True) -> nvae.NVAE:
    m = config.model
    return nvae.NVAE(
        image_shape=tuple(int(s) for s in image_shape), channels=m.channels, latent_channels=m.latent_channels,
        groups_per_scale=tuple(int(g) for g in m.groups_per_scale), cells_per_group=m.cells_per_group,
        pre_cells=m.pre_cells, post_cells=m.post_cells, expand=m.expand, likelihood=m.likelihood,
        log_scale_bound=m.log_scale_bound, train=train, bn_momentum=m.bn_momentum, remat=m.remat,
    )  # fmt: skip


def make_optimizer(config) -> optax.GradientTransformation:
    o, n = config.optim, config.train.num_steps
    warmup = min(int(o.warmup_steps), max(n - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(0.0, o.learning_rate, warmup, max(n, warmup + 1), o.end_learning_rate)
    parts = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip > 0 else []
    parts += [optax.add_decayed_weights(o.weight_decay)] if o.weight_decay > 0 else []
    return optax.chain(*parts, optax.adamax(schedule, eps=1e-3))


def check_config(config) -> None:
    check_data_and_likelihood(config, "nvae task", continuous=("gaussian",))
    m, lo, e = config.model, config.loss, config.eval
    if not 0.0 <= m.bn_momentum < 1.0:
        raise _error("nvae task", "config.model.bn_momentum", "a value in [0, 1) (flax convention)", m.bn_momentum)
    if lo.power_iters < 1:
        raise _error("nvae task", "config.loss.power_iters", "an integer >= 1", lo.power_iters)
    if e.readjust_bn_batches < 0:
        raise _error("nvae task", "config.eval.readjust_bn_batches", "an integer >= 0", e.readjust_bn_batches)
    if any(float(t) <= 0 for t in e.temperatures) or any(int(k) < 1 for k in e.iwae_k):
        raise _error("nvae task", "config.eval.temperatures / iwae_k", "temperatures > 0 and integers k >= 1",
                     (tuple(e.temperatures), tuple(e.iwae_k)))  # fmt: skip
    if not 0.0 < lo.kl_min <= 1.0:
        raise _error("nvae task", "config.loss.kl_min", "a value in (0, 1]", lo.kl_min)
    if not 0.0 <= lo.kl_warmup_fraction <= 1.0:
        raise _error("nvae task", "config.loss.kl_warmup_fraction", "a fraction in [0, 1]", lo.kl_warmup_fraction)
    if lo.norm_weight < 0 or lo.norm_weight_init < 0:
        raise _error("nvae task", "config.loss.norm_weight / norm_weight_init", "values >= 0",
                     (lo.norm_weight, lo.norm_weight_init))  # fmt: skip


def kl_coefficient(step, warmup_steps: int, kl_min: float):
    """NVlabs's ``kl_coeff``: linear from 0 to 1 over ``warmup_steps``, never below ``kl_min``."""
    if warmup_steps <= 0:
        return jnp.ones((), jnp.float32)
    return jnp.clip(step.astype(jnp.float32) / warmup_steps, kl_min, 1.0)


def norm_weight(step, warmup_steps: int, weight: float, weight_init: float):
    """``λ``: log-linear from ``weight_init`` to ``weight`` over the warm-up (constant
    ``weight`` if ``weight_init`` is 0 or there is no warm-up)."""
    if warmup_steps <= 0 or weight_init <= 0 or weight <= 0:
        return jnp.asarray(weight, jnp.float32)
    frac = jnp.clip(step.astype(jnp.float32) / warmup_steps, 0.0, 1.0)
    return jnp.exp((1.0 - frac) * math.log(weight_init) + frac * math.log(weight))


def make_update(model: nvae.NVAE, tx, config):
    lo, d = config.loss, config.data
    warmup = int(round(lo.kl_warmup_fraction * config.train.num_steps))
    weights = nvae.kl_balance_weights(model.groups_per_scale)

    def update(state: TrainState, batch, key):
        data_key, sample_key = jax.random.split(key)
        x = model_input(batch["images"], data_key, d.binarize)
        beta = kl_coefficient(state.step, warmup, lo.kl_min)
        lam = norm_weight(state.step, warmup, lo.norm_weight, lo.norm_weight_init)

        def loss_fn(params):
            variables = {"params": params, "batch_stats": state.model_state["batch_stats"]}
            (ll, kl, _), new_vars = model.apply(variables, x, sample_key, method="terms", mutable=["batch_stats"])
            objective = jnp.mean(-ll + nvae.kl_balancer(kl, beta, weights, lo.kl_balance))
            spectral, power = nvae.spectral_regulariser(params, state.model_state["power"], lo.power_iters)
            bn_reg = nvae.batchnorm_scale_regulariser(params)
            loss = objective + lam * (spectral + bn_reg)
            nelbo = jnp.mean(-ll + jnp.sum(kl, axis=-1))
            metrics = {"nelbo": nelbo, "kl": jnp.mean(jnp.sum(kl, axis=-1)), "beta": beta, "spectral": spectral,
                       "bn_reg": bn_reg}  # fmt: skip
            return loss, (metrics, {"batch_stats": new_vars["batch_stats"], "power": power})

        (loss, (metrics, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(state.step + 1, params, opt_state, model_state), {"loss": loss, **metrics}

    return update


@functools.lru_cache(maxsize=16)
def _jitted_eval(model: nvae.NVAE, binarize: str, ks: tuple[int, ...]):
    """``(variables, images, key) -> [1 + len(ks), B]``: −ELBO, then −L_k per ``k``."""

    def fn(variables, images, key):
        x = model_input(images, jax.random.fold_in(key, 0), "fixed" if binarize != "none" else "none")
        sample_key = jax.random.fold_in(key, 1)
        ll, kl, _ = model.apply(variables, x, sample_key, method="terms")
        rows = [-(ll - jnp.sum(kl, axis=-1))]
        for k in ks:
            def log_w(i):
                ll_i, _, ratio = model.apply(variables, x, jax.random.fold_in(sample_key, i), method="terms")
                return ll_i + ratio

            rows.append(-losses.iwae_bound(jax.lax.map(log_w, jnp.arange(k))))
        return jnp.stack(rows)

    return jax.jit(fn)


def test_nats(model, variables, images, binarize, ks, batch_size, seed) -> np.ndarray:
    """Per-image means ``[−ELBO, −L_k for k in ks]`` (nats) over ``images`` in fixed-size
    (padded) batches; ``model`` in eval mode (``train=False``)."""
    fn = _jitted_eval(model, binarize, tuple(int(k) for k in ks))
    return padded_batch_means(lambda x, key: fn(variables, x, key), (images,), batch_size, seed)


@functools.lru_cache(maxsize=16)
def _jitted_bn_pass(model: nvae.NVAE, num: int):
    """One prior-sampling pass in train mode with BatchNorm momentum 0: returns that batch's statistics."""
    probe = model.clone(train=True, bn_momentum=0.0)

    def fn(variables, key, temperature):
        _, new = probe.apply(variables, key, num, temperature, method="sample_output", mutable=["batch_stats"])
        return new["batch_stats"]

    return jax.jit(fn)


def readjust_batch_stats(model: nvae.NVAE, variables, key, temperature: float, num_batches: int, batch_size: int):
    """NVlabs's BatchNorm re-estimation before sampling: the mean over ``num_batches``
    prior-sampling passes (train mode, at ``temperature``) of each batch's statistics.
    Only the decoder's BatchNorms run when sampling; the encoder's statistics come back as
    they were. Returns new ``batch_stats``."""
    if num_batches < 1:
        raise _error("readjust_batch_stats", "num_batches", "an integer >= 1", num_batches)
    fn = _jitted_bn_pass(model, int(batch_size))
    stats = [fn(variables, jax.random.fold_in(key, i), jnp.float32(temperature)) for i in range(num_batches)]
    # s0 + mean of the differences: statistics no pass changed (the encoder's) come back bit for bit
    return jax.tree.map(lambda s0, *s: s0 + sum(x - s0 for x in s) / (len(s) + 1), *stats)


@functools.lru_cache(maxsize=16)
def _jitted_sample(model: nvae.NVAE, num: int):
    return jax.jit(lambda variables, key, t: model.apply(variables, key, num, t, method="sample"))


@functools.lru_cache(maxsize=16)
def _jitted_reconstruct(model: nvae.NVAE):
    return jax.jit(lambda variables, x, key: model.apply(variables, x, key, method="reconstruct"))


def get_task(config: ml_collections.ConfigDict, workdir: Path | None) -> Task:
    check_config(config)
    d, e = config.data, config.eval
    (train_images, train_labels), (test_images, _) = load_data(config)
    image_shape = train_images.shape[1:]
    model, eval_model = make_model(config, image_shape, True), make_model(config, image_shape, False)
    num_dims = int(np.prod(image_shape))
    num_bins = 256 if d.binarize == "none" else 0
    if len(train_images) // d.batch_size == 0:
        raise _error("nvae task", "config.data.batch_size", f"at most the {len(train_images)} training images",
                     d.batch_size)  # fmt: skip
    tx = make_optimizer(config)
    init_all = jax.jit(lambda key: model.init(key, jnp.zeros((2, *image_shape), jnp.float32), jax.random.key(0)))
    pending = {}  # init(key) and init_model_state(key) get the same key: initialise once

    def variables_for(key):
        if "variables" not in pending:
            pending["variables"] = init_all(key)
        return pending["variables"]

    def init(key):
        return variables_for(key)["params"]

    def init_model_state(key):
        v = pending.pop("variables", None) or init_all(key)
        burn_in = functools.partial(nvae.init_power_vectors, num_iters=10 * config.loss.power_iters)
        power = jax.jit(burn_in)(v["params"], jax.random.fold_in(key, 7))
        return {"batch_stats": v["batch_stats"], "power": power}

    def train_batches(start_step):
        for _, idx in shuffled_batches(len(train_images), d.batch_size, config.seed, start_step):
            yield {"images": train_images[idx], "labels": train_labels[idx]}

    def evaluate(variables_):
        variables = {"params": variables_["params"], "batch_stats": variables_["model_state"]["batch_stats"]}
        ks = tuple(int(k) for k in e.iwae_k)
        nats = test_nats(eval_model, variables, test_images, d.binarize, ks, d.eval_batch_size, e.noise_seed)
        out = {}
        for name, value in zip(["test_nelbo"] + [f"test_iwae{k}" for k in ks], nats):
            out[name] = float(value)
            out[f"{name}_bpd"] = float(losses.bits_per_dim(value, num_dims, num_bins=num_bins))
        if workdir is not None:
            key = jax.random.key(e.noise_seed)
            for t in e.temperatures:
                v = variables
                if e.readjust_bn_batches > 0:
                    stats = readjust_batch_stats(model, variables, jax.random.fold_in(key, 1), t, e.readjust_bn_batches,
                                                 e.num_samples)  # fmt: skip
                    v = {"params": variables["params"], "batch_stats": stats}
                samples = _jitted_sample(eval_model, e.num_samples)(v, jax.random.fold_in(key, 2), jnp.float32(t))
                save_grid(to_uint8(samples), Path(workdir) / f"samples_t{t:g}.png", columns=8)
            x = model_input(test_images[: e.num_reconstructions], key, "fixed" if d.binarize != "none" else "none")
            recon = _jitted_reconstruct(eval_model)(variables, x, jax.random.fold_in(key, 3))
            save_reconstruction_grid(x, recon, Path(workdir) / "reconstructions.png")
        return out

    return Task(
        init, tx, None, train_batches, evaluate, init_model_state=init_model_state,
        update=make_update(model, tx, config),
        eval_variables=lambda s: {"params": s.params, "model_state": s.model_state},
    )  # fmt: skip
