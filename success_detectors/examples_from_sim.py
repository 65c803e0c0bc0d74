"""Example folders from a simulator's ground truth: experiments play the person giving examples.

`collect_rollouts` runs the env's scripted expert with per-episode noise (clean, Gaussian,
epsilon-random, sticky random actions, early stops), so that outcomes are mixed and
failures include near misses; it keeps each episode's final observation and the ground
truth of every task there, and optionally a few states from along the way (`midway_states`)
with the truth at each: the states a detector is also asked about when it labels states
for the learner, and the nearest misses (a cube held just under a lift's height).
`write_task_examples` turns those into one task's example folder (the `examples`
format): successes are kept states where the task holds, failures are where it does not:
up to half from the task's own attempts (near misses), the rest from other tasks'
episodes (other tasks' successes are the natural negatives).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from success_detectors.examples import write_example_folder


@dataclasses.dataclass
class Rollouts:
  """Final observations of simulated episodes with ground truth.

  Attributes:
    observations: name -> [N, ...] final observations.
    truth: bool [N, len(task_names)], every task's ground-truth success at the end.
    attempted: int [N], index into task_names of the task each episode tried.
    task_names: the env's tasks, in truth's column order.
  """

  observations: dict[str, np.ndarray]
  truth: np.ndarray
  attempted: np.ndarray
  task_names: list[str]

  def __len__(self) -> int:
    return len(self.attempted)

  def take(self, idx) -> "Rollouts":
    return Rollouts({k: v[idx] for k, v in self.observations.items()}, self.truth[idx],
                    self.attempted[idx], self.task_names)


def _noisy_action(env, rng, knobs: dict, state: dict) -> np.ndarray:
  spec = env.spec().action
  a = np.asarray(env.expert_action(), np.float32).copy()
  terminate = a[4] if a.shape[0] == 5 else None
  if state["sticky_left"] == 0 and rng.random() < knobs["sticky_prob"]:
    state["sticky_left"] = 5
    state["sticky"] = rng.uniform(spec.minimum, spec.maximum).astype(np.float32)
  if rng.random() < knobs["epsilon"]:
    a = rng.uniform(spec.minimum, spec.maximum).astype(np.float32)
  elif state["sticky_left"] > 0:
    state["sticky_left"] -= 1
    a = state["sticky"].copy()
  else:
    a = a + rng.normal(0.0, knobs["std"], a.shape).astype(np.float32)
  if terminate is not None:  # Noise never ends an episode by chance.
    a[4] = terminate
  return np.clip(a, spec.minimum, spec.maximum)


def _episode_knobs(rng, clean_fraction: float) -> dict:
  if rng.random() < clean_fraction:
    return {"std": 0.0, "epsilon": 0.0, "sticky_prob": 0.0, "stop_at": None}
  return {"std": float(rng.uniform(0.2, 1.5)), "epsilon": float(rng.uniform(0.0, 0.3)),
          "sticky_prob": float(rng.uniform(0.0, 0.2)),
          # Some episodes stop early: states half-way to success are the hardest failures.
          "stop_at": int(rng.integers(3, 30)) if rng.random() < 0.3 else None}


def collect_rollouts(env, episodes_per_task: int, tasks: Sequence[str] | None = None,
                     clean_fraction: float = 0.4, seed: int = 0,
                     midway_states: int = 0) -> Rollouts:
  """Runs `episodes_per_task` noisy expert episodes of each task; keeps each final state
  and `midway_states` states drawn from the steps before it (fewer in short episodes)."""
  if midway_states < 0:
    raise ValueError(f"midway_states must be >= 0, got {midway_states}")
  names = list(env.task_names())
  tasks = list(tasks) if tasks else names
  rng = np.random.default_rng(seed)
  kept, truth, attempted = [], [], []
  for rep in range(episodes_per_task):
    for task in tasks:
      knobs = _episode_knobs(rng, clean_fraction)
      obs = env.reset(task, seed=int(rng.integers(1 << 31)))
      state = {"sticky_left": 0, "sticky": None}
      done, t, way = False, 0, []
      while not done and (knobs["stop_at"] is None or t < knobs["stop_at"]):
        if midway_states and t:  # Not the reset state: nothing happened there.
          way.append((obs, np.asarray(env.success(), bool)))
        obs, done, _ = env.step(_noisy_action(env, rng, knobs, state))
        t += 1
      picks = rng.permutation(len(way))[:midway_states] if midway_states else []
      for o, ok in [*(way[i] for i in sorted(picks)), (obs, np.asarray(env.success(), bool))]:
        kept.append(o)
        truth.append(ok)
        attempted.append(names.index(task))
  return Rollouts({k: np.stack([o[k] for o in kept]) for k in kept[0]},
                  np.stack(truth), np.asarray(attempted), names)


def select_examples(rollouts: Rollouts, task: str, max_successes: int = 200,
                    max_failures: int = 6000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Indices of (successes, failures) for `task`: at most `max_successes` final states where
  it holds; failures up to half from its own attempts (near misses), the rest from other
  tasks' episodes.

  Failures are cheap and many of them matter: on tabletop, raising the cap from 400 to
  3000 lifted the precision of reach and push tasks from ~0.5 to ~0.8 on held-out episodes,
  and from 3000 to all of them (~5500 of 6000 episodes) the worst task's from 0.88 to 0.97
  (fold heads, one validation set of rollouts): most of a task's chance look-alikes are in
  other tasks' episodes, which only many failures from them cover.
  """
  k = rollouts.task_names.index(task)
  rng = np.random.default_rng(seed)
  pos = np.flatnonzero(rollouts.truth[:, k])
  neg_own = np.flatnonzero(~rollouts.truth[:, k] & (rollouts.attempted == k))
  neg_other = np.flatnonzero(~rollouts.truth[:, k] & (rollouts.attempted != k))
  pos = rng.permutation(pos)[:max_successes]
  own = rng.permutation(neg_own)[:max_failures // 2]
  other = rng.permutation(neg_other)[:max_failures - len(own)]
  return pos, np.concatenate([own, other])


def write_task_examples(rollouts: Rollouts, task: str, folder: str, max_successes: int = 200,
                        max_failures: int = 6000, seed: int = 0) -> tuple[int, int]:
  """Writes `task`'s example folder from rollouts; returns (successes, failures) written."""
  pos, neg = select_examples(rollouts, task, max_successes, max_failures, seed)
  write_example_folder(folder, rollouts.take(pos).observations,
                       rollouts.take(neg).observations, name=task,
                       description=f"ground-truth examples of {task} from the simulator")
  return len(pos), len(neg)
