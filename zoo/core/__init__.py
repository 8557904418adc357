"""Run plumbing shared by every family: configs, the training loop, checkpoints, metrics, sharding."""

from zoo.core.config import apply_overrides, load_config
from zoo.core.train import NonFiniteLossError, Task, TrainState, make_train_step, train_and_evaluate

__all__ = [
    "NonFiniteLossError",
    "Task",
    "TrainState",
    "apply_overrides",
    "load_config",
    "make_train_step",
    "train_and_evaluate",
]
