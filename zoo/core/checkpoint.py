"""Orbax checkpoints of the whole TrainState; a rerun of the same command resumes."""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp


def saved_steps(directory: Path) -> list[int]:
    """The steps saved under ``directory`` (orbax names each step's folder by its number), ascending;
    ``[]`` if it does not exist. Unlike :class:`Checkpointer` it creates nothing."""
    directory = Path(directory)
    return sorted(int(d.name) for d in directory.iterdir() if d.name.isdigit()) if directory.is_dir() else []


class Checkpointer:
    """Saves every ``TrainState`` it is given under ``<workdir>/checkpoints/<step>``."""

    def __init__(self, directory: Path, max_to_keep: int = 3):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
        )
        self._manager = ocp.CheckpointManager(Path(directory).absolute(), options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state) -> None:
        self._manager.save(step, args=ocp.args.StandardSave(state))
        self._manager.wait_until_finished()

    def restore(self, like, step: int | None = None):
        """Restores into the structure, shapes, dtypes and shardings of ``like``."""
        step = self.latest_step() if step is None else step
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like
        )
        try:
            return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except ValueError as error:
            if "tree structures do not match" not in str(error):
                raise
            raise ValueError(
                f"the checkpoint of step {step} in {self._manager.directory} holds a state of another "
                "structure than this run's config builds (was the model, the optimizer or train.ema_decay "
                "changed? a run keeps its config): use a new workdir, or the run's own config.json"
            ) from error

    def close(self) -> None:
        self._manager.close()
