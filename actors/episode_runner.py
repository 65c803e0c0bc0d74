"""Runs one episode of an env with a policy and returns it as a validated Episode."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mtopt.episode import Episode


def success_to_slots(env_success: np.ndarray, env_slots: Sequence[int], max_tasks: int) -> np.ndarray:
  """Maps the env's per-task success (env task order) to bool [max_tasks] by task slot.

  env_slots[i] is the slot of env task i, or -1 for a task without a slot (dropped).
  """
  slots = np.asarray(env_slots, int)
  if slots.shape != np.shape(env_success):
    raise ValueError(f"{len(slots)} slots for {np.size(env_success)} env tasks")
  out = np.zeros(max_tasks, bool)
  keep = slots >= 0
  out[slots[keep]] = np.asarray(env_success, bool)[keep]
  return out


def run_episode(env, policy, task: str | None, task_slot: int, env_slots: Sequence[int],
                max_tasks: int, robot_id: int = 0, episode_id: int = 0,
                seed: int | None = None) -> Episode:
  """One complete episode of `task`; the Episode is validated against `env.spec()`.

  Args:
    env: an mtopt env.
    policy: callable(obs, task_slot) -> action; its reset() (if any) is called first.
    task: the env task name to attempt, or None for a task the env does not define
      (`Env.reset(None)`); task_slot its registry slot.
    env_slots: the registry slot of each of env.task_names() (-1: none), to map ground
      truth.
    max_tasks: the registry's number of slots.
  """
  spec = env.spec()
  if hasattr(policy, "reset"):
    policy.reset()
  obs = env.reset(task, seed=seed)
  observations = {k: [v] for k, v in obs.items()}
  actions = []
  lo, hi = spec.action.minimum, spec.action.maximum
  done, info = False, {}
  while not done:
    action = np.clip(np.asarray(policy(obs, task_slot), np.float32), lo, hi)
    obs, done, info = env.step(action)
    actions.append(action)
    for k, v in obs.items():
      observations[k].append(v)
  ep = Episode(
      observations={k: np.stack(v) for k, v in observations.items()},
      actions=np.stack(actions).astype(np.float32), task_id=int(task_slot),
      robot_id=int(robot_id), episode_id=int(episode_id),
      success=success_to_slots(env.success(), env_slots, max_tasks),
      terminated=bool(info.get("terminated", False)))
  return ep.validate(spec, max_tasks)
