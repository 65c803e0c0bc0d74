"""Goal-reaching evaluation: goals from held-out episodes' final states, reached or not.

A goal is made by a held-out episode: from start state `start_seed(seed, j)` the env's
scripted experts do one task (kinds `move`: a cube into the bin, onto the plate or next
to another; `lift`: a cube held up) or two tasks one after the other in the same scene
(`two_cubes`), and the final state's goal (`GoalSpec.goal_of`: where every cube is) is
kept where the experts succeeded and the scene changed. The policy then starts from the
same start state with that goal; the episode ends, a success, as soon as the scene
matches the goal (`GoalSpec.reached`), or, a failure, after `horizon` steps (the
experts' own budget: one episode's time limit per task). Every method sees the same
goals and start states (paired).
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from actors.evaluator import start_seed
from mtopt.goals import STATE_KEY, GoalSpec

GOAL_KINDS = {
    "move": [("place_red_in_bin",), ("place_green_on_plate",), ("push_blue_to_red",),
             ("place_blue_in_bin",), ("place_red_on_plate",), ("push_red_to_green",),
             ("place_green_in_bin",), ("place_blue_on_plate",), ("push_green_to_blue",)],
    "lift": [("lift_red",), ("lift_green",), ("lift_blue",)],
    "two_cubes": [("place_red_in_bin", "place_green_on_plate"),
                  ("place_blue_in_bin", "place_red_on_plate"),
                  ("place_green_in_bin", "place_blue_on_plate"),
                  ("place_red_on_plate", "push_green_to_blue"),
                  ("place_blue_in_bin", "push_red_to_green"),
                  ("place_green_on_plate", "push_blue_to_red")],
}
_KIND_SEED = {"move": 0, "lift": 1 << 20, "two_cubes": 2 << 20}  # Disjoint start states.


def make_goals(env, goals: GoalSpec, kinds: Sequence[str], per_kind: int, seed: int,
               max_tries: int = 20) -> list[dict]:
  """`per_kind` goals of each kind: {"kind", "tasks", "seed" (the start state), "goal",
  "horizon"}. `env` is a tabletop env with terminate and every task named in GOAL_KINDS."""
  out = []
  for kind in kinds:
    if kind not in GOAL_KINDS:
      raise ValueError(f"unknown goal kind {kind!r}; known: {', '.join(GOAL_KINDS)}")
    index = 0
    for j in range(per_kind):
      tasks = GOAL_KINDS[kind][j % len(GOAL_KINDS[kind])]
      for _ in range(max_tries):
        s = start_seed(seed, _KIND_SEED[kind] + index)
        index += 1
        goal = _expert_goal(env, goals, tasks, s)
        if goal is not None:
          out.append({"kind": kind, "tasks": list(tasks), "seed": s, "goal": goal,
                      "horizon": env.spec().max_episode_steps * len(tasks)})
          break
      else:
        raise RuntimeError(f"goal kind {kind!r}: the experts failed {max_tries} start states "
                           f"in a row for {tasks}")
  return out


def _expert_goal(env, goals: GoalSpec, tasks: Sequence[str], seed: int):
  """The goal the scripted experts leave after doing `tasks` from start `seed`, or None
  where one failed, undid an earlier one, or nothing moved."""
  start = env.reset(tasks[0], seed=seed)[STATE_KEY]
  names = env.task_names()
  for k, task in enumerate(tasks):
    if k:
      env.reset(task, keep_scene=True)
    done, obs = False, None
    while not done:
      obs, done, _ = env.step(env.expert_action())
    truth = env.success()
    if not all(truth[names.index(t)] for t in tasks[:k + 1]):
      return None
  goal = goals.goal_of(obs[STATE_KEY])
  return None if goals.reached(start, goal) else goal


def evaluate_goals(make_env: Callable, act: Callable, goals: GoalSpec,
                   targets: Sequence[Mapping], num_envs: int = 100) -> np.ndarray:
  """bool [len(targets)]: whether `act(observation batch, goal batch) -> actions` reached
  each target's goal from its start state within its horizon (envs stepped together)."""
  envs = [make_env() for _ in range(min(num_envs, len(targets)))]
  reached = np.zeros(len(targets), bool)
  try:
    for first in range(0, len(targets), len(envs)):
      part = list(range(first, min(first + len(envs), len(targets))))
      obs = {i: env.reset(None, seed=int(targets[i]["seed"])) for env, i in zip(envs, part)}
      env_of = dict(zip(part, envs))
      steps = dict.fromkeys(part, 0)
      live = list(part)
      while live:
        # Padded to the full batch with a live row: one shape, one compile of the policy
        # (as actors.evaluator.rollouts does).
        rows = live + [live[0]] * (len(envs) - len(live))
        batch = {k: np.stack([obs[i][k] for i in rows]) for k in obs[live[0]]}
        goal = np.stack([np.asarray(targets[i]["goal"], np.float32) for i in rows])
        actions = np.asarray(act(batch, goal), np.float32)
        still = []
        for i, a in zip(live, actions):
          obs[i], done, _ = env_of[i].step(a)
          steps[i] += 1
          if goals.reached(obs[i][STATE_KEY], targets[i]["goal"]):
            reached[i] = True
          elif not done and steps[i] < targets[i]["horizon"]:
            still.append(i)
        live = still
  finally:
    for env in envs:
      env.close()
  return reached
