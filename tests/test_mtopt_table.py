"""The MT-Opt experiment's protocol: rare tasks need more than a frequent skill, and every
method and budget gets the same on-policy episodes per task."""

import numpy as np
import pytest

from experiments import mtopt_table as table
from mtopt import envs
from mtopt.config import load_config


def test_no_frequent_success_or_start_state_satisfies_a_rare_task():
  env = envs.make(load_config(table.CONFIG, [f"env.tasks={table.TASKS!r}"]).env)
  names = env.task_names()
  rare = [names.index(t) for t in table.RARE]
  for task in table.FREQUENT:
    for seed in range(5):
      env.reset(task, seed=seed)
      assert not env.success()[rare].any()  # Nothing is done at the start.
      done = False
      while not done:
        _, done, _ = env.step(env.expert_action())
      success = env.success()
      assert success[names.index(task)] and not success[rare].any(), (task, seed)
  env.close()


def _settings():
  return table.Settings(steps_per_task=600, on_policy_per_task_step=0.05)


@pytest.mark.parametrize("budget", table.BUDGETS)
def test_every_method_gets_the_same_on_policy_episodes_per_task(budget):
  s = _settings()
  want = {t: s.on_policy_episodes * w for t, w in zip(table.TASKS, table.WEIGHTS)}
  for method in table.METHODS:
    got = dict.fromkeys(table.TASKS, 0.0)
    steps = 0
    for tasks, overrides in table.network_runs(method, "mixed", budget, s):
      o = dict(x.split("=", 1) for x in overrides)
      n, rate = int(o["learner.num_steps"]), float(o["train.episodes_per_step"])
      steps += n
      for t, w in zip(table.TASKS, table.WEIGHTS):  # The weighted scheduler's shares...
        if t in tasks:  # ...or all of them, for a single-task network's own task.
          got[t] += n * rate * (w if len(tasks) > 1 else 1.0)
    assert got == pytest.approx(want), method
    if budget == "total":  # The primary budget: equal total gradient steps.
      assert steps == s.steps_per_task * len(table.TASKS), method
    for tasks, overrides in table.network_runs(method, "offline", budget, s):
      assert "train.episodes_per_step=0.0" in overrides


def test_result_rows_have_the_issue_format():
  per_seed = {seed: {t: [bool((seed + j) % 3 == 0) for j in range(50)] for t in table.TASKS}
              for seed in (0, 1)}
  row = table.summarize(per_seed)
  assert set(row) >= {"rare_mean", "rare_ci", "frequent_mean", "frequent_ci", "per_task",
                      "seeds"}
  assert row["seeds"] == [0, 1] and set(row["per_task"]) == set(table.TASKS)
  assert row["rare_ci"][0] <= row["rare_mean"] <= row["rare_ci"][1]
  assert np.isclose(sum(table.WEIGHTS), 1.0)
