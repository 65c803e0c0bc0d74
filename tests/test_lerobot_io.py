"""LeRobotDataset v3 <-> mtopt datasets (`mtopt convert`): round trip, and bad input named."""

import json
import os

import numpy as np
import pytest

from mtopt import cli, rlds_format
from mtopt.episode import Episode
from mtopt.specs import ArraySpec, BoundedArraySpec, EnvSpec
from replay import lerobot_io

MAX_TASKS = 4
TASKS = ["reach_red", "lift_red"]
SPEC = EnvSpec({"state": ArraySpec((5,), np.float32), "image": ArraySpec((8, 8, 3), np.uint8)},
               BoundedArraySpec((3,), np.float32, "action", -1.0, 1.0), 12)


def _episodes(n=6, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    t = int(rng.integers(3, 12))
    success = np.zeros(MAX_TASKS, bool)
    success[i % 2] = bool(i % 3)
    out.append(Episode({"state": rng.normal(size=(t + 1, 5)).astype(np.float32),
                        "image": rng.integers(0, 256, (t + 1, 8, 8, 3)).astype(np.uint8)},
                       rng.uniform(-1, 1, (t, 3)).astype(np.float32), task_id=i % 2,
                       episode_id=i, success=success, terminated=bool(i % 2)))
  return out


@pytest.fixture
def mtopt_dataset(tmp_path):
  d = str(tmp_path / "mtopt")
  with rlds_format.DatasetWriter(d, SPEC, MAX_TASKS, TASKS) as w:
    for ep in _episodes():
      w.write(ep)
  return d


def test_round_trip_through_lerobot(tmp_path, mtopt_dataset):
  lr, back = str(tmp_path / "lerobot"), str(tmp_path / "back")
  assert cli.main(["convert", "to-lerobot", mtopt_dataset, lr]) == 0
  info = json.load(open(os.path.join(lr, "meta", "info.json")))
  assert info["codebase_version"] == "v3.0" and info["total_episodes"] == 6
  assert info["features"]["observation.image"]["dtype"] == "image"
  assert cli.main(["convert", "from-lerobot", lr, back, "--max-tasks", str(MAX_TASKS),
                   "--success-field", "next.success"]) == 0
  spec, max_tasks, names = rlds_format.read_metadata(back)
  assert names == TASKS and max_tasks == MAX_TASKS
  assert spec.observation["image"].shape == (8, 8, 3) and spec.max_episode_steps >= 11
  got = list(rlds_format.read_episodes(back))
  assert len(got) == 6
  for a, b in zip(_episodes(), got):
    np.testing.assert_array_equal(a.observations["image"], b.observations["image"])
    np.testing.assert_allclose(a.observations["state"], b.observations["state"])
    np.testing.assert_allclose(a.actions, b.actions)
    assert (a.task_id, a.terminated) == (b.task_id, b.terminated)
    assert b.success[b.task_id] == a.success[a.task_id]


def test_bad_datasets_are_named(tmp_path, mtopt_dataset):
  lr = str(tmp_path / "lerobot")
  lerobot_io.export_lerobot(rlds_format.read_episodes(mtopt_dataset), TASKS, lr)
  with pytest.raises(lerobot_io.LeRobotError, match="already holds"):
    lerobot_io.export_lerobot(rlds_format.read_episodes(mtopt_dataset), TASKS, lr)
  with pytest.raises(lerobot_io.LeRobotError, match="no feature 'observation.wrist'"):
    lerobot_io.read_lerobot(lr, lerobot_io.LeRobotMapping({"state": "observation.wrist"}), 4)
  with pytest.raises(lerobot_io.LeRobotError, match="names no mtopt task for"):
    lerobot_io.read_lerobot(lr, lerobot_io.LeRobotMapping(tasks={"reach_red": "a"}), 4)
  with pytest.raises(lerobot_io.LeRobotError, match="do not fit max_tasks=1"):
    lerobot_io.read_lerobot(lr, lerobot_io.LeRobotMapping(), 1)
  info_path = os.path.join(lr, "meta", "info.json")
  info = json.load(open(info_path))
  info["features"]["observation.image"]["dtype"] = "video"
  json.dump(info, open(info_path, "w"))
  with pytest.raises(lerobot_io.LeRobotError, match="MP4 video"):
    lerobot_io.read_lerobot(lr, lerobot_io.LeRobotMapping({"image": "observation.image"}), 4)
  info["codebase_version"] = "v2.1"
  json.dump(info, open(info_path, "w"))
  with pytest.raises(lerobot_io.LeRobotError, match="only LeRobotDataset v3"):
    lerobot_io.read_lerobot(lr, lerobot_io.LeRobotMapping(), 4)


def test_truncated_data_file_names_the_file(tmp_path, mtopt_dataset, capsys):
  lr, out = str(tmp_path / "lerobot"), str(tmp_path / "out")
  lerobot_io.export_lerobot(rlds_format.read_episodes(mtopt_dataset), TASKS, lr)
  path = lerobot_io.data_files(lr)[0]
  data = open(path, "rb").read()
  open(path, "wb").write(data[: len(data) // 2])
  assert cli.main(["convert", "from-lerobot", lr, out]) == 2
  err = capsys.readouterr().err
  assert "file-000.parquet: cannot be read" in err
  assert not os.path.exists(os.path.join(out, "dataset_info.json"))


def test_converted_dataset_config_is_accepted(tmp_path, mtopt_dataset):
  """The config `from-lerobot` writes reads the converted dataset through the `dataset`
  section (no simulator), checked as a run checks it before any work."""
  from mtopt.config import load_config
  from mtopt.program import dataset_source
  lr, out = str(tmp_path / "lerobot"), str(tmp_path / "out")
  lerobot_io.export_lerobot(rlds_format.read_episodes(mtopt_dataset), TASKS, lr)
  lerobot_io.convert_from_lerobot(lr, out, lerobot_io.LeRobotMapping(
      success_field="next.success"), MAX_TASKS)
  config = load_config(os.path.join(out, lerobot_io.CONFIG_FILE))
  source = dataset_source.from_config(config)
  assert source.task_names == tuple(TASKS) and source.label_source == "field"
  assert source.spec.observation["image"].shape == (8, 8, 3)


def test_bad_episode_midway_leaves_no_dataset(tmp_path, mtopt_dataset):
  """A non-finite state in the last episode: refused, and OUT is not left half written."""
  import pyarrow.parquet as pq
  lr, out = str(tmp_path / "lerobot"), str(tmp_path / "out")
  lerobot_io.export_lerobot(rlds_format.read_episodes(mtopt_dataset), TASKS, lr)
  path = lerobot_io.data_files(lr)[0]
  table = pq.read_table(path).to_pydict()
  table["observation.state"][-1] = [float("nan")] * 5
  import pyarrow as pa
  pq.write_table(pa.table(table), path)
  with pytest.raises(lerobot_io.LeRobotError, match="episode 5: observation.state: non-finite"):
    lerobot_io.convert_from_lerobot(lr, out, max_tasks=MAX_TASKS)
  assert not os.path.exists(out)
