"""LeRobotDataset v3 (Parquet and MP4) to and from mtopt's RLDS datasets: `mtopt convert`.

A LeRobot v3 dataset directory holds
  meta/info.json               codebase_version "v3.x", fps, features {key: dtype, shape}
  meta/tasks.parquet           task string -> task_index
  meta/episodes/*/*.parquet    one row per episode (episode_index, length, ...)
  data/chunk-*/file-*.parquet  one row per frame: every feature, episode_index,
                               frame_index, index, task_index
  videos/KEY/chunk-*/file-*.mp4  the frames of a "video" feature, episode after episode
Features of dtype float*/int*/bool are read from the Parquet rows (pyarrow); "image" from
PNG or JPEG bytes in the rows (Pillow); "video" from the MP4 files (`replay/video_frames.py`,
PyAV): an episode's frames start at its `videos/KEY/from_timestamp` (meta/episodes) in the
file its `videos/KEY/chunk_index` / `file_index` name, at the frames' `timestamp`s.

A frame holds an observation and the action taken at it, so an episode of F frames becomes
F observations and F - 1 actions (no frame records what the last action led to); `export`
writes the mtopt episode's T + 1 observations as T + 1 frames, the last with a zero action,
so a round trip gives back the same episode (its images within a few grey levels where
they went through lossy video). Training then reads the converted RLDS
dataset like any other (`train.dataset_dir`, or a config's `dataset` section), so there is
one reader for training.
"""

from __future__ import annotations

import dataclasses
import glob
import io
import json
import os
import re
import shutil
from typing import Iterator, Mapping, Sequence

import numpy as np

from mtopt.dataset_errors import DatasetError
from mtopt.episode import Episode
from mtopt.specs import ArraySpec, BoundedArraySpec, EnvSpec

FRAME_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"


class LeRobotError(DatasetError):
  """A LeRobot dataset cannot be read or written as asked; the message names the file or
  the feature."""


@dataclasses.dataclass(frozen=True)
class LeRobotMapping:
  """Which LeRobot features become the mtopt episode's parts.

  observation: mtopt observation name -> LeRobot feature key (e.g. {"state":
    "observation.state", "image": "observation.images.top"}); None: "state" from
    observation.state and "image" from the one image feature, if there is exactly one.
  action: the action feature.
  tasks: LeRobot task string -> mtopt task name; None: every task string, as a name
    (lower case, words joined by "_").
  success_field: a per-frame feature (e.g. "next.success" or "next.reward") whose value at
    the last frame > 0 means the episode succeeded at its own task; None: no ground truth
    (label the episodes with the detector: `train.labels=learned`).
  terminal_field: a per-frame bool feature (e.g. "next.done") true at the last frame when
    the episode ended in a terminal state; None: "next.done" if the dataset has it, else
    every episode ended by its time limit (its last state is bootstrapped).
  """

  observation: Mapping[str, str] | None = None
  action: str = "action"
  tasks: Mapping[str, str] | None = None
  success_field: str | None = None
  terminal_field: str | None = None


def read_info(root: str) -> dict:
  path = os.path.join(root, "meta", "info.json")
  if not os.path.isfile(path):
    raise LeRobotError(f"{root}: no meta/info.json: not a LeRobot dataset directory")
  try:
    with open(path) as f:
      info = json.load(f)
  except (OSError, ValueError) as e:
    raise LeRobotError(f"{path}: cannot be read: {e}") from None
  version = str(info.get("codebase_version", ""))
  if not version.startswith("v3"):
    raise LeRobotError(f"{path}: codebase_version {version!r}; only LeRobotDataset v3 is "
                       "read (convert older ones with LeRobot's own v2.1 -> v3.0 script)")
  if not isinstance(info.get("features"), dict):
    raise LeRobotError(f"{path}: no 'features' map")
  return info


def _slug(text: str) -> str:
  return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60] or "task"


