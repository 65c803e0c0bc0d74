"""Batched evaluation rollouts: one batch size for every policy call, rows mapped right."""

import numpy as np

from actors.evaluator import rollouts
from mtopt import envs


def test_every_call_has_the_full_batch_and_episodes_end_on_their_own_steps():
  group = [envs.make("tabletop", tasks=["reach_red", "lift_red"], max_episode_steps=10)
           for _ in range(4)]
  spec = group[0].spec()
  sizes, calls = [], [0]

  def act_batch(observation, task):
    # Slot s presses terminate on its (s + 1)-th step: episodes end at different times.
    sizes.append(len(task))
    assert all(len(v) == len(task) for v in observation.values())
    calls[0] += 1
    actions = np.zeros((len(task), spec.action.shape[0]), np.float32)
    actions[:, spec.terminate_dim] = np.where(calls[0] > task, 1.0, -1.0)
    return actions, np.zeros(len(task))

  slots = [0, 2, 1, 3]
  out = rollouts(group, act_batch, ["reach_red"] * 4, slots, seeds=[1, 2, 3, 4])
  assert sizes == [4] * 4  # The jitted policy sees one shape, however many are live.
  assert [o["steps"] for o in out] == [s + 1 for s in slots]
  assert all(o["terminated"] for o in out)


def test_evaluate_in_process_reports_each_episodes_steps_and_termination():
  from actors.evaluator import evaluate_in_process
  make = lambda: envs.make("tabletop", tasks=["reach_red"], max_episode_steps=6)  # noqa: E731
  with make() as env:
    spec = env.spec()

  def act_batch(observation, task):  # Never stops: every episode runs to the time limit.
    actions = np.zeros((len(task), spec.action.shape[0]), np.float32)
    actions[:, spec.terminate_dim] = -1.0
    return actions, np.zeros(len(task))

  out = evaluate_in_process(make, act_batch, ["reach_red"], [0], 3, seed=0)["reach_red"]
  np.testing.assert_array_equal(out["steps"], [6, 6, 6])
  assert not out["terminated"].any() and out["success"].shape == (3,)
