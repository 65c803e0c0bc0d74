"""Episodes for the replay tests: observations encode (episode id, step) so rows can be traced."""

import numpy as np

from mtopt.episode import Episode
from mtopt.specs import ArraySpec, BoundedArraySpec, EnvSpec

MAX_TASKS = 6
SPEC = EnvSpec({"state": ArraySpec((4,), np.float32, "state"),
                "image": ArraySpec((8, 8, 3), np.uint8, "image")},
               BoundedArraySpec((3,), np.float32, "action", -1.0, 1.0), max_episode_steps=10)


def make_episode(rng, episode_id, task_id, success, labelled=True, steps=None):
  """An episode whose state[t] = (episode_id, t, noise, noise)."""
  t_len = int(rng.integers(1, SPEC.max_episode_steps + 1)) if steps is None else steps
  state = rng.normal(size=(t_len + 1, 4)).astype(np.float32)
  state[:, 0] = episode_id
  state[:, 1] = np.arange(t_len + 1)
  success = np.asarray(success, bool)
  return Episode(
      observations={"state": state,
                    "image": rng.integers(0, 256, (t_len + 1, 8, 8, 3), dtype=np.uint8)},
      actions=rng.uniform(-1, 1, (t_len, 3)).astype(np.float32), task_id=int(task_id),
      robot_id=int(episode_id % 3), episode_id=int(episode_id), success=success,
      labels=success.astype(np.float32) if labelled else None, terminated=bool(episode_id % 2))


def random_episodes(rng, n, slots, p_success=0.3, first_id=0):
  return [make_episode(rng, first_id + i, rng.choice(slots), rng.random(MAX_TASKS) < p_success)
          for i in range(n)]


def ground_truth_labeller(episodes):
  """A labeller built from the simulator's ground truth."""
  return np.stack([np.asarray(e.success, np.float32) for e in episodes])
