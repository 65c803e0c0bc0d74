"""Actors: schedulers, noise knobs, episode runner, RobotActor, and a fleet that survives a
killed actor."""

import time

import numpy as np
import pytest

from mtopt.envs.tabletop import TabletopEnv
from mtopt.envs.tabletop_tasks import TASK_NAMES
from mtopt.tasks import TaskRegistry
from mtopt.specs import BoundedArraySpec

from actors.episode_runner import run_episode, success_to_slots
from actors.fleet import Fleet
from actors.policies import NoisyPolicy, RandomPolicy, ScriptedPolicy, make_policy
from actors.robot_actor import RobotActor
from actors.task_scheduler import (TaskScheduler, UnderperformingScheduler, WeightedScheduler,
                                   make_scheduler)

TASKS = list(TASK_NAMES)
ENV = {"name": "tabletop", "max_episode_steps": 50}


def registry():
  # Slots deliberately not in env order, with a gap: mapping must go by name.
  reg = TaskRegistry(20)
  for i, name in enumerate(reversed(TASKS)):
    reg.add(name, slot=i + 2)
  return reg


# Schedulers.
def counts(s, n=3000):
  picks = [s.next_task() for _ in range(n)]
  return {t: picks.count(t) / n for t in s.tasks}


def test_uniform_scheduler_picks_every_task_equally():
  c = counts(TaskScheduler(["a", "b", "c"], seed=0))
  assert all(abs(v - 1 / 3) < 0.04 for v in c.values())


def test_weighted_scheduler_makes_rare_tasks_rare():
  c = counts(WeightedScheduler(["a", "b", "c"], [10, 1, 0.1], seed=0))
  assert c["a"] > 0.85 and 0.04 < c["b"] < 0.14 and c["c"] < 0.03
  with pytest.raises(ValueError, match="2 weights for 3 tasks"):
    WeightedScheduler(["a", "b", "c"], [1, 1])
  with pytest.raises(ValueError, match=">= 0"):
    WeightedScheduler(["a", "b"], [1, -1])


def test_underperforming_scheduler_focuses_on_failing_tasks():
  s = UnderperformingScheduler(["easy", "hard"], window=20, seed=0)
  assert s.probabilities()[0] == pytest.approx(0.5)  # Untried: both count as failing.
  for _ in range(20):
    s.update("easy", True)
    s.update("hard", False)
  p = dict(zip(s.tasks, s.probabilities()))
  assert p["hard"] > 0.9 and p["easy"] > 0  # The floor keeps mastered tasks alive.
  s.set_success_estimates({"hard": 1.0, "easy": 0.0})
  assert dict(zip(s.tasks, s.probabilities()))["easy"] > 0.9
  with pytest.raises(ValueError, match="unknown task scheduler"):
    make_scheduler("round_robin", ["a"])


# Policies.
def test_noisy_policy_knobs():
  spec = BoundedArraySpec((5,), np.float32, "action", -1.0, 1.0)
  base = lambda obs, slot: np.array([0.1, 0.2, 0.3, 1.0, -1.0], np.float32)
  quiet = NoisyPolicy(base, spec, terminate_dim=4, seed=0)
  assert np.array_equal(quiet({}, 0), base({}, 0))
  g = NoisyPolicy(base, spec, gaussian_std=0.1, terminate_dim=4, seed=0)
  acts = np.stack([g({}, 0) for _ in range(2000)])
  assert np.std(acts[:, 0]) == pytest.approx(0.1, rel=0.1)
  assert np.all(acts[:, 4] == -1), "noise must never fire the terminate action"
  assert acts.min() >= -1 and acts.max() <= 1
  eps = NoisyPolicy(base, spec, epsilon=1.0, terminate_dim=4, seed=0)
  acts = np.stack([eps({}, 0) for _ in range(500)])
  assert acts[:, 0].std() > 0.4 and np.all(acts[:, 4] == -1)
  sticky = NoisyPolicy(base, spec, sticky_prob=1.0, sticky_steps=4, terminate_dim=4, seed=0)
  acts = np.stack([sticky({}, 0) for _ in range(8)])
  assert np.array_equal(acts[0], acts[3]) and not np.array_equal(acts[3], acts[4])
  with pytest.raises(ValueError, match="epsilon"):
    NoisyPolicy(base, spec, epsilon=2.0)
  early = NoisyPolicy(base, spec, terminate_dim=4, early_terminate_prob=0.1, seed=0)
  acts = np.stack([early({}, 0) for _ in range(3000)])
  assert np.mean(acts[:, 4] > 0) == pytest.approx(0.1, abs=0.02)
  assert np.array_equal(acts[:, :4], np.repeat(acts[:1, :4], 3000, 0))  # Only terminate.
  with pytest.raises(ValueError, match="early_terminate_prob"):
    NoisyPolicy(base, spec, early_terminate_prob=-0.1)


