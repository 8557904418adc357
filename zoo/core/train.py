"""The training loop every family shares, written out in :func:`train_and_evaluate`.

A family supplies a :class:`Task`: pure functions for init, loss and evaluation, an optax
transformation, and a step-indexed batch iterator. Everything else lives here:

* one seed: ``key = jax.random.key(config.seed)``, split once into init and loop keys;
  the step key is ``fold_in(loop_key, step)`` inside the jitted step, so a resumed run
  sees exactly the keys the uninterrupted run would have;
* the jitted train step donates the state and runs data-parallel over a 1-D mesh;
* metrics stay on device until a log point; a non-finite loss found there stops the
  run before the next checkpoint is written, so the last checkpoint on disk is good;
* orbax checkpoints every ``train.ckpt_every`` steps; rerunning the same command in the
  same ``workdir`` resumes from the latest one (batches are a function of the step).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm.auto import tqdm

from zoo.core import parallel
from zoo.core.checkpoint import Checkpointer
from zoo.core.config import save_config
from zoo.core.metrics import MetricWriter

Params = Any
Batch = dict[str, np.ndarray]
Metrics = dict[str, jax.Array]


class Task(NamedTuple):
    """What a family hands the loop. All functions are pure except the batch iterator.

    Attributes:
      init: ``init(key) -> params``.
      optimizer: the optax transformation for every update.
      loss_fn: ``loss_fn(params, batch, key) -> (scalar loss, metrics dict)``; jitted by the loop.
      train_batches: ``train_batches(start_step) -> iterator of batches``; batch ``i`` of
        the iterator must be the batch of step ``start_step + i`` (this is what makes
        resumption exact).
      evaluate: ``evaluate(variables) -> dict of floats`` on the held-out split, where
        ``variables`` is ``eval_variables(state)`` (by default ``state.params``).
      init_model_state: optional ``init_model_state(key) -> model_state`` (same key as
        ``init``): non-trainable variables such as BatchNorm statistics or a weight EMA.
      update: optional ``update(state, batch, key) -> (state, metrics)``, a family's own
        pure update replacing the default one-``value_and_grad`` step (GANs: alternating
        player updates). It gets the step key, returns metrics holding ``"loss"``, and must
        advance ``state.step`` by one; the loop jits it with the same shardings and donation.
      eval_variables: optional ``eval_variables(state) -> variables`` for ``evaluate``.
    """

    init: Callable[[jax.Array], Params]
    optimizer: optax.GradientTransformation
    loss_fn: Callable[[Params, Batch, jax.Array], tuple[jax.Array, Metrics]] | None
    train_batches: Callable[[int], Iterator[Batch]]
    evaluate: Callable[[Any], dict[str, float]]
    init_model_state: Callable[[jax.Array], Any] | None = None
    update: Callable[..., tuple[Any, Metrics]] | None = None
    eval_variables: Callable[[Any], Any] | None = None


class TrainState(NamedTuple):
    step: jax.Array  # int32 scalar: number of updates applied
    params: Params
    opt_state: optax.OptState
    model_state: Any = None  # non-trainable variables (Task.init_model_state), or None


def eval_variables(task: Task, state: TrainState):
    """What ``task.evaluate`` takes: ``task.eval_variables(state)``, or the params."""
    return state.params if task.eval_variables is None else task.eval_variables(state)


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss becomes NaN or Inf."""


def cpu_compiler_options(train_cfg, mesh) -> dict[str, Any] | None:
    """``train.cpu_compiler_options`` as a dict when ``mesh`` holds CPU devices, else ``None``.

    XLA:CPU options for one model's train step, passed to its ``jax.jit``: a model whose
    step XLA's CPU defaults serve badly sets them in its config (``em_capsnet`` keeps
    YNNPACK to dots). They are XLA:CPU's, so other backends never see them.
    """
    options = train_cfg.get("cpu_compiler_options") or {}
    if not options or mesh.devices.flat[0].platform != "cpu":
        return None
    return dict(options)


def gradient_step(loss_fn, optimizer: optax.GradientTransformation, state: TrainState, batch: Batch, key):
    """The default update: one ``value_and_grad`` of ``loss_fn`` at ``state.params`` and one
    optax update. Returns ``(params, opt_state, metrics)`` with the loss as ``metrics["loss"]``."""
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, key)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    return optax.apply_updates(state.params, updates), opt_state, {"loss": loss, **metrics}


