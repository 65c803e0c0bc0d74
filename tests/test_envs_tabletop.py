"""The tabletop env: specs, task predicates, scripted experts, determinism, images."""

import numpy as np
import pytest

from mtopt import envs
from mtopt.envs import tabletop_scene as scene
from mtopt.envs import tabletop_tasks as tasks
from mtopt.envs.tabletop import PROPRIO_DIM, STATE_DIM, TabletopEnv

HALF = tasks.HALF
NAMES = list(tasks.TASK_NAMES)


@pytest.fixture(scope="module")
def env():
  e = TabletopEnv(max_episode_steps=60)
  yield e
  e.close()


def resting(i, x, y, surface=0.0):
  return np.array([x, y, surface + HALF[i]])


def far_apart_scene():
  """Objects on the table, far from each other, the bin and the plate; tip high."""
  pos = np.stack([resting(0, -0.2, -0.15), resting(1, -0.2, 0.15), resting(2, 0.0, 0.0)])
  return np.array([0.0, 0.2, 0.2]), pos


def idx(name):
  return NAMES.index(name)


def test_spec_state_and_action():
  e = TabletopEnv()
  spec = e.spec()
  assert spec.observation["state"].shape == (STATE_DIM,)
  assert spec.observation["state"].dtype == np.float32
  assert spec.action.shape == (5,)
  assert np.all(spec.action.minimum == -1) and np.all(spec.action.maximum == 1)
  assert TabletopEnv(terminate_action=False).spec().action.shape == (4,)
  assert len(e.task_names()) >= 8
  obs = e.reset(NAMES[0], seed=0)
  spec.observation["state"].check(obs["state"])


def test_neutral_scene_satisfies_no_task():
  tip, pos = far_apart_scene()
  assert not tasks.success_all(tip, pos).any()


@pytest.mark.parametrize("i", range(3))
def test_reach_lift_bin_plate_predicates(i):
  tip, pos = far_apart_scene()
  name = scene.OBJECTS[i].name
  # Reach: tip just above the object's top; false 3 cm off.
  s = tasks.success_all(tasks.reach_point(pos, i), pos)
  assert s[idx(f"reach_{name}")] and s.sum() == 1
  assert not tasks.success_all(tasks.reach_point(pos, i) + [0.03, 0, 0], pos)[idx(f"reach_{name}")]
  # Lift: bottom 6 cm up; 3 cm up is not enough.
  up = pos.copy()
  up[i, 2] = HALF[i] + 0.06
  assert tasks.success_all(tip, up)[idx(f"lift_{name}")]
  up[i, 2] = HALF[i] + 0.03
  assert not tasks.success_all(tip, up)[idx(f"lift_{name}")]
  # In the bin: resting on its floor inside; not when outside or hovering above it.
  inb = pos.copy()
  inb[i] = resting(i, *scene.BIN.center, surface=scene.BIN.top)
  assert tasks.success_all(tip, inb)[idx(f"place_{name}_in_bin")]
  inb[i, 0] += scene.BIN.half_extent + 0.01
  assert not tasks.success_all(tip, inb)[idx(f"place_{name}_in_bin")]
  inb[i] = resting(i, *scene.BIN.center, surface=0.1)
  assert not tasks.success_all(tip, inb)[idx(f"place_{name}_in_bin")]
  # On the plate: resting on it; not beside it, not above it.
  onp = pos.copy()
  onp[i] = resting(i, *scene.PLATE.center, surface=scene.PLATE.top)
  s = tasks.success_all(tip, onp)
  assert s[idx(f"place_{name}_on_plate")] and not s[idx(f"place_{name}_in_bin")]
  onp[i, 1] += scene.PLATE.half_extent + 0.01
  assert not tasks.success_all(tip, onp)[idx(f"place_{name}_on_plate")]
  onp[i] = resting(i, *scene.PLATE.center, surface=0.08)
  assert not tasks.success_all(tip, onp)[idx(f"place_{name}_on_plate")]


