"""Checkpointing: one orbax ``CheckpointManager`` step holds the train state and the data
iterator's position, so a resumed run is bit-identical to an uninterrupted one.

orbax writes each step to a temporary directory and renames it when complete, so a
crash mid-save never leaves a partial checkpoint that ``latest_step`` would pick up.
"""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Periodic, keep-N, atomic checkpoints under ``directory``.

    Args:
      directory: where step directories are written (created if missing).
      save_every: save when ``step % save_every == 0`` (``save(force=True)`` always saves).
      keep: how many of the newest checkpoints to keep.
    """

    def __init__(self, directory: str, *, save_every: int, keep: int):
        if save_every < 1:
            raise ValueError(f"checkpoint.save_every must be a positive int, got {save_every}")
        if keep < 1:
            raise ValueError(f"checkpoint.keep must be a positive int, got {keep}")
        self.directory = os.path.abspath(directory)
        self.save_every = save_every
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def should_save(self, step: int) -> bool:
        return step % self.save_every == 0

    def save(self, step: int, state: Any, data_state: dict, *, force: bool = False) -> bool:
        """Saves ``state`` (any pytree of arrays) and ``data_state`` (JSON) at ``step``."""
        if not force and not self.should_save(step):
            return False
        if step in self._manager.all_steps():
            return False
        saved = self._manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          data=ocp.args.JsonSave(data_state)),
            force=True)
        self._manager.wait_until_finished()
        return saved

    def restore(self, abstract_state: Any, step: int | None = None):
        """``(state, data_state)`` at ``step`` (default: latest), or ``None`` if there is none.

        ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` with shardings, so
        arrays come back already placed on the mesh.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                          data=ocp.args.JsonRestore()))
        return restored["state"], restored["data"]

    def close(self):
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_like(tree: Any) -> Any:
    """``jax.ShapeDtypeStruct`` twins of the arrays of ``tree``, keeping their shardings."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