def test_random_policy_bounds_and_terminate_rate():
  spec = BoundedArraySpec((5,), np.float32, "action", -1.0, 1.0)
  p = RandomPolicy(spec, terminate_dim=4, terminate_prob=0.1, seed=0)
  acts = np.stack([p({}, 0) for _ in range(2000)])
  assert acts.min() >= -1 and acts.max() <= 1
  assert 0.07 < np.mean(acts[:, 4] > 0) < 0.13


# Episodes.
def test_success_to_slots_maps_by_slot():
  s = success_to_slots(np.array([True, False, True]), [4, 0, -1], 6)
  assert s.tolist() == [False, False, False, False, True, False]


def test_run_episode_is_valid_and_maps_ground_truth_to_slots():
  env = TabletopEnv(max_episode_steps=50)
  reg = registry()
  slots = [reg.slot(t) for t in env.task_names()]
  ep = run_episode(env, ScriptedPolicy(env), "place_green_in_bin", reg.slot("place_green_in_bin"),
                   slots, reg.max_tasks, robot_id=3, episode_id=77, seed=5)
  assert ep.task_id == reg.slot("place_green_in_bin") and ep.robot_id == 3
  assert ep.episode_id == 77 and ep.terminated
  assert ep.success[reg.slot("place_green_in_bin")]
  assert ep.success.sum() == np.sum(env.success())
  assert ep.observations["state"].shape == (ep.num_steps + 1, env.spec().observation["state"].shape[0])
  assert not ep.success[:2].any(), "slots without a task stay False"


def test_noise_setting_mixes_successes_and_failures():
  actor = RobotActor(0, ENV, registry().to_json(), gaussian_std=0.3, seed=0)
  eps = actor.run_episodes(120)
  rate = np.mean([e.success[e.task_id] for e in eps])
  assert 0.3 <= rate <= 0.7, rate


def test_robot_actor_local_with_sink_and_callable_policy():
  seen = []
  reg = registry()
  still = lambda obs, slot: np.array([0, 0, 0, -1, -1], np.float32)
  actor = RobotActor(1, dict(ENV, max_episode_steps=5), reg.to_json(), policy=still,
                     scheduler="weighted", task_weights=[1.0] + [0.0] * (len(TASKS) - 1),
                     sink=seen.append)
  eps = actor.run_episodes(3, first_episode_id=10)
  assert [e.episode_id for e in eps] == [10, 11, 12]
  assert [e.episode_id for e in seen] == [10, 11, 12]
  assert all(e.task_id == reg.slot(TASKS[0]) and e.num_steps == 5 for e in eps)
  assert not any(e.success.any() for e in eps)


def test_make_policy_rejects_unknown_kind():
  env = TabletopEnv()
  with pytest.raises(ValueError, match="unknown policy 'cem'"):
    make_policy("cem", env)


# Ray (slow: actor processes import MuJoCo; a restart takes seconds).
@pytest.mark.slow
def test_fleet_collects_unique_valid_episodes(ray_session):
  reg = registry()
  with Fleet(ray_session, 2, dict(env_config=ENV, registry=reg.to_json(), seed=1),
             episodes_per_call=3, num_cpus=0.25) as fleet:
    eps = list(fleet.collect(20, first_episode_id=100))
  assert sorted(e.episode_id for e in eps) == list(range(100, 120))
  assert {e.robot_id for e in eps} == {0, 1}
  env = TabletopEnv(max_episode_steps=50)
  for e in eps:
    e.validate(env.spec(), reg.max_tasks)
  assert np.mean([e.success[e.task_id] for e in eps]) >= 0.9


@pytest.mark.slow
def test_killed_actor_drops_its_episode_and_collection_continues(ray_session):
  ray = ray_session
  reg = registry()

  def slow_still(obs, slot):  # ~0.3 s per episode, so the kill lands mid-episode.
    time.sleep(0.015)
    return np.array([0, 0, 0, -1, -1], np.float32)

  kwargs = dict(env_config=dict(ENV, max_episode_steps=20), registry=reg.to_json(),
                policy=slow_still)
  with Fleet(ray, 1, kwargs, episodes_per_call=1, calls_in_flight=1, num_cpus=0.25) as fleet:
    fleet.wait_ready()
    pid_before = fleet.call_all("pid")[0]
    got = []
    for ep in fleet.collect(5):
      got.append(ep)
      if len(got) == 2:  # The next episode is running now: kill the process.
        time.sleep(0.1)
        ray.kill(fleet.actors[0], no_restart=False)
    pid_after = fleet.call_all("pid")[0]
  assert len(got) == 5, "collection continues after the crash"
  assert fleet.failures == [1] and len(fleet.lost_episode_ids) == 1
  ids = [e.episode_id for e in got]
  assert fleet.lost_episode_ids[0] not in ids, "the killed episode is absent"
  assert len(set(ids)) == 5
  assert pid_after != pid_before, "Ray restarted the actor in a new process"
  for e in got:
    assert e.num_steps == 20, "no partial episode"