def read_tasks(root: str) -> dict[int, str]:
  """task_index -> task string, from meta/tasks.parquet (the string is the pandas index
  LeRobot writes, or a 'task' column)."""
  import pyarrow.parquet as pq
  path = os.path.join(root, "meta", "tasks.parquet")
  if not os.path.isfile(path):
    raise LeRobotError(f"{root}: no meta/tasks.parquet")
  frame = _parquet(pq.read_table, path).to_pandas()
  if "task_index" not in frame.columns:
    raise LeRobotError(f"{path}: no task_index column")
  names = frame["task"] if "task" in frame.columns else frame.index
  return {int(i): str(n) for i, n in zip(frame["task_index"], names)}


def data_files(root: str) -> list[str]:
  files = sorted(glob.glob(os.path.join(root, "data", "**", "*.parquet"), recursive=True))
  if not files:
    raise LeRobotError(f"{root}: no data/**/*.parquet files")
  return files


def _feature(info: dict, key: str, role: str) -> dict:
  f = info["features"].get(key)
  if f is None:
    raise LeRobotError(f"{role}: the dataset has no feature {key!r} (it has "
                       f"{sorted(info['features'])})")
  return f


def _is_pixels(feature: dict) -> bool:
  return feature.get("dtype") in ("image", "video")


def _observation_keys(info: dict, mapping: LeRobotMapping) -> dict[str, str]:
  if mapping.observation is not None:
    return dict(mapping.observation)
  out = {}
  if "observation.state" in info["features"]:
    out["state"] = "observation.state"
  images = [k for k, f in info["features"].items()
            if _is_pixels(f) and k.startswith("observation.")]
  if len(images) == 1:
    out["image"] = images[0]
  if not out:
    raise LeRobotError("no observation.state and not exactly one image or video feature: name the "
                       "observation features (--observation NAME=KEY)")
  return out


def _parquet(read, path: str, **kwargs):
  """`read(path, **kwargs)` (a pyarrow reader); a damaged file's error names it (pyarrow
  raises several types)."""
  try:
    return read(path, **kwargs)
  except Exception as e:
    raise LeRobotError(f"{path}: cannot be read: {type(e).__name__}: {e}") from None


def _frames(files: Sequence[str], columns: Sequence[str]) -> Iterator[tuple[str, dict]]:
  """(file, {column: numpy or list}) per data file, only `columns`."""
  import pyarrow.parquet as pq
  for path in files:
    table = _parquet(pq.read_table, path, columns=list(columns))
    yield path, {c: table.column(c).to_pylist() if _is_binary(table.column(c).type)
                 else table.column(c).to_numpy(zero_copy_only=False) for c in columns}


def _is_binary(arrow_type) -> bool:
  import pyarrow as pa
  return pa.types.is_struct(arrow_type) or pa.types.is_binary(arrow_type)


def _stack(values, dtype, where: str, shape: tuple | None = None) -> np.ndarray:
  """Per-frame values as one array [F, *shape] (a scalar column is shape (1,))."""
  try:
    out = np.stack([np.asarray(v) for v in values]) if values.dtype == object else values
    out = np.asarray(out, dtype)
  except ValueError as e:
    raise LeRobotError(f"{where}: frames of different shapes ({e})") from None
  if out.ndim == 1:
    out = out[:, None]
  if shape is not None and out.shape[1:] != tuple(shape):
    raise LeRobotError(f"{where}: frames of shape {out.shape[1:]}, info.json says {shape}")
  return out


def _decode_images(values, where: str) -> np.ndarray:
  from PIL import Image
  out = []
  for v in values:
    data = v.get("bytes") if isinstance(v, dict) else v
    if not data:
      raise LeRobotError(f"{where}: an image without bytes (images kept as separate files "
                         "are not read; embed them in the Parquet rows)")
    out.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.uint8))
  return np.stack(out)


@dataclasses.dataclass
class _Source:
  root: str
  info: dict
  files: list[str]
  observation: dict[str, str]
  tasks: dict[int, str]  # task_index -> mtopt task name
  task_names: list[str]  # Slot order.
  success_field: str | None
  terminal_field: str | None
  action: str
  videos: dict[str, dict[int, tuple[str, float]]]  # key -> episode -> (file, from_timestamp)