@pytest.mark.parametrize("a,b", tasks.PUSH_PAIRS)
def test_push_predicate(a, b):
  tip, pos = far_apart_scene()
  name = f"push_{scene.OBJECTS[a].name}_to_{scene.OBJECTS[b].name}"
  near = pos.copy()
  near[a, :2] = pos[b, :2] + [HALF[a] + HALF[b] + 0.01, 0.0]
  assert tasks.success_all(tip, near)[idx(name)]
  far = near.copy()
  far[a, 0] += 0.05
  assert not tasks.success_all(tip, far)[idx(name)]
  lifted = near.copy()
  lifted[a, 2] += 0.05  # Held next to it in the air is not a push.
  assert not tasks.success_all(tip, lifted)[idx(name)]


def test_env_success_matches_predicates_after_reset(env):
  for seed in range(20):
    env.reset(NAMES[0], seed=seed)
    assert not env.success().any(), "a fresh scene must not satisfy any task"
    assert np.array_equal(env.success(), tasks.success_all(env.data.mocap_pos[0],
                                                            env._object_pos()))


def run_expert(env, task, seed):
  env.reset(task, seed=seed)
  done, info = False, {}
  while not done:
    _, done, info = env.step(env.expert_action())
  return info


@pytest.mark.parametrize("task", NAMES)
def test_scripted_expert_succeeds_in_simulation(env, task):
  wins = [run_expert(env, task, seed)["success"][idx(task)] for seed in range(10)]
  assert np.mean(wins) >= 0.9, f"{task}: {wins}"


@pytest.mark.slow
def test_scripted_experts_succeed_95_percent(env):
  for task in NAMES:
    wins = [run_expert(env, task, seed)["success"][idx(task)] for seed in range(100, 200)]
    assert np.mean(wins) >= 0.95, f"{task}: {np.mean(wins):.2f}"


def test_same_seed_same_episode_different_seed_different():
  def trajectory(seed):
    e = TabletopEnv()
    obs = [e.reset("place_red_in_bin", seed=seed)["state"]]
    done = False
    while not done:
      o, done, _ = e.step(e.expert_action())
      obs.append(o["state"])
    return np.stack(obs)

  a, b, c = trajectory(7), trajectory(7), trajectory(8)
  assert np.array_equal(a, b)
  assert a.shape != c.shape or not np.array_equal(a, c)


def test_env_seed_controls_unseeded_resets():
  x = TabletopEnv(seed=3).reset("lift_red")["state"]
  y = TabletopEnv(seed=3).reset("lift_red")["state"]
  z = TabletopEnv(seed=4).reset("lift_red")["state"]
  assert np.array_equal(x, y) and not np.array_equal(x, z)


def test_terminate_ends_episode_without_moving(env):
  obs = env.reset("reach_red", seed=0)
  o, done, info = env.step(np.array([1, 1, 1, -1, 1], np.float32))
  assert done and info["terminated"]
  np.testing.assert_allclose(o["state"][:3], obs["state"][:3])
  with pytest.raises(envs.EnvError, match="after the episode ended"):
    env.step(np.zeros(5, np.float32))


def test_time_limit_ends_episode_not_terminated():
  e = TabletopEnv(max_episode_steps=3)
  e.reset("lift_red", seed=0)
  dones = [e.step(np.array([0, 0, 0, -1, -1], np.float32))[1:] for _ in range(3)]
  assert [d for d, _ in dones] == [False, False, True]
  assert not dones[-1][1]["terminated"]


def test_bad_inputs_are_named(env):
  with pytest.raises(envs.EnvError, match="unknown task 'fly'"):
    env.reset("fly")
  env.reset("lift_red", seed=0)
  with pytest.raises(envs.EnvError, match="expected shape"):
    env.step(np.zeros(3, np.float32))
  with pytest.raises(envs.EnvError, match="NaN"):
    env.step(np.full(5, np.nan, np.float32))
  with pytest.raises(envs.EnvError, match="observation"):
    TabletopEnv(observation="lidar")


def test_gripper_grasps_and_carries_object(env):
  env.reset("lift_blue", seed=1)
  for _ in range(60):
    _, done, info = env.step(env.expert_action())
    if info["held"] == 2:
      break
  assert info["held"] == 2
  z0 = env._object_pos()[2, 2]
  env.step(np.array([0, 0, 1, 1, -1], np.float32))
  assert env._object_pos()[2, 2] == pytest.approx(z0 + scene.MAX_DELTA, abs=2e-3)
  env.step(np.array([0, 0, 0, -1, -1], np.float32))  # Open: it drops.
  for _ in range(10):
    env.step(np.array([0, 0, 0, -1, -1], np.float32))
  assert env._object_pos()[2, 2] == pytest.approx(HALF[2], abs=3e-3)


