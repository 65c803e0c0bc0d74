import json
import os

import numpy as np
import pytest

from mtopt import rlds_format
from mtopt.episode import Episode, EpisodeError
from mtopt.specs import ArraySpec, BoundedArraySpec, EnvSpec

MAX_TASKS = 5
SPEC = EnvSpec({"state": ArraySpec((6,), np.float32, "state"),
                "image": ArraySpec((16, 16, 3), np.uint8, "image")},
               BoundedArraySpec((4,), np.float32, "action", -1.0, 1.0), max_episode_steps=12)


def random_episode(rng, i, labels=True, success=True):
  t = int(rng.integers(1, 12))
  return Episode(
      observations={"state": rng.normal(size=(t + 1, 6)).astype(np.float32),
                    "image": rng.integers(0, 256, (t + 1, 16, 16, 3), dtype=np.uint8)},
      actions=rng.uniform(-1, 1, (t, 4)).astype(np.float32),
      task_id=int(rng.integers(MAX_TASKS)), robot_id=i % 3, episode_id=1000 + i,
      success=rng.random(MAX_TASKS) < 0.5 if success else None,
      labels=rng.random(MAX_TASKS).astype(np.float32) if labels else None,
      terminated=bool(i % 2))


def assert_same(a: Episode, b: Episode):
  assert (a.task_id, a.robot_id, a.episode_id, a.terminated) == \
         (b.task_id, b.robot_id, b.episode_id, b.terminated)
  np.testing.assert_array_equal(a.actions, b.actions)
  for k in a.observations:
    np.testing.assert_array_equal(a.observations[k], b.observations[k])
    assert a.observations[k].dtype == b.observations[k].dtype
  for f in ("success", "labels"):
    x, y = getattr(a, f), getattr(b, f)
    assert (x is None) == (y is None)
    if x is not None:
      np.testing.assert_array_equal(x, y)


def test_write_then_read_is_lossless(tmp_path, rng):
  eps = [random_episode(rng, i, labels=i % 3 != 0, success=i % 4 != 0) for i in range(20)]
  with rlds_format.DatasetWriter(str(tmp_path), SPEC, MAX_TASKS, ["a", "b"],
                                 episodes_per_shard=7, flush_every=3) as w:
    for ep in eps:
      w.write(ep)
  back = list(rlds_format.read_episodes(str(tmp_path)))
  assert len(back) == len(eps)
  for a, b in zip(eps, back):
    assert_same(a, b)
  spec, max_tasks, names = rlds_format.read_metadata(str(tmp_path))
  assert spec == SPEC and max_tasks == MAX_TASKS and names == ["a", "b"]


def test_rlds_step_fields_through_plain_tfds(tmp_path, rng):
  import tensorflow_datasets as tfds
  ep = random_episode(rng, 1)
  with rlds_format.DatasetWriter(str(tmp_path), SPEC, MAX_TASKS, []) as w:
    w.write(ep)
  builder = tfds.builder_from_directory(str(tmp_path))
  ex = next(iter(tfds.as_numpy(builder.as_dataset(split="train"))))
  steps = list(ex["steps"])
  t = ep.num_steps
  assert len(steps) == t + 1
  assert steps[0]["is_first"] and not steps[0]["is_last"] and steps[-1]["is_last"]
  assert steps[t - 1]["reward"] == pytest.approx(ep.labels[ep.task_id])
  assert sum(s["reward"] for s in steps) == pytest.approx(ep.labels[ep.task_id])
  assert steps[-1]["is_terminal"] == ep.terminated
  assert ex["episode_metadata"]["task_id"] == ep.task_id


def test_invalid_episode_rejected_and_existing_dataset_kept(tmp_path, rng):
  good = random_episode(rng, 0)
  with rlds_format.DatasetWriter(str(tmp_path), SPEC, MAX_TASKS, []) as w:
    w.write(good)
    bad = random_episode(rng, 1)
    bad.actions[0, 0] = np.nan
    with pytest.raises(EpisodeError, match="non-finite"):
      w.write(bad)
  with pytest.raises(rlds_format.DatasetError, match="already holds a dataset"):
    rlds_format.DatasetWriter(str(tmp_path), SPEC, MAX_TASKS, [])
  back = list(rlds_format.read_episodes(str(tmp_path)))
  assert len(back) == 1
  assert_same(good, back[0])


def test_not_a_dataset(tmp_path):
  with pytest.raises(rlds_format.DatasetError, match="no dataset_info.json"):
    list(rlds_format.read_episodes(str(tmp_path)))
  (tmp_path / "dataset_info.json").write_text("{garbage")
  with pytest.raises(rlds_format.DatasetError, match="cannot load"):
    list(rlds_format.read_episodes(str(tmp_path)))
