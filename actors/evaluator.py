"""Evaluation: per-task success of a policy, judged by the run's success labeller (the
detector; what a real robot has), with the simulator's ground truth beside it where the
simulator defines the task.

Evaluation episodes use fixed ids (hence fixed start states, see `episode_seed`), so two
evaluations of different checkpoints see the same scenes.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

EVAL_EPISODE_BASE = 1 << 48  # Far from collection ids (robot_id << 32 + counter).


def run_evaluation(ray, actors: Sequence, tasks: Sequence[str], episodes_per_task: int,
                   max_attempts: int = 3) -> dict[str, list]:
  """Runs `episodes_per_task` of each task spread over `actors` (Ray RobotActors).

  A chunk whose actor dies is run again (Ray restarts the actor) up to `max_attempts`
  times, with the same episode ids, so a crash changes no result.
  Returns task -> its episodes, in episode-id order.
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

  out = {t: [] for t in tasks}
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
      out[plan[i]].append(ep)
  return out


def judge(episodes: dict[str, list], labeller: Callable | None, threshold: float = 0.5,
          true_tasks: Sequence[str] = ()) -> dict[str, dict[str, float]]:
  """Success rates of evaluation episodes: {"success": task -> rate as `labeller` judges
  the attempted task (ground truth when there is no labeller), "true": task -> the
  simulator's rate, for the `true_tasks` it defines}."""
  judged, true = {}, {}
  for task, eps in episodes.items():
    own = np.array([bool(ep.success[ep.task_id]) for ep in eps])
    if task in true_tasks:
      true[task] = float(own.mean())
    if labeller is None:
      judged[task] = float(own.mean())
    else:
      labels = np.asarray(labeller(eps))
      judged[task] = float(np.mean([row[ep.task_id] >= threshold
                                    for row, ep in zip(labels, eps)]))
  return {"success": judged, "true": true}


def evaluate(ray, actors: Sequence, tasks: Sequence[str], episodes_per_task: int,
             max_attempts: int = 3) -> dict[str, float]:
  """Task -> the simulator's success rate (`run_evaluation`, judged by ground truth): for
  scripted experts and tests, where the simulator defines every task."""
  episodes = run_evaluation(ray, actors, tasks, episodes_per_task, max_attempts)
  return judge(episodes, None)["success"]


def start_seed(seed: int, index: int) -> int:
  """The env reset seed of evaluation episode `index`: the same start state for every task
  and every method evaluated with `seed` (paired comparisons)."""
  return int(np.random.SeedSequence([seed, EVAL_EPISODE_BASE + index]).generate_state(1)[0])


def rollouts(envs: Sequence, act_batch, tasks: Sequence[str], slots: Sequence[int],
             seeds: Sequence[int]) -> list[dict]:
  """One episode in each of `envs` at once, every step's observations batched into one
  `act_batch(observation dict [B, ...], task slots int32 [B]) -> (actions [B, A], _)` call.

  A task the env does not define starts from `reset(None)`. Returns per env: `success`
  (the env's ground truth for its task at the end; False for a task it does not define),
  `env_success` (its ground truth for every env task), `final` (the final observation),
  `terminated` and `steps`.
  """
  spec = envs[0].spec()
  lo, hi = spec.action.minimum, spec.action.maximum
  names = envs[0].task_names()
  obs = [env.reset(task if task in names else None, seed=s)
         for env, task, s in zip(envs, tasks, seeds)]
  live = list(range(len(envs)))
  out = [{"steps": 0, "terminated": False} for _ in envs]
  while live:
    # Finished episodes' rows are refilled with a live one, so that every call has the
    # same batch size: a jitted policy then compiles once, not once per size as episodes
    # end (that was most of an evaluation's time).
    rows = live + [live[0]] * (len(envs) - len(live))
    batch = {k: np.stack([obs[i][k] for i in rows]) for k in obs[live[0]]}
    actions, _ = act_batch(batch, np.asarray([slots[i] for i in rows], np.int32))
    still = []
    for i, action in zip(live, np.clip(np.asarray(actions, np.float32), lo, hi)):
      obs[i], done, info = envs[i].step(action)
      out[i]["steps"] += 1
      if done:
        truth = envs[i].success()
        out[i].update(success=bool(tasks[i] in names and truth[names.index(tasks[i])]),
                      env_success=truth, final=obs[i],
                      terminated=bool(info.get("terminated", False)))
      else:
        still.append(i)
    live = still
  return out


def evaluate_in_process(make_env, act_batch, tasks: Sequence[str], task_slots: Sequence[int],
                        episodes_per_task: int, seed: int, num_envs: int = 100) -> dict:
  """Greedy evaluation in this process, `num_envs` episodes stepped together.

  Episode j of every task starts from `start_seed(seed, j)`. Returns task -> {"success":
  bool [episodes_per_task], "env_success": bool [episodes_per_task, env tasks], "final":
  observation dict [episodes_per_task, ...], "steps": int [episodes_per_task], "terminated":
  bool [episodes_per_task] (the policy stopped it)}, in episode order, so results of different
  methods pair up episode by episode.
  """
  if episodes_per_task < 1 or not tasks or len(tasks) != len(task_slots):
    raise ValueError("evaluate_in_process: need tasks, their slots and episodes_per_task >= 1")
  plan = [(t, k, j) for t, k in zip(tasks, task_slots) for j in range(episodes_per_task)]
  envs = [make_env() for _ in range(min(num_envs, len(plan)))]
  results = []
  try:
    for first in range(0, len(plan), len(envs)):
      part = plan[first:first + len(envs)]
      results += rollouts(envs[:len(part)], act_batch, [p[0] for p in part],
                          [p[1] for p in part], [start_seed(seed, p[2]) for p in part])
  finally:
    for env in envs:
      env.close()
  out = {}
  for t in tasks:
    rows = [r for p, r in zip(plan, results) if p[0] == t]
    out[t] = {"success": np.array([r["success"] for r in rows]),
              "env_success": np.stack([r["env_success"] for r in rows]),
              "final": {k: np.stack([r["final"][k] for r in rows]) for k in rows[0]["final"]},
              "steps": np.array([r["steps"] for r in rows]),
              "terminated": np.array([r["terminated"] for r in rows])}
  return out
