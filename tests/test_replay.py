"""The Reverb replay: sharing counts, labels, balanced batches, checkpoints, bad input."""

import dataclasses
import os

import numpy as np
import pytest

from mtopt.episode import EpisodeError
from replay.base import ReplayError
from replay.reverb_replay import ReverbReplay
from replay.tables import TableLayout
from tests.test_replay_helpers import (MAX_TASKS, SPEC, ground_truth_labeller, make_episode,
                                       random_episodes)

SLOTS = [0, 1, 2, 3]


def new_replay(tmp_path=None, **kw):
  layout = TableLayout(SPEC, MAX_TASKS, max_size=kw.pop("max_size", 10_000),
                       min_size=kw.pop("min_size", 1))
  ckpt = os.path.join(tmp_path, "replay") if tmp_path is not None else None
  return ReverbReplay(layout, slots=kw.pop("slots", SLOTS), checkpoint_dir=ckpt, **kw)


def expected_counts(episodes, rule, slots):
  """Counts computed straight from the ground truth, independently of replay.sharing."""
  want = {k: {"success": 0, "failure": 0} for k in range(MAX_TASKS)}
  for ep in episodes:
    for k in slots:
      own = k == ep.task_id
      if rule == "none" and not own:
        continue
      if rule == "conservative" and not own and not ep.success[k]:
        continue
      want[k]["success" if ep.success[k] else "failure"] += 1
  return want


@pytest.mark.parametrize("rule", ["none", "all", "conservative"])
def test_item_counts_per_task_after_sharing(rng, rule):
  eps = random_episodes(rng, 40, SLOTS)
  with new_replay(sharing=rule) as r:
    made = r.write_many(eps)
    want = expected_counts(eps, rule, SLOTS)
    assert r.counts() == want
    assert made == sum(v["success"] + v["failure"] for v in want.values())
    assert r.num_episodes() == len(eps)  # Stored once, whatever the sharing.


def test_labeller_fills_missing_labels_and_threshold_applies(rng):
  eps = [make_episode(rng, i, i % 4, rng.random(MAX_TASKS) < 0.5, labelled=False)
         for i in range(12)]
  soft = lambda es: 0.3 + 0.4 * ground_truth_labeller(es)  # 0.3 failure, 0.7 success.
  with new_replay(sharing="all", labeller=soft, threshold=0.5) as r:
    r.write_many(eps)
    assert r.counts() == expected_counts(eps, "all", SLOTS)
    back = {e.episode_id: e for e in r.episodes()}
    np.testing.assert_allclose(back[3].labels, soft([eps[3]])[0])
  with new_replay(sharing="all", labeller=soft, threshold=0.8) as r:
    r.write_many(eps)
    assert all(c["success"] == 0 for c in r.counts().values())


def test_rows_carry_each_tasks_own_label(rng):
  """Every row is a real transition of a stored episode, rewarded for the row's task."""
  eps = random_episodes(rng, 30, SLOTS, p_success=0.4)
  by_id = {e.episode_id: e for e in eps}
  with new_replay(sharing="all") as r:
    r.write_many(eps)
    sampler = r.sampler(64)
    seen_rewards = seen_time_limit_ends = 0
    for _ in range(10):
      b = next(sampler)
      assert b.action.dtype == np.float32 and b.task.dtype == np.int32
      assert b.observation["image"].shape == (64, 8, 8, 3)
      for i in range(b.size):
        ep = by_id[int(b.observation["state"][i, 0])]
        t = int(b.observation["state"][i, 1])
        k = int(b.task[i])
        last = t == ep.num_steps - 1
        np.testing.assert_array_equal(b.action[i], ep.actions[t])
        np.testing.assert_array_equal(b.next_observation["state"][i],
                                      ep.observations["state"][t + 1])
        np.testing.assert_array_equal(b.observation["image"][i], ep.observations["image"][t])
        # The rule of mtopt.batch.Batch: reward and discount 0 only where the episode
        # terminated; a time-limit end bootstraps, unrewarded.
        outcome = float(ep.terminated and ep.success[k])
        assert b.outcome[i] == outcome
        assert b.steps_after[i] == ep.num_steps - 1 - t
        assert b.reward[i] == float(last) * outcome
        assert b.discount[i] == float(not (last and ep.terminated))
        seen_rewards += int(b.reward[i])
        seen_time_limit_ends += int(last and not ep.terminated)
    assert seen_rewards > 0 and seen_time_limit_ends > 0


def test_batch_task_and_outcome_shares(rng):
  eps = random_episodes(rng, 80, SLOTS, p_success=0.3)
  shares = {0: 2.0, 1: 1.0, 2: 1.0}
  with new_replay(sharing="all") as r:
    r.write_many(eps)
    sampler = r.sampler(100, task_shares=shares, success_fraction=0.25)
    tasks, successes, finals = [], [], []
    for _ in range(20):
      b = next(sampler)
      tasks.append(b.task)
      # A row comes from a success item iff its episode succeeded at the row's task.
      ids = b.observation["state"][:, 0].astype(int)
      successes.append(np.array([eps[i].success[k] for i, k in zip(ids, b.task)]))
    tasks, successes = np.concatenate(tasks), np.concatenate(successes)
    share = np.bincount(tasks, minlength=MAX_TASKS) / len(tasks)
    np.testing.assert_allclose(share[:3], [0.5, 0.25, 0.25], atol=0.02)
    assert share[3:].sum() == 0
    for k in shares:
      assert abs(successes[tasks == k].mean() - 0.25) < 0.03


