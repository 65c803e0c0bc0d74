"""A batch of transitions, as the replay produces and the learner consumes it."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Batch(NamedTuple):
  """Transitions (s, a, r, s', done) for one task slot per row.

  Attributes:
    observation: name -> [B, ...] (numpy or JAX arrays).
    action: float32 [B, action_dim].
    reward: float32 [B]; 1 at the final step of an episode that succeeded at `task`.
    discount: float32 [B]; 0 where the episode ended at s' (done), else 1. The learner
      multiplies this by gamma.
    next_observation: name -> [B, ...].
    task: int32 [B], the task slot each row is trained for.
  """

  observation: dict
  action: np.ndarray
  reward: np.ndarray
  discount: np.ndarray
  next_observation: dict
  task: np.ndarray

  @property
  def size(self) -> int:
    return int(self.action.shape[0])
