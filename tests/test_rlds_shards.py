"""A corrupt, truncated or mismatched shard is an error naming its file and episode, or is
skipped and reported when asked; what was imported before stays."""

import os
import shutil

import numpy as np
import pytest

from mtopt import rlds_format
from replay import rlds_io, rlds_shards
from replay.reverb_replay import ReverbReplay
from replay.tables import TableLayout
from tests.test_replay_helpers import MAX_TASKS, SPEC, random_episodes


def _dataset(path, episodes, per_shard=10, spec=SPEC):
  with rlds_format.DatasetWriter(str(path), spec, MAX_TASKS, [],
                                 episodes_per_shard=per_shard) as w:
    for ep in episodes:
      w.write(ep)
  return [s.path for s in rlds_shards.shards(str(path))]


@pytest.fixture
def dataset(rng, tmp_path):
  eps = random_episodes(rng, 30, [0, 1, 2])
  files = _dataset(tmp_path / "ds", eps)
  return str(tmp_path / "ds"), files, eps


def _cut_in_half(path):
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(size // 2)


def test_truncated_shard_names_file_and_episode_and_keeps_earlier_imports(dataset):
  ds, files, eps = dataset
  _cut_in_half(files[1])
  with ReverbReplay(TableLayout(SPEC, MAX_TASKS, 1000)) as r:
    with pytest.raises(rlds_shards.ShardError) as e:
      rlds_io.import_rlds(r, ds, group=5)
    msg = str(e.value)
    assert files[1] in msg and "truncated record" in msg and "of the split" in msg
    assert "train.skip_bad_episodes=true" in msg
    # Every episode read before the bad record was written and stays.
    readable = len(list(rlds_shards.shard_records(rlds_shards.shards(ds)[1], 1, skip_bad=True)))
    assert 0 < readable < 10 and r.num_episodes() == 10 + readable


def test_skip_bad_imports_the_rest_and_reports(dataset):
  ds, files, eps = dataset
  _cut_in_half(files[1])
  with open(files[2], "r+b") as f:  # One corrupt record in the middle of the last shard.
    f.seek(os.path.getsize(files[2]) // 2)
    f.write(b"\xff" * 8)
  report = rlds_shards.ShardReport()
  with ReverbReplay(TableLayout(SPEC, MAX_TASKS, 1000)) as r:
    n = rlds_io.import_rlds(r, ds, skip_bad=True, report=report)
    assert n == r.num_episodes()
  bad = {b.path: b for b in report.bad}
  assert set(bad) == {files[1], files[2]}
  assert bad[files[2]].count == 1  # Only that record: the next one is found by its length.
  assert n + report.skipped == 30 and 10 + 1 < n + 1 + bad[files[1]].count
  assert files[1] in report.summary()


def test_shard_of_another_dataset_is_named(dataset, rng, tmp_path):
  ds, files, eps = dataset
  other_spec = SPEC.__class__({"state": SPEC.observation["state"]}, SPEC.action,
                              SPEC.max_episode_steps)
  other = random_episodes(rng, 10, [0])
  for ep in other:
    ep.observations.pop("image")
  other_files = _dataset(tmp_path / "other", other, spec=other_spec)
  shutil.copy(other_files[0], files[0])
  with ReverbReplay(TableLayout(SPEC, MAX_TASKS, 1000)) as r:
    with pytest.raises(rlds_shards.ShardError, match=f"{files[0]}: episode 0 of this file"):
      rlds_io.import_rlds(r, ds)
  report = rlds_shards.ShardReport()
  with ReverbReplay(TableLayout(SPEC, MAX_TASKS, 1000)) as r:
    assert rlds_io.import_rlds(r, ds, skip_bad=True, report=report) == 20
  assert report.skipped == 10 and {b.path for b in report.bad} == {files[0]}


def test_missing_and_short_shards_are_named(dataset):
  ds, files, eps = dataset
  os.remove(files[2])
  with pytest.raises(rlds_shards.ShardError, match=f"{files[2]}: shard file missing"):
    list(rlds_shards.records(ds))
  shutil.copy(files[1], files[2])  # 10 records where dataset_info.json says 10: fine...
  assert len(list(rlds_shards.records(ds))) == 30
  with open(files[0], "r+b") as f:  # ...a whole record cut off the end is not.
    rec = list(rlds_shards.shard_records(rlds_shards.shards(ds)[0], 0))[-1]
    f.truncate(rec.offset)
  with pytest.raises(rlds_shards.ShardError, match="holds 9 episodes, dataset_info.json says 10"):
    list(rlds_shards.records(ds))


def test_decoder_reads_chosen_paths(dataset):
  ds, files, eps = dataset
  got = list(rlds_shards.read_decoded(ds, paths=["steps/observation/state",
                                                 "episode_metadata/episode_id"]))
  assert len(got) == 30 and [r.episode for r, _ in got] == list(range(30))
  by_id = {e.episode_id: e for e in eps}
  for _, ex in got:
    ep = by_id[int(ex["episode_metadata/episode_id"])]
    np.testing.assert_array_equal(ex["steps/observation/state"], ep.observations["state"])
