"""Orbax checkpoints of the whole TrainingState (params, both targets, optimiser, step, RNG)."""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from learners.learning import TrainingState


class Checkpointer:
  """Saves and restores TrainingStates under `directory/<step>/`, keeping the newest few."""

  def __init__(self, directory: str, max_to_keep: int = 3):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                                             create=True))

  def save(self, state: TrainingState, wait: bool = True) -> int:
    """Writes `state` at its step; returns the step. `wait=False` leaves the write async."""
    step = int(jax.device_get(state.step))
    # A step already written (e.g. by the periodic save) is the same state: keep it.
    if wait:
      self._manager.wait_until_finished()
    if step not in self._manager.all_steps():
      self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
    if wait:
      self._manager.wait_until_finished()
    return step

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def restore(self, like: TrainingState, step: int | None = None) -> TrainingState:
    """Restores the checkpoint at `step` (default: latest) with `like`'s structure and dtypes.

    Raises:
      FileNotFoundError: no checkpoint (at that step) in the directory.
    """
    self._manager.wait_until_finished()
    step = self.latest_step() if step is None else step
    if step is None or step not in self._manager.all_steps():
      raise FileNotFoundError(f"no learner checkpoint"
                              f"{'' if step is None else f' at step {step}'} in {self.directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    return TrainingState(*restored) if not isinstance(restored, TrainingState) else restored

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
