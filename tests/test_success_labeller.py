"""The labeller inline and in bulk over an RLDS dataset with Ray Data."""

import os

import numpy as np
import pytest

from mtopt import rlds_format
from mtopt.episode import Episode
from success_detectors import label_store
from success_detectors.detector import SuccessDetector
from success_detectors.examples import ExampleSet
from success_detectors.labeller import load_labeller, relabel_dataset
from tests.test_success_detector import FAST, MAX_TASKS, SPEC, toy_examples, toy_states


@pytest.fixture(scope="module")
def detector_dir(tmp_path_factory):
  rng = np.random.default_rng(4)
  det = SuccessDetector.create(SPEC, MAX_TASKS, FAST)
  det.train(ExampleSet.concat([toy_examples(rng, s, 80, 80) for s in range(2)]),
            {0: "a", 1: "b"}, steps=200)
  return det.save(str(tmp_path_factory.mktemp("run") / "detector"))


def episodes(rng, n, start=0):
  out = []
  for i in range(n):
    t = int(rng.integers(1, 6))
    obs = toy_states(rng, t + 1, succeed_slot=int(rng.integers(0, 3)))
    out.append(Episode({"state": obs}, rng.uniform(-1, 1, (t, 4)).astype(np.float32),
                       task_id=i % 2, episode_id=start + i))
  return out


def test_bulk_relabel_writes_labels_next_to_the_data(detector_dir, tmp_path):
  rng = np.random.default_rng(1)
  eps = episodes(rng, 37, start=100)
  data = str(tmp_path / "data")
  with rlds_format.DatasetWriter(data, SPEC, MAX_TASKS, ["a", "b"], episodes_per_shard=10) as w:
    for ep in eps:
      w.write(ep)
  before = sorted(p.name for p in (tmp_path / "data").rglob("*"))
  path = relabel_dataset(data, detector_dir, batch_size=8)  # Several batches.
  stored = label_store.read_labels(data)
  assert path == label_store.labels_path(data)
  want = load_labeller(detector_dir)(eps)
  got = stored.by_episode()
  assert sorted(got) == [ep.episode_id for ep in eps]
  for ep, row in zip(eps, want):
    np.testing.assert_allclose(got[ep.episode_id], row, atol=1e-6)
  assert stored.detector_version == load_labeller(detector_dir).version
  assert stored.task_names[:3] == ["a", "b", ""]
  # The dataset itself is untouched: labels.npz and the kept final observations were added.
  after = sorted(p.name for p in (tmp_path / "data").rglob("*"))
  added = set(after) - set(before)
  assert added - {"labels.npz", "final_observations", "source.json"} == {
      f"batch-{i:06d}.npz" for i in range(5)}
  assert set(before) <= set(after)


def test_a_second_relabel_reads_the_kept_final_observations(detector_dir, tmp_path,
                                                            monkeypatch):
  from experiments.protocol import data_sha
  from success_detectors import labeller
  rng = np.random.default_rng(2)
  data = str(tmp_path / "data")
  with rlds_format.DatasetWriter(data, SPEC, MAX_TASKS, ["a", "b"], episodes_per_shard=10) as w:
    for ep in episodes(rng, 23):
      w.write(ep)
  relabel_dataset(data, detector_dir, batch_size=8)
  first, sha = label_store.read_labels(data), data_sha(data)
  real = labeller._read_final_observations
  monkeypatch.setattr(labeller, "_read_final_observations", None)  # Must not be needed.
  relabel_dataset(data, detector_dir, batch_size=8)
  np.testing.assert_array_equal(label_store.read_labels(data).labels, first.labels)
  assert data_sha(data) == sha, "the kept observations are not part of the data's hash"
  # A dataset file changes: the episodes are read again.
  calls = []

  def counting(*args):
    calls.append(args)
    yield from real(*args)
  monkeypatch.setattr(labeller, "_read_final_observations", counting)
  shard = os.path.join(data, next(n for n in sorted(os.listdir(data)) if ".tfrecord" in n))
  st = os.stat(shard)
  os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  relabel_dataset(data, detector_dir, batch_size=8)
  assert len(calls) == 1
  np.testing.assert_array_equal(label_store.read_labels(data).labels, first.labels)

