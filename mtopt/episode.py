"""The Episode: one robot attempt at one task, as a struct of arrays.

It maps 1:1 to an RLDS episode (see `mtopt/rlds_format.py`): observations[t] is step t's
observation, actions[t] the action taken there, and the final observation is the last
step's (`is_last`, no action).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from mtopt.specs import EnvSpec, SpecError


class EpisodeError(SpecError):
  """An episode is malformed; the message names the episode and the field."""


@dataclasses.dataclass
class Episode:
  """Attributes:
    observations: name -> array [T+1, ...]; the last entry is the final observation.
    actions: float32 [T, action_dim].
    task_id: the task slot the episode was collected for.
    robot_id: which robot (or simulated actor) collected it.
    episode_id: unique per run (e.g. robot_id * 2**32 + counter).
    success: optional ground truth from the simulator, bool [max_tasks] (never a training
      reward unless a config says so).
    labels: optional success probabilities from the detector, float32 [max_tasks].
    terminated: True if the episode ended by a terminate action or a terminal state
      (then the last transition has done=1); False if it hit the time limit.
  """

  observations: dict[str, np.ndarray]
  actions: np.ndarray
  task_id: int
  robot_id: int = 0
  episode_id: int = 0
  success: np.ndarray | None = None
  labels: np.ndarray | None = None
  terminated: bool = False

  @property
  def num_steps(self) -> int:
    """T, the number of actions (transitions)."""
    return int(self.actions.shape[0])

  @property
  def final_observation(self) -> dict[str, np.ndarray]:
    return {k: v[-1] for k, v in self.observations.items()}

  def validate(self, spec: EnvSpec, max_tasks: int) -> "Episode":
    """Raises EpisodeError naming the problem unless the episode matches `spec`."""
    where = f"episode {self.episode_id} (robot {self.robot_id})"
    try:
      if not isinstance(self.actions, np.ndarray) or self.actions.ndim < 1:
        raise SpecError("actions: expected an array [T, ...]")
      t = self.actions.shape[0]
      if t < 1:
        raise SpecError("empty episode: no actions")
      if t > spec.max_episode_steps:
        raise SpecError(f"actions: {t} steps exceeds max_episode_steps={spec.max_episode_steps}")
      spec.action.check(self.actions, (t,), "actions")
      if not isinstance(self.observations, Mapping):
        raise SpecError("observations: expected a dict of arrays")
      missing = set(spec.observation) - set(self.observations)
      extra = set(self.observations) - set(spec.observation)
      if missing or extra:
        raise SpecError(f"observations: missing {sorted(missing)}, unexpected {sorted(extra)}")
      for name, s in spec.observation.items():
        s.check(self.observations[name], (t + 1,), f"observations/{name}")
      for name in ("task_id", "robot_id", "episode_id"):
        v = getattr(self, name)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
          raise SpecError(f"{name}: expected an int, got {type(v).__name__}")
      if not 0 <= self.task_id < max_tasks:
        raise SpecError(f"task_id: slot {self.task_id} outside [0, {max_tasks})")
      if self.success is not None:
        s = np.asarray(self.success)
        if s.shape != (max_tasks,) or s.dtype != np.bool_:
          raise SpecError(f"success: expected bool [{max_tasks}], got {s.dtype} {s.shape}")
      if self.labels is not None:
        lab = np.asarray(self.labels)
        if lab.shape != (max_tasks,) or lab.dtype != np.float32:
          raise SpecError(f"labels: expected float32 [{max_tasks}], got {lab.dtype} {lab.shape}")
        if not np.all((lab >= 0) & (lab <= 1)):  # also rejects NaN
          raise SpecError("labels: values must be probabilities in [0, 1]")
    except SpecError as e:
      raise EpisodeError(f"{where}: {e}") from None
    return self

  def with_labels(self, labels: np.ndarray) -> "Episode":
    return dataclasses.replace(self, labels=np.asarray(labels, np.float32))
