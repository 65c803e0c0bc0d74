"""A batch of transitions, as the replay produces and the learner consumes it."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Batch(NamedTuple):
  """Transitions (s, a, r, s', done) for one task slot per row.

  The reward rule (one for every env): a task's success is rewarded once, at the final
  transition of an episode that *ended by termination* (a terminate action, or the env
  ending it on success) with a success label for that task; there the discount is 0. An
  episode cut by the time limit is not terminal: the observation holds no time, so its last
  transition bootstraps like any other (discount 1) and carries no reward.

  Attributes:
    observation: name -> [B, ...] (numpy or JAX arrays).
    action: float32 [B, action_dim].
    reward: float32 [B]; `outcome` at an episode's final transition, else 0.
    discount: float32 [B]; 0 where the episode terminated at s', else 1. The learner
      multiplies this by gamma.
    next_observation: name -> [B, ...].
    task: int32 [B], the task slot each row is trained for.
    outcome: float32 [B] or None; 1 if the row's episode terminated in success at `task`.
    steps_after: float32 [B] or None; transitions after this one in its episode (0 at the
      last), so that outcome * gamma**steps_after is the row's Monte-Carlo return (inf:
      known to succeed, after an unknown number of steps; the bound is then 0).
    state_label: float32 [B] or None; the success label of the row's task at `observation`
      itself (a state labeller's judgement): what terminating there would be judged.
  """

  observation: dict
  action: np.ndarray
  reward: np.ndarray
  discount: np.ndarray
  next_observation: dict
  task: np.ndarray
  outcome: np.ndarray | None = None
  steps_after: np.ndarray | None = None
  state_label: np.ndarray | None = None

  @property
  def size(self) -> int:
    return int(self.action.shape[0])


def check_task_slots(batch: Batch, max_tasks: int) -> None:
  """ValueError unless every row's task slot is in [0, max_tasks) (host arrays only: a
  device array is not pulled back for the check)."""
  task = batch.task
  if isinstance(task, np.ndarray) and task.size and (task.min() < 0 or task.max() >= max_tasks):
    raise ValueError(f"batch.task has slots outside [0, {max_tasks}): "
                     f"{task.min()}..{task.max()}")
