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


def _write(d, spec, episodes):
  with rlds_format.DatasetWriter(d, spec, MAX_TASKS, TASKS) as w:
    for ep in episodes:
      w.write(ep)
  return d


@pytest.fixture
def mtopt_dataset(tmp_path):
  return _write(str(tmp_path / "mtopt"), SPEC, _episodes())


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
  # An image feature relabelled as video: meta/episodes says nowhere where its frames are.
  with pytest.raises(lerobot_io.LeRobotError, match="no column 'videos/observation.image/"):
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


# Video features (MP4 through PyAV): lossy, so images are smooth and compared loosely.
VIDEO_SPEC = EnvSpec({"state": ArraySpec((5,), np.float32),
                      "image": ArraySpec((16, 16, 3), np.uint8)}, SPEC.action, 12)


def _video_episodes(n=6, seed=0):
  """Episodes whose images are smooth grey ramps that brighten each step (a video codec
  keeps them within a few grey levels; random or saturated colour pixels would not be)."""
  rng = np.random.default_rng(seed)
  ramp = np.linspace(0, 1, 16)
  out = []
  for i, ep in enumerate(_episodes(n, seed)):
    t = ep.num_steps
    level = np.linspace(0, 1, t + 1)[:, None, None, None] * rng.uniform(20, 60)
    grey = 40 + 60 * ramp[None, :, None, None] + 40 * ramp[None, None, :, None] + level
    image = (grey + np.array([0, 8, 16]) + 4 * i).astype(np.uint8)
    out.append(Episode({"state": ep.observations["state"], "image": image}, ep.actions,
                       task_id=ep.task_id, episode_id=ep.episode_id, success=ep.success,
                       terminated=ep.terminated))
  return out


@pytest.fixture
def video_dataset(tmp_path):
  return _write(str(tmp_path / "mtopt_video"), VIDEO_SPEC, _video_episodes())


@pytest.mark.parametrize("codec", ["av1", "h264"])
def test_round_trip_through_lerobot_video(tmp_path, codec):
  """Images exported as MP4 (two video files: an episode's frames are found by its
  from_timestamp in the file meta/episodes names) and read back within a few grey levels;
  everything else exactly."""
  lr, back = str(tmp_path / "lerobot"), str(tmp_path / "back")
  lerobot_io.export_lerobot(iter(_video_episodes()), TASKS, lr, episodes_per_file=4,
                            video=codec)
  info = json.load(open(os.path.join(lr, "meta", "info.json")))
  feature = info["features"]["observation.image"]
  assert feature["dtype"] == "video" and feature["info"]["video.codec"] == codec
  assert info["video_path"] == lerobot_io.VIDEO_PATH
  videos = sorted(os.listdir(os.path.join(lr, "videos", "observation.image", "chunk-000")))
  assert videos == ["file-000.mp4", "file-001.mp4"]
  lerobot_io.convert_from_lerobot(lr, back, lerobot_io.LeRobotMapping(
      success_field="next.success"), MAX_TASKS)
  spec, _, names = rlds_format.read_metadata(back)
  assert names == TASKS and spec.observation["image"] == VIDEO_SPEC.observation["image"]
  got = list(rlds_format.read_episodes(back))
  assert len(got) == 6
  for a, b in zip(_video_episodes(), got):
    error = np.abs(a.observations["image"].astype(int) - b.observations["image"])
    assert a.observations["image"].shape == b.observations["image"].shape
    assert error.mean() < 3, error.mean()  # A neighbouring frame is 6-8 away.
    np.testing.assert_allclose(a.observations["state"], b.observations["state"])
    np.testing.assert_allclose(a.actions, b.actions)
    assert (a.task_id, a.terminated) == (b.task_id, b.terminated)


def test_video_export_from_the_command_line(tmp_path, video_dataset):
  lr, back = str(tmp_path / "lerobot"), str(tmp_path / "back")
  assert cli.main(["convert", "to-lerobot", video_dataset, lr, "--video", "av1"]) == 0
  assert os.path.isfile(os.path.join(lr, "videos", "observation.image", "chunk-000",
                                     "file-000.mp4"))
  assert cli.main(["convert", "from-lerobot", lr, back, "--max-tasks", str(MAX_TASKS)]) == 0
  assert len(list(rlds_format.read_episodes(back))) == 6


def test_frame_reader_seeks_back_and_gives_the_same_frames(tmp_path):
  """Frames read forward, then an earlier span (a seek), equal one sequential decode."""
  from replay.video_frames import FrameReader, FrameWriter
  path = str(tmp_path / "v.mp4")
  frames = _video_episodes(1)[0].observations["image"]
  frames = np.concatenate([frames] * 4)
  w = FrameWriter(path, 10, 16, 16, codec="av1")
  w.write(frames)
  w.close()
  r = FrameReader(10)
  every = r.read(path, np.arange(len(frames)) / 10, "all")
  r.close()
  late = r.read(path, np.arange(20, 25) / 10, "late")
  early = r.read(path, np.arange(3, 8) / 10, "early")
  np.testing.assert_array_equal(late, every[20:25])
  np.testing.assert_array_equal(early, every[3:8])
  r.close()


def test_bad_videos_are_named(tmp_path):
  from replay.video_frames import FrameWriter, VideoError
  lr = str(tmp_path / "lerobot")
  lerobot_io.export_lerobot(iter(_video_episodes()), TASKS, lr, video="av1")
  video = os.path.join(lr, "videos", "observation.image", "chunk-000", "file-000.mp4")
  data = open(video, "rb").read()

  def read_all(path=lr):
    _, _, episodes = lerobot_io.read_lerobot(path, lerobot_io.LeRobotMapping(), MAX_TASKS)
    return list(episodes)

  assert len(read_all()) == 6
  # An episode said to start past the file's end.
  import pandas as pd
  meta = os.path.join(lr, lerobot_io.EPISODES_PATH)
  table = pd.read_parquet(meta)
  moved = table.copy()
  moved.loc[5, "videos/observation.image/from_timestamp"] += 100.0
  moved.to_parquet(meta, index=False)
  with pytest.raises(lerobot_io.LeRobotError, match=r"episode 5: observation.image: .*"
                     r"file-000.mp4 ends before"):
    read_all()
  # No video column for the feature.
  table.drop(columns=["videos/observation.image/from_timestamp"]).to_parquet(meta,
                                                                            index=False)
  with pytest.raises(lerobot_io.LeRobotError, match="no column 'videos/observation.image/"):
    read_all()
  table.to_parquet(meta, index=False)
  # A truncated and a missing video file.
  open(video, "wb").write(data[: len(data) // 3])
  with pytest.raises(lerobot_io.LeRobotError, match="file-000.mp4"):
    read_all()
  os.remove(video)
  with pytest.raises(lerobot_io.LeRobotError, match="file-000.mp4: no such video file"):
    read_all()
  # Odd frame sizes and unknown codecs are refused before writing.
  with pytest.raises(VideoError, match="needs even sizes"):
    FrameWriter(str(tmp_path / "odd.mp4"), 10, 15, 16)
  with pytest.raises(lerobot_io.LeRobotError, match="video codec 'vp9'"):
    lerobot_io.export_lerobot(iter(_video_episodes()), TASKS, str(tmp_path / "x"),
                              video="vp9")
