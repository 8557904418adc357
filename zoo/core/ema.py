"""A weight EMA (Polyak averaging) for any task trained by the default update.

``train.ema_decay = d`` in a config (0 < d < 1; 0 turns it off) makes :func:`zoo.registry.get_task`
wrap the family's task with :func:`with_weight_ema`: after each optax update the average moves as

    ema ← d · ema + (1 − d) · params,

starting from the initial params, so it needs no bias correction. The training trajectory is
the one without the EMA (same params, keys and batches); the average rides along in
``TrainState.model_state`` and is checkpointed with the rest. Each evaluation reports the
task's metrics for the trained params and, suffixed ``_ema``, for the average.
"""

from __future__ import annotations

import optax

from zoo.core.train import Task, TrainState, gradient_step


def with_weight_ema(task: Task, decay: float) -> Task:
    """``task`` with an EMA of its params kept in ``model_state`` and evaluated alongside them.

    Args:
      task: a task trained by the loop's default update: no ``update``, ``model_state`` or
        ``eval_variables`` of its own (each would be ambiguous to combine with the average).
      decay: the average's decay ``d`` in (0, 1); its horizon is about ``1 / (1 − d)`` steps.
    """
    if not (isinstance(decay, (int, float)) and 0.0 < decay < 1.0):
        raise ValueError(f"with_weight_ema: decay must be a number in (0, 1), got {decay!r}")
    own = {name: getattr(task, name) is not None for name in ("update", "init_model_state", "eval_variables")}
    if any(own.values()):
        raise ValueError(
            "with_weight_ema: the task must use the default update, no model_state and its params as "
            f"evaluation variables; this one has {', '.join(f'{k}={v}' for k, v in own.items())} "
            "(set train.ema_decay=0 for it)"
        )

    def init_model_state(key):
        return task.init(key)  # the loop calls init with the same key: the initial params

    def update(state: TrainState, batch, key):
        params, opt_state, metrics = gradient_step(task.loss_fn, task.optimizer, state, batch, key)
        ema = optax.incremental_update(params, state.model_state, step_size=1.0 - decay)
        return TrainState(state.step + 1, params, opt_state, ema), metrics

    def eval_variables(state: TrainState):
        return state.params, state.model_state

    def evaluate(variables):
        params, ema = variables
        # The average first, so that files an evaluation writes (reconstructions) show the params.
        averaged = {f"{name}_ema": value for name, value in task.evaluate(ema).items()}
        return {**task.evaluate(params), **averaged}

    return task._replace(
        evaluate=evaluate, init_model_state=init_model_state, update=update, eval_variables=eval_variables
    )


def apply_config(task: Task, train_cfg) -> Task:
    """``task`` wrapped by :func:`with_weight_ema` when ``train_cfg.ema_decay`` is set, else as is."""
    decay = train_cfg.get("ema_decay", 0.0)
    return task if not decay else with_weight_ema(task, decay)


__all__ = ["with_weight_ema", "apply_config"]