def test_task_without_successes_filled_with_failures_and_reported(rng):
  eps = random_episodes(rng, 30, [0, 1], p_success=0.5)
  for e in eps:
    e.success[1] = False
    e.labels[1] = 0.0
  with new_replay(sharing="none", slots=[0, 1, 2]) as r:
    r.write_many(eps)
    sampler = r.sampler(40, success_fraction=0.5)
    b = next(sampler)
    assert sampler.report["no_successes"] == [1]
    assert sampler.report["no_data"] == [2]  # Slot 2 never got data: its share goes to 0, 1.
    assert np.bincount(b.task, minlength=3).tolist() == [20, 20, 0]
    assert b.reward[b.task == 1].sum() == 0
    # Once successes arrive, the sampler notices and rebalances.
    late = [make_episode(rng, 100 + i, 1, np.eye(MAX_TASKS, dtype=bool)[1]) for i in range(3)]
    r.write_many(late)
    sampler._checked = -1e9  # Skip the refresh period.
    next(sampler)
    assert sampler.report["no_successes"] == []
    assert sampler.plan[(1, True)] == 10


def test_checkpoint_restored_into_new_server_has_same_items(rng, tmp_path):
  eps = random_episodes(rng, 25, SLOTS)
  with new_replay(tmp_path, sharing="all") as r:
    r.write_many(eps)
    counts, path = r.counts(), r.checkpoint()
    before = {e.episode_id: e for e in r.episodes()}
  assert os.path.dirname(path) == os.path.join(tmp_path, "replay")
  with new_replay(tmp_path, sharing="all") as r2:
    assert r2.counts() == counts
    after = {e.episode_id: e for e in r2.episodes()}
    assert sorted(after) == sorted(before) == list(range(25))
    for i, e in after.items():
      np.testing.assert_array_equal(e.observations["image"], eps[i].observations["image"])
      np.testing.assert_array_equal(e.actions, eps[i].actions)
      np.testing.assert_array_equal(e.success, eps[i].success)
    b = next(r2.sampler(32))
    assert b.size == 32


def test_episodes_enumerates_each_once_in_write_order_repeatedly(rng):
  eps = random_episodes(rng, 15, SLOTS)
  with new_replay() as r:
    r.write_many(eps[:10])
    assert [e.episode_id for e in r.episodes()] == list(range(10))
    r.write_many(eps[10:])
    ids = [e.episode_id for e in r.episodes()]
    assert sorted(ids) == list(range(15)) and len(ids) == 15
    walk = r.episodes()
    assert [next(walk).episode_id for _ in range(3)] == ids[:3]
    walk.close()  # An abandoned walk leaves the table as it was.
    assert [e.episode_id for e in r.episodes()] == ids


def test_fifo_removal_at_max_size(rng):
  eps = [make_episode(rng, i, 0, np.zeros(MAX_TASKS, bool)) for i in range(12)]
  with new_replay(max_size=5, sharing="none") as r:
    r.write_many(eps)
    assert r.counts()[0] == {"success": 0, "failure": 5}
    b = next(r.sampler(50))
    assert set(b.observation["state"][:, 0].astype(int)) <= set(range(7, 12))


def _bad_episodes(rng):
  ok = lambda i=0: make_episode(rng, 500 + i, 0, np.zeros(MAX_TASKS, bool))
  shape = ok(); shape.observations["state"] = shape.observations["state"][:, :3]
  dtype = ok(); dtype.actions = dtype.actions.astype(np.float64)
  nan = ok(); nan.observations["state"][1, 2] = np.nan
  empty = ok(); empty.actions = empty.actions[:0]
  empty.observations = {k: v[:1] for k, v in empty.observations.items()}
  out_of_range = ok(); out_of_range.task_id = MAX_TASKS
  inactive = ok(); inactive.task_id = 5
  bad_labels = ok(); bad_labels.labels = np.full(MAX_TASKS, np.nan, np.float32)
  unlabelled = dataclasses.replace(ok(), labels=None)
  return [("shape", shape, EpisodeError, "observations/state: expected shape"),
          ("dtype", dtype, EpisodeError, "actions: expected dtype float32"),
          ("nan", nan, EpisodeError, "non-finite"),
          ("empty", empty, EpisodeError, "empty episode"),
          ("slot out of range", out_of_range, EpisodeError, "task_id: slot 6 outside"),
          ("inactive slot", inactive, ReplayError, "task slot 5 is not an active task"),
          ("labels", bad_labels, EpisodeError, "labels: values must be probabilities"),
          ("unlabelled", unlabelled, ReplayError, "no success labels")]


