"""Evaluation: per-task success of a policy, judged by the simulator's ground truth.

Evaluation episodes use fixed ids (hence fixed start states, see `episode_seed`), so two
evaluations of different checkpoints see the same scenes.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

EVAL_EPISODE_BASE = 1 << 48  # Far from collection ids (robot_id << 32 + counter).


def evaluate(ray, actors: Sequence, tasks: Sequence[str], episodes_per_task: int,
             max_attempts: int = 3) -> dict[str, float]:
  """Runs `episodes_per_task` of each task spread over `actors` (Ray RobotActors).

  A chunk whose actor dies is run again (Ray restarts the actor) up to `max_attempts`
  times, with the same episode ids, so a crash changes no result.
  Returns task -> success rate in [0, 1] (ground truth for the attempted task).
  """
  from ray.exceptions import RayActorError
  if episodes_per_task < 1 or not actors or not tasks:
    raise ValueError("evaluate: need actors, tasks and episodes_per_task >= 1")
  plan = [t for t in tasks for _ in range(episodes_per_task)]
  chunks = [(a, idx) for a, idx in zip(actors, np.array_split(np.arange(len(plan)), len(actors)))
            if len(idx)]

  def submit(actor, idx):
    return actor.run_episodes.remote(len(idx), EVAL_EPISODE_BASE + int(idx[0]),
                                     [plan[i] for i in idx])

  wins = {t: [] for t in tasks}
  refs = [submit(a, idx) for a, idx in chunks]  # All actors work at once.
  for (actor, idx), ref in zip(chunks, refs):
    for attempt in range(1, max_attempts + 1):
      try:
        episodes = ray.get(ref)
        break
      except RayActorError:
        if attempt == max_attempts:
          raise
        ref = submit(actor, idx)
    for ep, i in zip(episodes, idx):
      wins[plan[i]].append(bool(ep.success[ep.task_id]))
  return {t: float(np.mean(v)) for t, v in wins.items()}
