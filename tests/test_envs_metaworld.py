"""The Meta-World adapter: spec, MT10/MT50 names, seeded resets, latched success, experts."""

import numpy as np
import pytest

from mtopt import envs
from mtopt.envs.metaworld_env import MT10, OBS_DIM, MetaWorldEnv, benchmark_tasks


@pytest.fixture(scope="module")
def env():
  e = MetaWorldEnv(tasks_subset=["reach-v3", "push-v3"], max_episode_steps=150)
  yield e
  e.close()


def test_benchmark_names():
  assert benchmark_tasks("MT10") == list(MT10)
  mt50 = benchmark_tasks("mt50")
  assert len(mt50) == 50 and set(MT10) <= set(mt50)
  with pytest.raises(envs.EnvError, match="MT10 or MT50"):
    benchmark_tasks("MT3")
  with pytest.raises(envs.EnvError, match="unknown task 'reach-v2'"):
    MetaWorldEnv(tasks_subset=["reach-v2"])


def test_spec_and_step(env):
  spec = env.spec()
  assert spec.observation["state"].shape == (OBS_DIM,) and spec.action.shape == (5,)
  obs = env.reset("reach-v3", seed=0)
  spec.observation["state"].check(obs["state"])
  obs, done, info = env.step(np.zeros(5, np.float32))
  spec.observation["state"].check(obs["state"])
  assert not done and info["success"].shape == (2,) and info["success"].dtype == bool


def test_seeded_resets_are_reproducible_and_randomised(env):
  a = env.reset("push-v3", seed=1)["state"]
  b = env.reset("push-v3", seed=1)["state"]
  c = env.reset("push-v3", seed=2)["state"]
  assert np.array_equal(a, b)
  assert not np.array_equal(a[36:], c[36:]), "the goal should change with the seed"


def test_expert_succeeds_and_success_is_latched(env):
  env.reset("reach-v3", seed=3)
  k = env.task_names().index("reach-v3")
  info = {}
  for _ in range(150):
    act = env.expert_action()
    if act[4] > 0:  # The expert terminates after success; keep going instead.
      break
    _, done, info = env.step(act)
  assert info["success"][k], "the scripted expert should reach the goal"
  assert not info["success"][1 - k], "other tasks are other scenes: never reported"
  # Move the hand away until Meta-World itself no longer reports success.
  for _ in range(30):
    _, done, info = env.step(np.array([0, 0, 1, 0, -1], np.float32))
    if not info["success_now"] or done:
      break
  assert not info["success_now"]
  assert info["success"][k] and env.success()[k], "first success stays latched"


def test_make_metaworld_from_name():
  e = envs.make("metaworld", tasks=["drawer-close-v3"], max_episode_steps=20)
  obs = e.reset("drawer-close-v3", seed=0)
  assert obs["state"].dtype == np.float32 and e.spec().max_episode_steps == 20
  with pytest.raises(envs.EnvError, match="only 'state'"):
    envs.make("metaworld", observation="image")


def test_end_on_success_and_action_repeat():
  e = MetaWorldEnv(tasks_subset=["reach-v3"], max_episode_steps=60, terminate_action=False,
                   end_on_success=True, action_repeat=3)
  assert e.spec().action.shape == (4,)
  steps = {}
  for repeat, env in ((3, e), (1, MetaWorldEnv(tasks_subset=["reach-v3"], max_episode_steps=200,
                                               terminate_action=False, end_on_success=True))):
    env.reset("reach-v3", seed=4)
    done, t, info = False, 0, {}
    while not done:
      _, done, info = env.step(env.expert_action())
      t += 1
    assert info["success"][0] and info["success_now"], "the episode ends at its first success"
    steps[repeat] = t
    env.close()
  # Each action moves the simulator `repeat` times, so the expert needs about a third.
  assert steps[3] < 0.5 * steps[1]
  with pytest.raises(envs.EnvError, match="action_repeat"):
    MetaWorldEnv(max_episode_steps=200, action_repeat=3)


def test_relative_features_are_differences_in_decimetres():
  e = MetaWorldEnv(tasks_subset=["push-v3"], relative_features=True)
  assert e.spec().observation["state"].shape == (OBS_DIM + 9,)
  obs = e.reset("push-v3", seed=0)["state"]
  hand, obj, goal = obs[0:3], obs[4:7], obs[36:39]
  np.testing.assert_allclose(obs[OBS_DIM:], np.concatenate(
      [10 * (obj - hand), 10 * (goal - obj), 10 * (goal - hand)]), rtol=1e-5, atol=1e-6)
  e.close()
