"""Goal-conditioned Q(s, a, g) (Actionable Models) on the task-conditioned network's parts.

The goal enters as a second observation vector (`mtopt.goals.GOAL_KEY`), so Q(s, a, g)
is the same `QNetwork` (torso once per state, small head per CEM sample, the behaviour
head CEM searches around) with the same update (`learning.update_step`: clipped double-Q
targets by CEM, the Monte-Carlo lower bound, and the bounded artificial negatives, which
here are AM's: random actions pushed toward Q = 0 beside every relabelled row). Goal rows
use one reserved task slot, `goal_slot` (the last), so one network can also hold tasks:
a task-conditioned learner over the same layout (goal inputs zero, flag 0; see
`replay.hindsight.with_goal_inputs`) starts from a goal-conditioned one's parameters as
they are, or trains on both kinds of rows (goal reaching as an auxiliary loss).

Terminate is pinned to "not pressed" in the goal action spec: a goal episode ends when the
scene matches the goal (or at the time limit), so CEM and the negatives never press it.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from mtopt.goals import GOAL_KEY, STATE_KEY, GoalSpec
from mtopt.specs import ArraySpec, BoundedArraySpec, EnvSpec, SpecError


def goal_slot(max_tasks: int) -> int:
  """The task slot goal-reaching rows use: the last."""
  return int(max_tasks) - 1


def with_goal_observation(env_spec: EnvSpec, goals: GoalSpec) -> EnvSpec:
  """`env_spec` with the goal's inputs as a second observation (actions unchanged)."""
  if STATE_KEY not in env_spec.observation or len(env_spec.observation[STATE_KEY].shape) != 1:
    raise SpecError(f"goal-conditioning needs a vector {STATE_KEY!r} observation; the env "
                    f"has {sorted(env_spec.observation)}")
  dim = int(env_spec.observation[STATE_KEY].shape[0])
  goals.check(dim)
  obs = dict(env_spec.observation)
  obs[GOAL_KEY] = ArraySpec((goals.input_dim(dim),), np.float32, GOAL_KEY)
  return dataclasses.replace(env_spec, observation=obs)


def goal_env_spec(env_spec: EnvSpec, goals: GoalSpec) -> EnvSpec:
  """The goal-reaching learner's spec: goal inputs added, terminate pinned to its minimum
  (never pressed) so that shapes stay those of the task-conditioned network."""
  spec = with_goal_observation(env_spec, goals)
  if spec.terminate_dim is None:
    return spec
  a = spec.action
  d = spec.terminate_dim
  maximum = np.array(a.maximum, np.float32)
  maximum[d] = a.minimum[d]
  return dataclasses.replace(spec, action=BoundedArraySpec(a.shape, a.dtype, a.name,
                                                           a.minimum, maximum))


class GoalActing:
  """act(observation batch, goals [B, G]) -> actions [B, A] with a task-slot policy's
  `act_batch` (CEM over Q(s, a, g), or a goal-conditioned BC policy)."""

  def __init__(self, act_batch, goals: GoalSpec, max_tasks: int):
    self._act_batch, self.goals, self._slot = act_batch, goals, goal_slot(max_tasks)

  def __call__(self, observation: Mapping[str, np.ndarray], goal: np.ndarray) -> np.ndarray:
    obs = self.goals.observation(observation, goal)
    actions, _ = self._act_batch(obs, np.full(len(goal), self._slot, np.int32))
    return actions
