"""A small chain MDP with analytic Q*, shared by the learner tests.

Positions 0..n-1, observation one-hot. One continuous action in [-1, 1]: a > 0 moves right,
otherwise left (clamped at the ends). Task 0's goal is the right end, task 1's the left;
reaching the goal gives reward 1 and ends the episode. So Q*(s, a, task) =
gamma ** (steps from s' to the goal).
"""

import numpy as np

from mtopt.batch import Batch
from mtopt.specs import ArraySpec, BoundedArraySpec, EnvSpec

N = 5
GOALS = (N - 1, 0)


def env_spec() -> EnvSpec:
  return EnvSpec({"state": ArraySpec((N,), np.float32)},
                 BoundedArraySpec((1,), np.float32, "action", -1.0, 1.0), 20)


def next_position(pos, action):
  return np.clip(pos + np.where(action > 0, 1, -1), 0, N - 1)


def analytic_q(pos, action, task, gamma):
  nxt = next_position(pos, action)
  goal = np.asarray(GOALS)[task]
  return gamma ** np.abs(nxt - goal)


def random_batch(rng: np.random.Generator, batch_size: int, low: float = -1.0) -> Batch:
  """Random transitions, actions uniform in [low, 1]."""
  task = rng.integers(0, 2, batch_size)
  goal = np.asarray(GOALS)[task]
  # Start anywhere but the task's goal (the episode has ended there).
  pos = (goal + rng.integers(1, N, batch_size)) % N
  action = rng.uniform(low, 1, (batch_size, 1)).astype(np.float32)
  nxt = next_position(pos, action[:, 0])
  done = nxt == goal
  eye = np.eye(N, dtype=np.float32)
  return Batch({"state": eye[pos]}, action, done.astype(np.float32),
               (~done).astype(np.float32), {"state": eye[nxt]}, task.astype(np.int32))


def batches(seed: int, batch_size: int):
  rng = np.random.default_rng(seed)
  while True:
    yield random_batch(rng, batch_size)