def _video_index(root: str, info: dict, keys: Sequence[str]) -> dict:
  """For each video feature in `keys`: episode_index -> (its MP4 file, its start time in
  that file), from meta/episodes."""
  import pyarrow.parquet as pq
  if not keys:
    return {}
  files = sorted(glob.glob(os.path.join(root, "meta", "episodes", "**", "*.parquet"),
                           recursive=True))
  if not files:
    raise LeRobotError(f"{root}: no meta/episodes/**/*.parquet (it says where each "
                       "episode's video frames are)")
  template = info.get("video_path") or VIDEO_PATH
  out = {key: {} for key in keys}
  wanted = {key: [f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp")]
            for key in keys}
  for path in files:
    names = _parquet(pq.read_schema, path).names
    for key in keys:
      missing = [c for c in ["episode_index", *wanted[key]] if c not in names]
      if missing:
        raise LeRobotError(f"{path}: no column {missing[0]!r} (video feature {key!r})")
    # Only the columns used: LeRobot's rows also carry every feature's statistics.
    table = _parquet(pq.read_table, path,
                     columns=["episode_index", *[c for key in keys for c in wanted[key]]])
    for key in keys:
      episode, chunk, file, start = (table.column(c).to_numpy() for c in ["episode_index",
                                                                          *wanted[key]])
      for e, c, f, t in zip(episode, chunk, file, start):
        out[key][int(e)] = (os.path.join(root, template.format(
            video_key=key, chunk_index=int(c), file_index=int(f))), float(t))
  return out


def _source(root: str, mapping: LeRobotMapping) -> _Source:
  root = os.path.abspath(root)
  info = read_info(root)
  obs = _observation_keys(info, mapping)
  for name, key in obs.items():
    _feature(info, key, f"observation {name!r}")
  _feature(info, mapping.action, "action")
  strings = read_tasks(root)
  if mapping.tasks is None:
    table = {s: _slug(s) for s in strings.values()}
  else:
    table = dict(mapping.tasks)
    missing = sorted(set(strings.values()) - set(table))
    if missing:
      raise LeRobotError(f"the task table names no mtopt task for {missing[:5]} (the "
                         f"dataset's tasks: {sorted(strings.values())[:10]})")
  names = list(dict.fromkeys(table[s] for _, s in sorted(strings.items())))
  terminal = mapping.terminal_field
  if terminal is None and "next.done" in info["features"]:
    terminal = "next.done"
  for field in (mapping.success_field, terminal):
    if field is not None:
      _feature(info, field, "success/terminal field")
  videos = [k for k in obs.values() if info["features"][k].get("dtype") == "video"]
  return _Source(root, info, data_files(root), obs, {i: table[s] for i, s in strings.items()},
                 names, mapping.success_field, terminal, mapping.action,
                 _video_index(root, info, videos))


def _episode_groups(src: _Source, columns: Sequence[str]) -> Iterator[tuple[str, int, dict]]:
  """(file, episode_index, {column: values}) per episode, frames in order; an episode may
  continue into the next file."""
  carry, carry_file = None, None
  columns = list(dict.fromkeys([*columns, "episode_index", "frame_index"]))
  for path, cols in _frames(src.files, columns):
    ep = np.asarray(cols["episode_index"])
    if not len(ep):
      continue
    cuts = np.flatnonzero(np.diff(ep)) + 1
    starts, ends = np.r_[0, cuts], np.r_[cuts, len(ep)]
    for a, b in zip(starts, ends):
      part = {c: v[a:b] for c, v in cols.items()}
      if carry is not None and int(carry["episode_index"][0]) == int(ep[a]):
        part = {c: _concat(carry[c], part[c]) for c in part}
      elif carry is not None:
        yield carry_file, int(carry["episode_index"][0]), carry
      carry, carry_file = part, path
  if carry is not None:
    yield carry_file, int(carry["episode_index"][0]), carry


def _concat(a, b):
  return a + b if isinstance(a, list) else np.concatenate([a, b])


def _scan(src: _Source) -> tuple[np.ndarray, np.ndarray, int]:
  """The action's min and max over the dataset and the longest episode (frames)."""
  lo = hi = None
  longest = 0
  for path, index, cols in _episode_groups(src, [src.action]):
    a = _stack(cols[src.action], np.float32, f"{path}: episode {index}: {src.action}")
    if a.ndim != 2:
      raise LeRobotError(f"{path}: episode {index}: action must be a vector per frame")
    if not np.all(np.isfinite(a)):
      raise LeRobotError(f"{path}: episode {index}: non-finite action")
    lo = a.min(0) if lo is None else np.minimum(lo, a.min(0))
    hi = a.max(0) if hi is None else np.maximum(hi, a.max(0))
    longest = max(longest, len(a))
  if lo is None:
    raise LeRobotError(f"{src.root}: the data files hold no frames")
  return lo, np.maximum(hi, lo + 1e-6), longest


def spec_of(src: _Source, lo, hi, longest: int) -> EnvSpec:
  obs = {}
  for name, key in src.observation.items():
    f = src.info["features"][key]
    shape = tuple(int(s) for s in f.get("shape", ())) or (1,)
    dtype = np.uint8 if _is_pixels(f) else np.float32
    obs[name] = ArraySpec(shape, dtype)
  action = BoundedArraySpec(lo.shape, np.float32, "action", lo.astype(np.float32),
                            hi.astype(np.float32))
  return EnvSpec(obs, action, max(longest - 1, 1))


def read_lerobot(root: str, mapping: LeRobotMapping, max_tasks: int,
                 skip_short: bool = True) -> tuple[EnvSpec, list[str], Iterator[Episode]]:
  """The dataset's spec, task names (slot order) and its episodes (one pass per call of
  the iterator; the spec needs one pass over the actions first)."""
  src = _source(root, mapping)
  if len(src.task_names) > max_tasks:
    raise LeRobotError(f"{len(src.task_names)} tasks do not fit max_tasks={max_tasks}")
  spec = spec_of(src, *_scan(src))
  slots = {name: i for i, name in enumerate(src.task_names)}

  def episodes() -> Iterator[Episode]:
    from replay.video_frames import FrameReader, VideoError
    columns = [src.action, "task_index", *[k for k in src.observation.values()
                                           if k not in src.videos]]
    columns += [f for f in (src.success_field, src.terminal_field) if f and f not in columns]
    columns += ["timestamp"] if src.videos else []
    readers = {key: FrameReader(src.info.get("fps") or 30) for key in src.videos}
    try:
      for ep in _read_episodes(list(dict.fromkeys(columns)), readers):
        yield ep
    except VideoError as e:
      raise LeRobotError(str(e)) from None
    finally:
      for r in readers.values():
        r.close()

  def _read_episodes(columns, readers) -> Iterator[Episode]:
    for path, index, cols in _episode_groups(src, columns):
      where = f"{path}: episode {index}"
      frames = len(cols["episode_index"])
      if frames < 2:
        if skip_short:
          continue
        raise LeRobotError(f"{where}: one frame only (no transition)")
      if np.any(np.diff(np.asarray(cols["frame_index"])) != 1):
        raise LeRobotError(f"{where}: frame_index is not consecutive")
      obs = {}
      for name, key in src.observation.items():
        if key in src.videos:
          if index not in src.videos[key]:
            raise LeRobotError(f"{where}: {key}: meta/episodes has no video row for it")
          file, start = src.videos[key][index]
          obs[name] = readers[key].read(
              file, start + np.ravel(np.asarray(cols["timestamp"], np.float64)),
              f"{where}: {key}")
        elif spec.observation[name].dtype == np.uint8:
          obs[name] = _decode_images(cols[key], f"{where}: {key}")
        if spec.observation[name].dtype == np.uint8:
          if obs[name].shape[1:] != spec.observation[name].shape:
            raise LeRobotError(f"{where}: {key}: images of shape {obs[name].shape[1:]}, "
                               f"info.json says {spec.observation[name].shape}")
        else:
          obs[name] = _stack(cols[key], np.float32, f"{where}: {key}",
                             spec.observation[name].shape)
          if not np.all(np.isfinite(obs[name])):
            raise LeRobotError(f"{where}: {key}: non-finite values")
      actions = _stack(cols[src.action], np.float32, f"{where}: {src.action}")[:-1]
      task_index = int(np.asarray(cols["task_index"])[0])
      if task_index not in src.tasks:
        raise LeRobotError(f"{where}: task_index {task_index} is not in meta/tasks.parquet")
      slot = slots[src.tasks[task_index]]
      success = None
      if src.success_field:
        success = np.zeros(max_tasks, bool)
        success[slot] = float(np.ravel(np.asarray(cols[src.success_field])[-1])[0]) > 0
      terminated = bool(src.terminal_field and
                        np.ravel(np.asarray(cols[src.terminal_field])[-1])[0])
      yield Episode(obs, actions, task_id=slot, episode_id=index, success=success,
                    terminated=terminated).validate(spec, max_tasks)

  return spec, src.task_names, episodes()


def convert_from_lerobot(root: str, out_dir: str, mapping: LeRobotMapping = LeRobotMapping(),
                         max_tasks: int = 16, log=print) -> int:
  """LeRobot v3 dataset -> a new mtopt RLDS dataset. Returns the episodes written."""
  from mtopt import rlds_format
  spec, names, episodes = read_lerobot(root, mapping, max_tasks)
  n, existed = 0, os.path.exists(out_dir)
  writer = rlds_format.DatasetWriter(out_dir, spec, max_tasks, names)
  try:
    for ep in episodes:
      writer.write(ep)
      n += 1
  except BaseException:  # A bad episode midway: no half dataset is left to train on.
    if not existed:
      shutil.rmtree(out_dir, ignore_errors=True)
    raise
  writer.close()
  config = write_config(out_dir, spec, names, max_tasks, mapping.success_field is not None)
  log(f"converted {n} episodes of {len(names)} tasks ({', '.join(names)}) from {root} to "
      f"{out_dir}; train on it with `mtopt train --config {config}`")
  return n


CONFIG_FILE = "mtopt_config.py"


def write_config(out_dir: str, spec: EnvSpec, names: Sequence[str], max_tasks: int,
                 has_success: bool) -> str:
  """OUT/mtopt_config.py: a config whose `dataset` section reads the converted dataset
  (no simulator: configs/mt_opt_rlds.py's settings, less its action layout)."""
  out_dir = os.path.abspath(out_dir)
  image = any(s.dtype == np.uint8 for s in spec.observation.values())
  observation = {k: f"steps/observation/{k}" for k in spec.observation}
  lines = [
      f'"""mtopt config for the dataset in {out_dir} (`mtopt convert from-lerobot`)."""',
      "", "import ml_collections", "", "from configs import mt_opt_rlds", "", "",
      "def get_config():",
      "  c = mt_opt_rlds.get_config()",
      f"  c.run_dir = {os.path.join('runs', os.path.basename(out_dir))!r}",
      f"  c.max_tasks = {int(max_tasks)}",
      f"  c.dataset.dir = {out_dir!r}",
      '  c.dataset.tfds_name = ""',
      f"  c.dataset.max_episode_steps = {int(spec.max_episode_steps)}",
      f"  c.dataset.mapping.observation = ml_collections.ConfigDict({observation!r})",
      '  c.dataset.mapping.action = ["steps/action"]',
      '  c.dataset.mapping.task = "episode_metadata/task_id"',
      '  c.dataset.mapping.episode_id = "episode_metadata/episode_id"',
      '  c.dataset.mapping.terminal = "steps/is_terminal"',
      "  c.dataset.tasks = ml_collections.ConfigDict("
      f"{ {str(i): n for i, n in enumerate(names)}!r})",
      '  c.dataset.unmapped_tasks = "error"',
      "  # CEM's box over every action dimension: the data's own range.",
      f"  c.dataset.action_bounds = [{float(np.min(spec.action.minimum))!r}, "
      f"{float(np.max(spec.action.maximum))!r}]",
      (['  c.dataset.labels.source = "field"  # The converted success field.',
        '  c.dataset.labels.field = "episode_metadata/success"'] if has_success else
       ['  c.dataset.labels.source = "detector"  # Set dataset.labels.detector_dir.']),
      "  c.cem.discrete_dims = ()",
      f"  c.learner.batch_size = {32 if image else 256}",
      f"  c.learner.updates_per_call = {1 if image else 4}",
      "  return c", ""]
  path = os.path.join(out_dir, CONFIG_FILE)
  with open(path, "w") as f:
    f.write("\n".join(x for x in _flat(lines)))
  return path


def _flat(lines):
  for x in lines:
    yield from (x if isinstance(x, list) else [x])


# Export.
def _is_image(array: np.ndarray) -> bool:
  return array.dtype == np.uint8 and array.ndim == 4 and array.shape[-1] == 3


def _feature_json(array: np.ndarray, fps: int, video: str | None) -> dict:
  if _is_image(array):
    h, w, c = array.shape[1:]
    out = {"dtype": "video" if video else "image", "shape": [h, w, c],
           "names": ["height", "width", "channels"], "fps": fps}
    if video:
      out["info"] = {"video.height": h, "video.width": w, "video.codec": video,
                     "video.pix_fmt": "yuv420p", "video.is_depth_map": False,
                     "video.fps": fps, "video.channels": c, "has_audio": False}
    return out
  return {"dtype": "float32", "shape": list(array.shape[1:]) or [1], "fps": fps}


def _png(image: np.ndarray) -> dict:
  from PIL import Image
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return {"bytes": buf.getvalue(), "path": ""}


def export_lerobot(episodes: Iterator[Episode], task_names: Sequence[str], out_dir: str,
                   fps: int = 10, episodes_per_file: int = 1000, video: str | None = None,
                   log=print) -> int:
  """mtopt episodes -> a new LeRobot v3 dataset (observations as observation.NAME, images
  as embedded PNG, or with `video` ("av1", LeRobot's own, or "h264") as lossy MP4 files,
  `next.success` from the labels or ground truth of the episode's own task, `next.done` at
  a terminal end). Returns the episodes written."""
  import pandas as pd
  import pyarrow as pa
  import pyarrow.parquet as pq
  from replay.video_frames import CODECS, FrameWriter
  IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # LeRobot's.
  if video is not None and video not in CODECS:
    raise LeRobotError(f"video codec {video!r}: expected one of {sorted(CODECS)}")
  if os.path.exists(os.path.join(out_dir, "meta", "info.json")):
    raise LeRobotError(f"{out_dir} already holds a LeRobot dataset; choose a new directory")
  os.makedirs(os.path.join(out_dir, "meta"), exist_ok=True)
  rows, meta_rows, features, stats = [], [], None, {}
  frame, file_index, n = 0, 0, 0
  used_tasks = {name: i for i, name in enumerate(task_names)}  # task_index = slot.
  writers: dict[str, FrameWriter] = {}  # Video key -> the open file of this data file.

  def flush():
    nonlocal rows, file_index
    for w in writers.values():
      w.close()
    writers.clear()
    if not rows:
      return
    path = os.path.join(out_dir, DATA_PATH.format(chunk_index=0, file_index=file_index))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    columns = {}
    for k in rows[0]:
      values = [v for r in rows for v in r[k]]
      columns[k] = pa.array(values, IMAGE_TYPE) if features[k]["dtype"] == "image" else values
    pq.write_table(pa.table(columns), path)
    rows, file_index = [], file_index + 1

  for ep in episodes:
    f = ep.num_steps + 1
    name = task_names[ep.task_id] if ep.task_id < len(task_names) else f"task_{ep.task_id}"
    t_index = used_tasks.setdefault(name, len(used_tasks))
    row, video_rows = {}, {}
    for k, v in ep.observations.items():
      key = f"observation.{k}"
      if video and _is_image(v):
        if key not in writers:
          writers[key] = FrameWriter(os.path.join(out_dir, VIDEO_PATH.format(
              video_key=key, chunk_index=0, file_index=file_index)), fps, *v.shape[1:3],
              codec=video)
        start = writers[key].frames / fps
        writers[key].write(v)
        video_rows.update({f"videos/{key}/chunk_index": 0,
                           f"videos/{key}/file_index": file_index,
                           f"videos/{key}/from_timestamp": start,
                           f"videos/{key}/to_timestamp": start + f / fps})
      elif _is_image(v):
        row[key] = [_png(x) for x in v]
      else:
        row[key] = list(np.asarray(v, np.float32).reshape(f, -1))
    action = np.concatenate([ep.actions, np.zeros((1, *ep.actions.shape[1:]), np.float32)])
    row["action"] = list(action.astype(np.float32))
    outcome = ep.labels if ep.labels is not None else ep.success
    done = np.zeros(f, bool)
    done[-1] = bool(ep.terminated)
    success = np.zeros(f, bool)
    success[-1] = outcome is not None and float(outcome[ep.task_id]) > 0.5
    row.update({"next.done": list(done), "next.success": list(success),
                "timestamp": list(np.arange(f, dtype=np.float32) / fps),
                "frame_index": list(range(f)), "episode_index": [n] * f,
                "index": list(range(frame, frame + f)), "task_index": [t_index] * f})
    if features is None:
      features = {f"observation.{k}": _feature_json(v, fps, video)
                  for k, v in ep.observations.items()}
      features["action"] = _feature_json(action, fps, None)
      for k, dtype in (("next.done", "bool"), ("next.success", "bool"),
                       ("timestamp", "float32"), ("frame_index", "int64"),
                       ("episode_index", "int64"), ("index", "int64"),
                       ("task_index", "int64")):
        features[k] = {"dtype": dtype, "shape": [1], "names": None, "fps": fps}
    for key in [k for k in row if k.startswith(("observation.", "action"))]:
      if _is_pixels(features[key]):
        continue
      x = np.asarray(row[key], np.float64)
      s = stats.setdefault(key, {"n": 0, "sum": 0.0, "sq": 0.0, "min": x.min(0),
                                 "max": x.max(0)})
      s["n"] += len(x)
      s["sum"] = s["sum"] + x.sum(0)
      s["sq"] = s["sq"] + np.square(x).sum(0)
      s["min"], s["max"] = np.minimum(s["min"], x.min(0)), np.maximum(s["max"], x.max(0))
    meta_rows.append({"episode_index": n, "tasks": [name], "length": f,
                      "data/chunk_index": 0, "data/file_index": file_index,
                      "dataset_from_index": frame, "dataset_to_index": frame + f,
                      **video_rows})
    rows.append(row)
    frame += f
    n += 1
    if len(rows) >= episodes_per_file:
      flush()
  flush()
  if n == 0:
    raise LeRobotError("no episodes to export")
  pd.DataFrame({"task_index": list(used_tasks.values())},
               index=pd.Index(list(used_tasks), name="task")).to_parquet(
                   os.path.join(out_dir, "meta", "tasks.parquet"))
  os.makedirs(os.path.dirname(os.path.join(out_dir, EPISODES_PATH)), exist_ok=True)
  pd.DataFrame(meta_rows).to_parquet(os.path.join(out_dir, EPISODES_PATH), index=False)
  with open(os.path.join(out_dir, "meta", "stats.json"), "w") as fh:
    json.dump({k: {"mean": (s["sum"] / s["n"]).tolist(),
                   "std": np.sqrt(np.maximum(s["sq"] / s["n"] - (s["sum"] / s["n"]) ** 2,
                                             0)).tolist(),
                   "min": s["min"].tolist(), "max": s["max"].tolist(), "count": [s["n"]]}
               for k, s in stats.items()}, fh)
  info = {"codebase_version": "v3.0", "robot_type": None, "total_episodes": n,
          "total_frames": frame, "total_tasks": len(used_tasks), "chunks_size": 1000,
          "fps": fps, "splits": {"train": f"0:{n}"}, "data_path": DATA_PATH,
          "video_path": VIDEO_PATH if video else None, "features": features}
  with open(os.path.join(out_dir, "meta", "info.json"), "w") as fh:
    json.dump(info, fh, indent=2)
  log(f"exported {n} episodes ({frame} frames, {len(used_tasks)} tasks) to {out_dir}")
  return n