def test_bad_input_rejected_and_nothing_stored_changes(rng):
  good = random_episodes(rng, 10, SLOTS)
  with new_replay(sharing="all") as r:
    r.write_many(good)
    counts, n = r.counts(), r.num_episodes()
    for name, bad, err, msg in _bad_episodes(rng):
      fresh = make_episode(rng, 900, 1, np.ones(MAX_TASKS, bool))
      with pytest.raises(err, match=msg):
        r.write_many([fresh, bad])  # The good episode before it is not written either.
      assert r.counts() == counts and r.num_episodes() == n, name
    assert sorted(e.episode_id for e in r.episodes()) == list(range(10))


def test_bad_labeller_output_and_sampler_arguments(rng):
  ep = make_episode(rng, 1, 0, np.zeros(MAX_TASKS, bool), labelled=False)
  with new_replay(labeller=lambda es: np.zeros((len(es), 2), np.float32)) as r:
    with pytest.raises(ReplayError, match=r"labeller returned shape \(1, 2\)"):
      r.write(ep)
    assert r.num_episodes() == 0
    with pytest.raises(ReplayError, match="not active"):
      r.sampler(8, task_shares={5: 1.0})
    with pytest.raises(ReplayError, match="positive weights"):
      r.sampler(8, task_shares={0: -1.0})
    with pytest.raises(ReplayError, match=r"success_fraction must be in \[0, 1\]"):
      r.sampler(8, success_fraction=1.5)
    with pytest.raises(ReplayError, match="batch_size"):
      r.sampler(0)
  with pytest.raises(ReplayError, match="unknown sharing rule"):
    new_replay(sharing="most")


def test_from_config_uses_replay_section(tmp_path):
  from mtopt.config import load_config
  cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "configs", "tabletop_state.py"),
                    [])
  cfg.max_tasks = MAX_TASKS
  with ReverbReplay.from_config(cfg, SPEC, run_dir=str(tmp_path)) as r:
    assert r.sharing == cfg.replay.sharing and r.threshold == cfg.detector.threshold
    assert r.layout.min_size == cfg.replay.min_size
    assert os.path.dirname(r.checkpoint()) == os.path.join(tmp_path, "replay")


def test_min_size_and_rate_limiter_configuration(rng):
  layout = TableLayout(SPEC, MAX_TASKS, max_size=100, min_size=4, samples_per_insert=2.0)
  with ReverbReplay(layout, slots=[0], sharing="none") as r:
    info = r.client.server_info()["task000_failure"].rate_limiter_info
    assert info.samples_per_insert == 2.0 and info.min_size_to_sample == 4
    fail = lambda i: make_episode(rng, i, 0, np.zeros(MAX_TASKS, bool))
    r.write_many([fail(i) for i in range(3)])
    with pytest.raises(TimeoutError, match="min_size=4"):
      next(r.sampler(8, wait_seconds=0.3))  # Below min_size: nothing to sample yet.
    r.write(fail(3))
    b = next(r.sampler(8, wait_seconds=5))
    assert b.size == 8 and not b.reward.any()


def test_sampler_can_hand_out_jax_arrays(rng):
  import jax
  with new_replay(sharing="none") as r:
    r.write_many(random_episodes(rng, 8, [0]))
    b = next(r.sampler(16, task_shares={0: 1.0}, to_jax=True))
    assert isinstance(b.action, jax.Array) and b.action.shape == (16, 3)
    assert isinstance(b.observation["image"], jax.Array) and b.task.dtype == np.int32


@pytest.mark.parametrize("k", [1, 4])
def test_rows_uniform_over_a_tables_transitions(rng, k):
  """Episodes of 1, 3 and 6 steps: each of the 10 transitions is a tenth of the rows."""
  eps = [make_episode(rng, i, 0, np.zeros(MAX_TASKS, bool), steps=n)
         for i, n in enumerate([1, 3, 6])]
  with new_replay(sharing="none", slots=[0], transitions_per_sample=k) as r:
    r.write_many(eps)
    sampler = r.sampler(30, task_shares={0: 1.0})  # Not a multiple of k: no need.
    # Each sampled item gives k (identical-episode) rows: draw k times the batches so the
    # item count, and so the tolerance (~4 standard deviations), stays the same for every k.
    rows = np.concatenate([next(sampler).observation["state"][:, :2] for _ in range(80 * k)])
  _, freq = np.unique(rows, axis=0, return_counts=True)
  assert len(freq) == 10
  np.testing.assert_allclose(freq / len(rows), 0.1, atol=0.025)


def test_transitions_of_a_sample_go_to_different_batches(rng):
  """With transitions_per_sample=4 a batch still holds rows of ~as many episodes as rows
  (as if sampled one by one), not groups of 4 rows from one episode."""
  eps = [make_episode(rng, i, 0, np.zeros(MAX_TASKS, bool), steps=10) for i in range(100)]
  with new_replay(sharing="none", slots=[0], transitions_per_sample=4) as r:
    r.write_many(eps)
    sampler = r.sampler(20, task_shares={0: 1.0})
    per_episode = [20 / len(np.unique(next(sampler).observation["state"][:, 0]))
                   for _ in range(64)]
  assert np.mean(per_episode) < 1.3  # Independent draws: ~1.1; grouped in-batch: 4.
