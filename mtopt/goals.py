"""Goals for goal-conditioned learning (Actionable Models): what a goal is, when it is reached.

A goal is a later state of the scene, given as chosen entries of the state observation
(tabletop: every object's position, so the goal says where each cube must be and nothing
about the gripper). It is reached when every group of `group` entries (one object's x, y,
z) is within `tolerance` (Euclidean, in the state's units) of the goal's. With no indices
the whole state vector is one group: a distance on the goal's state.

The network sees a goal through `goal_inputs`: the goal, its offset from the current state
(scaled, so centimetres are visible to an unnormalised network) and the offset clipped at
a finer scale, plus a flag that is 1 for a goal and 0 for none (a task-conditioned row
of a network that can take both).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from mtopt.config import ConfigError

GOAL_KEY = "goal"  # The goal's entry in a goal-conditioned observation.
STATE_KEY = "state"
# tabletop: object i's position is state[5 + 7 i : 8 + 7 i] (mtopt/envs/tabletop.py).
TABLETOP_OBJECT_POSITIONS = tuple(5 + 7 * i + k for i in range(3) for k in range(3))


@dataclasses.dataclass(frozen=True)
class GoalSpec:
  """Attributes:
    indices: entries of the state observation that make a goal (empty: all).
    group: entries per distance group (3: one object's position); indices must split
      into whole groups.
    tolerance: a group is at its goal within this distance.
    scale: the goal and its offset are multiplied by this for the network.
    fine_scale, fine_clip: the offset at this scale, clipped to +-fine_clip.
  """

  indices: tuple[int, ...] = ()
  group: int = 3
  tolerance: float = 0.03
  scale: float = 10.0
  fine_scale: float = 100.0
  fine_clip: float = 5.0

  def __post_init__(self):
    object.__setattr__(self, "indices", tuple(int(i) for i in self.indices))
    if any(i < 0 for i in self.indices):
      raise ConfigError(f"goals.indices must be >= 0, got {self.indices}")
    if self.group < 1 or (self.indices and len(self.indices) % self.group):
      raise ConfigError(f"goals.indices ({len(self.indices)}) must split into groups of "
                        f"goals.group={self.group}")
    if not self.tolerance > 0 or not self.scale > 0 or not self.fine_scale > 0 \
        or not self.fine_clip > 0:
      raise ConfigError("goals.tolerance, scale, fine_scale and fine_clip must be > 0")

  @classmethod
  def from_config(cls, section: Mapping[str, Any]) -> "GoalSpec":
    values = dict(section.to_dict() if hasattr(section, "to_dict") else section)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ConfigError(f"unknown key(s) in goals: {', '.join(unknown)}; known: "
                        f"{', '.join(sorted(known))}")
    return cls(**values)

  def check(self, state_dim: int) -> None:
    """ConfigError unless the indices fit a state of `state_dim` entries."""
    if self.indices and max(self.indices) >= state_dim:
      raise ConfigError(f"goals.indices reach entry {max(self.indices)} of a "
                        f"{state_dim}-entry state")

  def goal_dim(self, state_dim: int) -> int:
    return len(self.indices) or state_dim

  def input_dim(self, state_dim: int) -> int:
    """Width of `goal_inputs`: goal, offset, fine offset, flag."""
    return 3 * self.goal_dim(state_dim) + 1

  # Goals.
  def goal_of(self, state: np.ndarray) -> np.ndarray:
    """The goal a state is ([..., D] -> [..., G])."""
    state = np.asarray(state, np.float32)
    return state[..., list(self.indices)] if self.indices else state

  def distances(self, state: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """Per-group distances [..., groups] of a state to a goal."""
    return self.goal_distances(self.goal_of(state), goal)

  def goal_distances(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-group distances [..., groups] between two goals."""
    diff = np.asarray(a, np.float32) - np.asarray(b, np.float32)
    groups = self.group if self.indices else diff.shape[-1]
    return np.linalg.norm(diff.reshape((*diff.shape[:-1], diff.shape[-1] // groups, groups)),
                          axis=-1)

  def reached(self, state: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """bool [...]: every group of the state within `tolerance` of the goal's."""
    return self.matches(self.goal_of(state), goal)

  def matches(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """bool [...]: goal `a` is within tolerance of goal `b` in every group."""
    return np.all(self.goal_distances(a, b) < self.tolerance, axis=-1)

  def goal_inputs(self, state: np.ndarray, goal: np.ndarray | None) -> np.ndarray:
    """float32 [..., input_dim]: what the network sees of `goal` from `state` (zeros and
    flag 0 for None)."""
    state = np.asarray(state, np.float32)
    current = self.goal_of(state)
    if goal is None:
      return np.zeros((*current.shape[:-1], 3 * current.shape[-1] + 1), np.float32)
    goal = np.broadcast_to(np.asarray(goal, np.float32), current.shape)
    offset = goal - current
    flag = np.ones((*current.shape[:-1], 1), np.float32)
    return np.concatenate([goal * self.scale, offset * self.scale,
                           np.clip(offset * self.fine_scale, -self.fine_clip, self.fine_clip),
                           flag], axis=-1).astype(np.float32)

  def observation(self, observation: Mapping[str, np.ndarray],
                  goal: np.ndarray | None) -> dict[str, np.ndarray]:
    """A goal-conditioned observation: the env's plus `GOAL_KEY`."""
    out = dict(observation)
    out[GOAL_KEY] = self.goal_inputs(observation[STATE_KEY], goal)
    return out
