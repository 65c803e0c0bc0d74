"""Batches streamed from disk: the replay's composition and reward rule, bounded memory."""

import numpy as np
import pytest

from mtopt import rlds_format
from replay import disk_sampler
from replay.disk_sampler import DiskSampler, EpisodeIndex
from tests.test_replay_helpers import MAX_TASKS, SPEC, random_episodes


def labels_of(episodes):
  return np.stack([e.labels for e in episodes])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  rng = np.random.default_rng(0)
  eps = random_episodes(rng, 120, [0, 1, 2], p_success=0.3)
  path = str(tmp_path_factory.mktemp("ds") / "ds")
  with rlds_format.DatasetWriter(path, SPEC, MAX_TASKS, [], episodes_per_shard=25) as w:
    for ep in eps:
      w.write(ep)
  index = EpisodeIndex.build(path, None, SPEC, MAX_TASKS, labels_of)
  return path, {e.episode_id: e for e in eps}, index


def test_index_holds_where_and_what_not_observations(dataset, tmp_path):
  path, eps, index = dataset
  assert index.size == 120 and len(index.files) == 5
  assert index.success.shape == (120, 1) and index.success.dtype == np.uint8
  index.save(str(tmp_path / "i.npz"))
  back = EpisodeIndex.load(str(tmp_path / "i.npz"))
  np.testing.assert_array_equal(back.offset, index.offset)
  assert back.files == index.files
  by_cell = disk_sampler.cells(index, MAX_TASKS, [0, 1, 2], "none")
  for (k, s), rows in by_cell.items():
    assert all(index.task[r] == k for r in rows)


def test_batches_have_the_plan_and_the_reward_rule(dataset):
  path, eps, index = dataset
  sampler = DiskSampler(path, index, SPEC, MAX_TASKS, None, batch_size=48, slots=[0, 1, 2],
                        rule="all", transitions_per_sample=4, cache_bytes=1 << 16)
  try:
    for _ in range(20):
      b = next(sampler)
      assert b.size == 48
      counts = np.bincount(b.task, minlength=3)
      assert list(counts) == [16, 16, 16]  # Equal task shares.
      for i in range(b.size):
        ep = eps[int(b.observation["state"][i, 0])]
        t = int(b.observation["state"][i, 1])
        np.testing.assert_allclose(b.action[i], ep.actions[t], rtol=1e-6)
        np.testing.assert_array_equal(b.next_observation["image"][i], ep.observations["image"][t + 1])
        last = t == ep.num_steps - 1
        won = bool(ep.labels[b.task[i]] >= 0.5)
        assert b.outcome[i] == float(won and ep.terminated)
        assert b.reward[i] == float(last and won and ep.terminated)
        assert b.discount[i] == (0.0 if last and ep.terminated else 1.0)
        assert b.steps_after[i] == ep.num_steps - 1 - t
      assert (b.outcome > 0).sum() <= 24
    assert sampler.cache.bytes <= 1 << 16 and sampler.cache.misses > 0
  finally:
    sampler.close()


def test_vectorised_decode_matches_per_episode_decode(dataset):
  from mtopt.tf_setup import tf
  from replay import rlds_io, rlds_shards
  path, eps, index = dataset
  features = rlds_shards.builder(path).info.features
  mapping = disk_sampler.mtopt_mapping(SPEC)
  batched = disk_sampler._batched_steps(features, mapping, SPEC)
  single = disk_sampler._mapped_steps(
      rlds_shards.Decoder(features, rlds_io.mapping_paths(mapping)), mapping, SPEC)
  records = [r.data for r in rlds_shards.records(path)][:17]
  a = batched(tf.constant(records))
  for i, rec in enumerate(records):
    b = single(tf.constant(rec))
    np.testing.assert_array_equal(a["action"][i].numpy(), b["action"].numpy())
    for k in SPEC.observation:
      np.testing.assert_array_equal(a["observation"][k][i].numpy(), b["observation"][k].numpy())


def test_vectorised_decode_of_robonet_sequences_with_trim(tmp_path):
  """RoboNet keeps video, states and actions as per-episode sequences of other lengths."""
  from mtopt.config import load_config
  from mtopt.program import dataset_source
  from mtopt.tf_setup import tf
  from replay import rlds_io, rlds_shards
  from tests.conftest import ROOT
  from tests.tfds_mock import write_mock_dataset
  import os
  path = write_mock_dataset("robonet/robonet_sample_64", str(tmp_path), num_examples=4,
                            num_sub_examples=5, per_shard=4)
  config = load_config(os.path.join(ROOT, "configs", "robonet.py"),
                       ["dataset.max_episode_steps=100"])
  features = rlds_shards.builder(path).info.features
  mapping, spec, _, _ = dataset_source.build_mapping(config, features)
  batched = disk_sampler._batched_steps(features, mapping, spec)
  assert batched is not None
  single = disk_sampler._mapped_steps(
      rlds_shards.Decoder(features, rlds_io.mapping_paths(mapping)), mapping, spec)
  records = [r.data for r in rlds_shards.records(path)]
  a = batched(tf.constant(records))
  for i, rec in enumerate(records):
    b = single(tf.constant(rec))
    np.testing.assert_array_equal(a["action"][i].numpy(), b["action"].numpy())
    for k in spec.observation:
      np.testing.assert_array_equal(a["observation"][k][i].numpy(), b["observation"][k].numpy())


def test_proportional_batches_keep_the_datas_own_composition(dataset):
  """`train.rebalance=false` streamed: rows per (task, outcome) follow the cells' sizes."""
  from replay.balanced_sampler import proportional_plan
  path, eps, index = dataset
  cells = disk_sampler.cells(index, MAX_TASKS, [0, 1, 2], "none")
  counts = {k: {"success": cells[(k, True)].size, "failure": cells[(k, False)].size}
            for k in (0, 1, 2)}
  want, _ = proportional_plan(48, {0: 1.0, 1: 1.0, 2: 1.0}, counts, 1)
  sampler = DiskSampler(path, index, SPEC, MAX_TASKS, None, batch_size=48, slots=[0, 1, 2],
                        rule="none", proportional=True, transitions_per_sample=4,
                        cache_bytes=1 << 16)
  try:
    assert sampler.plan == want
    assert sum(n for (_, won), n in want.items() if won) < 24  # Not the rebalanced half.
    for _ in range(5):
      b = next(sampler)
      got = {}
      for i in range(b.size):
        ep = eps[int(b.observation["state"][i, 0])]
        key = (int(b.task[i]), bool(ep.labels[b.task[i]] >= 0.5))
        got[key] = got.get(key, 0) + 1
      assert got == want
  finally:
    sampler.close()