def make_train_step(task: Task, mesh, *, inject_nan_at_step: int = -1, compiler_options: dict | None = None):
    """Returns ``train_step(state, batch, loop_key) -> (state, metrics)``, jitted, state donated.

    ``inject_nan_at_step`` (>= 0) poisons the loss and gradients of that step: a fault
    injection hook used by the tests of the NaN guard, off by default (and not applied to
    a task's own ``update``). ``compiler_options``: XLA options for this jit
    (:func:`cpu_compiler_options` gives a config's).
    """

    def train_step(state: TrainState, batch: Batch, loop_key: jax.Array):
        key = jax.random.fold_in(loop_key, state.step)
        if task.update is not None:
            return task.update(state, batch, key)
        loss_fn = task.loss_fn
        if inject_nan_at_step >= 0:
            # A constant factor of the loss: NaN at that step poisons the loss and every gradient.
            def loss_fn(params, batch, key):
                loss, metrics = task.loss_fn(params, batch, key)
                return loss * jnp.where(state.step == inject_nan_at_step, jnp.nan, 1.0), metrics

        params, opt_state, metrics = gradient_step(loss_fn, task.optimizer, state, batch, key)
        return TrainState(state.step + 1, params, opt_state, state.model_state), metrics

    replicated = parallel.replicated(mesh)
    return jax.jit(
        train_step,
        in_shardings=(replicated, parallel.batch_sharded(mesh), replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
        compiler_options=compiler_options,
    )


def init_state(task: Task, key: jax.Array, mesh) -> TrainState:
    # One jitted program: run eagerly, a model's init dispatches (and on first use compiles)
    # one small XLA program per initialiser and op, ~90 compiles for the capsule smoke model.
    @jax.jit
    def init(key):
        params = task.init(key)
        model_state = None if task.init_model_state is None else task.init_model_state(key)
        return TrainState(jnp.zeros((), jnp.int32), params, task.optimizer.init(params), model_state)

    return jax.device_put(init(key), parallel.replicated(mesh))


def _mean_metrics(host: list[dict]) -> dict[str, float]:
    return {name: float(np.mean([m[name] for m in host])) for name in host[0]}


def _first_non_finite(host: list[dict], first_step: int) -> tuple[int, float] | None:
    losses = np.asarray([m["loss"] for m in host])
    bad = np.flatnonzero(~np.isfinite(losses))
    return (first_step + int(bad[0]), float(losses[bad[0]])) if bad.size else None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path, task: Task | None = None):
    """Trains ``config`` in ``workdir`` (resuming if it holds checkpoints), then evaluates.

    Returns:
      ``(state, eval_metrics)``: the final :class:`TrainState` and the last evaluation.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if task is None:
        from zoo import registry

        task = registry.get_task(config, workdir)
    train_cfg = config.train
    mesh = parallel.data_mesh(train_cfg.get("num_devices", 0))

    # ---- state: fresh, or the latest checkpoint -----------------------------------
    init_key, loop_key = jax.random.split(jax.random.key(config.seed))
    state = init_state(task, init_key, mesh)
    checkpointer = Checkpointer(workdir / "checkpoints")
    if checkpointer.latest_step() is not None:
        state = checkpointer.restore(state)
    start_step = int(state.step)
    save_config(config, workdir / "config.json")
    writer = MetricWriter(workdir)

    train_step = make_train_step(
        task, mesh, inject_nan_at_step=train_cfg.get("inject_nan_at_step", -1),
        compiler_options=cpu_compiler_options(train_cfg, mesh),
    )  # fmt: skip
    num_steps = train_cfg.num_steps
    batches = task.train_batches(start_step)

    # ---- the loop -------------------------------------------------------------------
    pending: list[Metrics] = []  # step metrics still on device
    window_start, window_time = start_step, time.perf_counter()
    progress = tqdm(
        total=num_steps, initial=start_step, desc="train", disable=not train_cfg.get("progress", True)
    )
    eval_metrics: dict[str, float] = {}
    for step in range(start_step, num_steps):
        batch = parallel.step_batch(next(batches), mesh)
        state, metrics = train_step(state, batch, loop_key)
        pending.append(metrics)
        done = step + 1
        progress.update(1)

        is_last = done == num_steps
        should_ckpt = done % train_cfg.ckpt_every == 0 or is_last
        if done % train_cfg.log_every == 0 or should_ckpt:
            host = jax.device_get(pending)  # one transfer for the whole window
            # Check before any checkpoint so a poisoned state is never written.
            bad = _first_non_finite(host, window_start)
            if bad is not None:
                progress.close()
                last = checkpointer.latest_step()
                checkpointer.close()
                raise NonFiniteLossError(
                    f"training loss became {bad[1]} at step {bad[0]}; stopping. The last good "
                    f"checkpoint is step {last} in {workdir / 'checkpoints'} (rerunning resumes from it)."
                )
            means = _mean_metrics(host)
            means["steps_per_sec"] = len(pending) / (time.perf_counter() - window_time)
            writer.write(done, "train", means)
            progress.set_postfix(loss=f"{means['loss']:.4f}")
            pending, window_start, window_time = [], done, time.perf_counter()
        if train_cfg.eval_every and done % train_cfg.eval_every == 0 and not is_last:
            eval_metrics = task.evaluate(eval_variables(task, state))
            writer.write(done, "eval", eval_metrics)
        if should_ckpt:
            checkpointer.save(done, state)
    progress.close()

    # ---- final evaluation -------------------------------------------------------------
    eval_metrics = task.evaluate(eval_variables(task, state))
    writer.write(int(state.step), "eval", eval_metrics)
    writer.plot()
    checkpointer.close()
    return state, eval_metrics