def test_image_observations():
  e = TabletopEnv(observation="image")
  spec = e.spec()
  assert spec.observation["image"].shape == (64, 64, 3)
  assert spec.observation["state"].shape == (PROPRIO_DIM,)
  a = e.reset("lift_red", seed=0)
  spec.observation["image"].check(a["image"])
  spec.observation["state"].check(a["state"])
  assert a["image"].std() > 5, "the frame should show a scene, not a flat colour"
  b, _, _ = e.step(np.array([1, 1, -1, -1, -1], np.float32))
  assert np.abs(a["image"].astype(int) - b["image"]).sum() > 0, "moving the gripper changes the frame"
  c = e.reset("lift_red", seed=0)
  assert np.array_equal(a["image"], c["image"])
  e.close()


def test_make_from_config_section_and_name():
  from mtopt.config import load_config
  import os
  from tests.conftest import ROOT
  config = load_config(os.path.join(ROOT, "configs/tabletop_state.py"))
  e = envs.make(config.env, seed=0)
  assert e.spec().max_episode_steps == config.env.max_episode_steps
  assert e.task_names() == (list(config.env.tasks) or NAMES)
  assert envs.make({"name": "tabletop", "tasks": []}).task_names() == NAMES  # [] means all.
  e2 = envs.make("tabletop", tasks=["lift_red", "reach_blue"], max_episode_steps=9)
  assert e2.task_names() == ["lift_red", "reach_blue"] and e2.spec().max_episode_steps == 9
  with pytest.raises(envs.EnvError, match="unknown env 'pybullet'"):
    envs.make("pybullet")
  with pytest.raises(envs.EnvError, match="bad env option"):
    envs.make("tabletop", gravity=3)
  with pytest.raises(envs.EnvError, match="unknown task"):
    envs.make("tabletop", tasks=["lift_purple"])


def test_fine_features_are_clipped_centimetre_offsets():
  from mtopt.envs.tabletop import FINE_CLIP, FINE_DIM
  with TabletopEnv(fine_features=True, seed=0) as env:
    obs = env.reset("reach_red", seed=3)["state"]
    assert env.spec().observation["state"].shape == (STATE_DIM + FINE_DIM,)
    coarse, fine = obs[STATE_DIM - FINE_DIM:STATE_DIM], obs[STATE_DIM:]
    np.testing.assert_allclose(fine, np.clip(coarse * 10, -FINE_CLIP, FINE_CLIP), atol=1e-4)
    for _ in range(30):  # Move the tip onto the red cube: its fine offsets unclip.
      obs = env.step(env.expert_action())[0]["state"]
      if np.abs(obs[STATE_DIM:STATE_DIM + 3]).max() < FINE_CLIP:
        break
    assert np.abs(obs[STATE_DIM:STATE_DIM + 3]).max() < FINE_CLIP


def test_judge_states_matches_success_on_noisy_expert_states():
  """`judge_states` (vectorised, from state observations) judges every state as `success()`
  judges the env's current one, over states of every task's noisy expert."""
  env = TabletopEnv(fine_features=True, seed=3, tasks_subset=("reach_red", "lift_blue",
                                                              "place_green_on_plate"))
  rng = np.random.default_rng(0)
  states, truth = [], []
  for e in range(6):
    env.reset(env.task_names()[e % 3])
    done = False
    while not done:
      a = env.expert_action() if rng.random() > 0.3 else rng.uniform(-1, 1, 5)
      a[4] = a[4] if rng.random() < 0.02 else -1.0
      obs, done, _ = env.step(a)
      states.append(obs["state"])
      truth.append(env.success())
  judged = env.judge_states({"state": np.stack(states)})
  np.testing.assert_array_equal(judged, np.stack(truth))
  assert np.stack(truth).any(0).sum() >= 2  # Successes of more than one task were judged.
  image = TabletopEnv(observation="image")
  with pytest.raises(envs.EnvError, match="judge_states needs state observations"):
    image.judge_states({"state": np.zeros((1, PROPRIO_DIM), np.float32)})
  image.close()
