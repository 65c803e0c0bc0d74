"""`train.rebalance`: the learner's batch composition, from a real replay's live counts."""

import os

import numpy as np
import pytest

from mtopt.config import load_config
from mtopt.program import nodes
from replay.balanced_sampler import BalancedSampler, proportional_plan
from replay.reverb_replay import ReverbReplay
from replay.tables import TableLayout
from tests.conftest import ROOT
from tests.test_replay_helpers import MAX_TASKS, SPEC, make_episode

DEFAULT = os.path.join(ROOT, "configs", "tabletop_state.py")
SLOTS = [0, 1, 2]


def _config(rebalance: bool):
  return load_config(DEFAULT, [f"train.rebalance={rebalance}", "replay.min_size=1",
                               "train.online_fraction=0.5"])


def _replay():
  return ReverbReplay(TableLayout(SPEC, MAX_TASKS, max_size=10_000, min_size=1), slots=SLOTS,
                      sharing="none")


def _write(replay, rng, task: int, n: int, p_success: float, first_id: int) -> None:
  replay.write_many([make_episode(rng, first_id + i, task,
                                  (np.arange(MAX_TASKS) == task) & (i < p_success * n))
                     for i in range(n)])


def _refresh(sampler) -> None:
  sampler._checked = -1e9  # As if `refresh_seconds` had passed.


def test_naive_composition_follows_the_live_counts():
  rng = np.random.default_rng(0)
  with _replay() as replay:
    _write(replay, rng, 0, 30, 0.5, 0)
    _write(replay, rng, 1, 10, 0.2, 100)
    sampler = nodes.make_sampler(_config(rebalance=False), 100, replay)
    next(sampler)
    assert sampler.plan == proportional_plan(100, SLOTS, replay.counts(), 1)[0]
    assert sampler.plan == {(0, True): 37, (0, False): 37, (1, True): 6, (1, False): 20}
    # The data changes: task 2 arrives, task 1 grows. The plan follows without a new sampler.
    _write(replay, rng, 2, 40, 0.25, 200)
    _write(replay, rng, 1, 20, 0.2, 300)
    _refresh(sampler)
    next(sampler)
    counts = replay.counts()
    items = {k: counts[k]["success"] + counts[k]["failure"] for k in SLOTS}
    assert items == {0: 30, 1: 30, 2: 40}
    want = {(k, s): counts[k]["success" if s else "failure"] for k in SLOTS for s in (1, 0)}
    assert sampler.plan == proportional_plan(100, SLOTS, counts, 1)[0]
    assert all(abs(sampler.plan[key] - n) <= 1.5 for key, n in want.items()), sampler.plan
    batch = next(sampler)  # The batches hold that plan's rows.
    rows = np.bincount(batch.task, minlength=3)[:3]
    assert rows.tolist() == [sampler.plan[(k, True)] + sampler.plan[(k, False)] for k in SLOTS]
    sampler.close()


def test_rebalanced_composition_stays_equal_whatever_the_counts():
  rng = np.random.default_rng(1)
  with _replay() as replay:
    _write(replay, rng, 0, 40, 0.5, 0)
    _write(replay, rng, 1, 4, 0.5, 100)
    _write(replay, rng, 2, 2, 0.5, 200)
    sampler = nodes.make_sampler(_config(rebalance=True), 96, replay)
    batch = next(sampler)
    assert np.bincount(batch.task, minlength=3)[:3].tolist() == [32, 32, 32]
    assert all(sampler.plan[(k, True)] == 16 for k in SLOTS)
    sampler.close()


def test_mixed_on_policy_part_follows_the_online_replay_after_its_first_episodes():
  """The bug this guards against: the on-policy part's shares were fixed on the first
  episodes the online replay held (of the random pre-publication policy)."""
  rng = np.random.default_rng(2)
  with _replay() as offline, _replay() as online:
    _write(offline, rng, 0, 20, 0.5, 0)
    _write(offline, rng, 1, 20, 0.5, 100)
    _write(online, rng, 0, 2, 0.0, 1000)  # The first on-policy episodes: task 0 failures.
    mixed = nodes.make_sampler(_config(rebalance=False), 64, offline, online)
    next(mixed)
    assert mixed.mixing and mixed._online.plan == {(0, False): 32}
    _write(online, rng, 1, 48, 0.5, 2000)  # Later: mostly task 1, half of them successes.
    _refresh(mixed._online)
    batch = next(mixed)
    online_rows = batch.observation["state"][:, 0] >= 1000
    assert online_rows.sum() == 32
    assert mixed._online.plan == {(0, False): 2, (1, True): 15, (1, False): 15}
    assert np.bincount(batch.task[online_rows], minlength=2)[:2].tolist() == [2, 30]
    mixed.close()


def test_proportional_plan_keeps_rare_tables_and_reports_missing_ones():
  counts = {0: {"success": 0, "failure": 3}, 1: {"success": 1, "failure": 500},
            2: {"success": 0, "failure": 0}}
  plan, report = proportional_plan(64, SLOTS, counts, 1)
  assert plan[(1, True)] == 1  # 1 of 504 items: below one row, kept at one.
  assert sum(plan.values()) == 64 and (0, True) not in plan
  assert report == {"no_data": [2], "no_successes": [0], "no_failures": []}
  small, _ = proportional_plan(2, SLOTS, counts, 1)  # Fewer rows than tables: no floor.
  assert small == {(1, False): 2}


def test_small_drift_keeps_the_pipeline_large_drift_rebuilds_it():
  rng = np.random.default_rng(3)
  with _replay() as replay:
    _write(replay, rng, 0, 50, 0.5, 0)
    _write(replay, rng, 1, 50, 0.5, 100)
    sampler = replay.sampler(100, proportional=True)
    next(sampler)
    plan, rebuilds = dict(sampler.plan), sampler.rebuilds
    _write(replay, rng, 1, 2, 0.5, 200)  # Shares move by ~1%: below the 2% tolerance.
    _refresh(sampler)
    next(sampler)
    assert sampler.rebuilds == rebuilds and sampler.plan == plan
    _write(replay, rng, 1, 40, 0.5, 300)  # ~14%: a new plan.
    _refresh(sampler)
    next(sampler)
    assert sampler.rebuilds == rebuilds + 1
    assert sampler.plan == proportional_plan(100, SLOTS, replay.counts(), 1)[0]
    sampler.close()


def test_a_refresh_while_the_server_is_unreachable_keeps_the_plan():
  """A replay node restarting: the live counts fail for a while; batches go on with the
  current plan (a first plan still needs the counts)."""
  rng = np.random.default_rng(0)
  with _replay() as replay:
    _write(replay, rng, 0, 10, 0.5, 0)
    down = [False]

    def counts():
      if down[0]:
        raise RuntimeError("Socket closed")
      return replay.counts()

    sampler = BalancedSampler(replay.address, replay.layout, counts, 16, {0: 1.0}, 0.5)
    next(sampler)
    plan = dict(sampler.plan)
    down[0] = True
    _refresh(sampler)
    assert next(sampler).task.shape == (16,)
    assert sampler.plan == plan
    down[0] = False
    _write(replay, rng, 1, 10, 0.5, 100)
    sampler.task_shares = {0: 1.0, 1: 1.0}
    _refresh(sampler)
    next(sampler)
    assert {k for k, _ in sampler.plan} == {0, 1}  # The counts are asked again.
    down[0] = True
    with pytest.raises(RuntimeError, match="Socket closed"):
      next(BalancedSampler(replay.address, replay.layout, counts, 16, {0: 1.0}, 0.5))
