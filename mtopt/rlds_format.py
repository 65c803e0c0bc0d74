"""Episodes <-> RLDS datasets on disk (TFDS format, loadable by `tfds.builder_from_directory`).

One RLDS episode per `Episode`. Step t holds observation o_t and the action a_t taken
there; the extra last step holds the final observation o_T with `is_last` (its action is
zeros and its reward 0, as RLDS does). `reward` at step T-1 is the episode's outcome for the
task it was collected for (detector label if present, else ground truth, else 0);
`is_terminal` marks an episode ended by a terminate action or terminal state. Everything
else an Episode carries (task and robot ids, per-task ground truth and labels) is in
`episode_metadata`, so that writing then reading is lossless. The env spec and task names
travel in the dataset's metadata (`metadata.json`).
"""

from __future__ import annotations

import json
import os
from typing import Iterator, Sequence

import numpy as np

from mtopt.episode import Episode
from mtopt.specs import EnvSpec
from mtopt.tf_setup import tf

import tensorflow_datasets as tfds  # noqa: E402  (after tf_setup hides GPUs)

DATASET_NAME = "mtopt_episodes"
SPLIT = "train"


from mtopt.dataset_errors import DatasetError  # noqa: E402,F401  (re-exported)


def features(spec: EnvSpec, max_tasks: int) -> tfds.features.FeaturesDict:
  """The RLDS feature spec for episodes of `spec`."""
  obs = {}
  for name, s in spec.observation.items():
    if s.dtype == np.uint8 and len(s.shape) == 3 and s.shape[-1] in (1, 3):
      obs[name] = tfds.features.Image(shape=s.shape, encoding_format="png")
    else:
      obs[name] = tfds.features.Tensor(shape=s.shape, dtype=s.dtype)
  return tfds.features.FeaturesDict({
      "steps": tfds.features.Dataset({
          "observation": tfds.features.FeaturesDict(obs),
          "action": tfds.features.Tensor(shape=spec.action.shape, dtype=np.float32),
          "reward": tfds.features.Scalar(dtype=np.float32),
          "discount": tfds.features.Scalar(dtype=np.float32),
          "is_first": tfds.features.Scalar(dtype=np.bool_),
          "is_last": tfds.features.Scalar(dtype=np.bool_),
          "is_terminal": tfds.features.Scalar(dtype=np.bool_),
      }),
      "episode_metadata": tfds.features.FeaturesDict({
          "task_id": tfds.features.Scalar(dtype=np.int32),
          "robot_id": tfds.features.Scalar(dtype=np.int32),
          "episode_id": tfds.features.Scalar(dtype=np.int64),
          "success": tfds.features.Tensor(shape=(max_tasks,), dtype=np.bool_),
          "has_success": tfds.features.Scalar(dtype=np.bool_),
          "labels": tfds.features.Tensor(shape=(max_tasks,), dtype=np.float32),
          "has_labels": tfds.features.Scalar(dtype=np.bool_),
      }),
  })


def outcome(ep: Episode) -> float:
  """The episode's reward for the task it was collected for."""
  if ep.labels is not None:
    return float(ep.labels[ep.task_id])
  if ep.success is not None:
    return float(ep.success[ep.task_id])
  return 0.0


def episode_to_rlds(ep: Episode, max_tasks: int) -> dict:
  """An Episode as one RLDS example (numpy values, T+1 steps)."""
  t = ep.num_steps
  action = np.concatenate([ep.actions, np.zeros((1, *ep.actions.shape[1:]), np.float32)])
  reward = np.zeros(t + 1, np.float32)
  reward[t - 1] = outcome(ep) if ep.terminated else 0.0  # The rule of `mtopt.batch.Batch`.
  discount = np.ones(t + 1, np.float32)
  if ep.terminated:
    discount[t] = 0.0
  is_first = np.zeros(t + 1, bool)
  is_first[0] = True
  is_last = np.zeros(t + 1, bool)
  is_last[t] = True
  return {
      "steps": {
          "observation": dict(ep.observations), "action": action, "reward": reward,
          "discount": discount, "is_first": is_first, "is_last": is_last,
          "is_terminal": is_last & bool(ep.terminated),
      },
      "episode_metadata": {
          "task_id": np.int32(ep.task_id), "robot_id": np.int32(ep.robot_id),
          "episode_id": np.int64(ep.episode_id),
          "success": (np.zeros(max_tasks, bool) if ep.success is None
                      else np.asarray(ep.success, bool)),
          "has_success": ep.success is not None,
          "labels": (np.zeros(max_tasks, np.float32) if ep.labels is None
                     else np.asarray(ep.labels, np.float32)),
          "has_labels": ep.labels is not None,
      },
  }


def rlds_to_episode(ex: dict) -> Episode:
  """One decoded RLDS example (numpy, steps stacked on axis 0) back to an Episode."""
  steps, meta = ex["steps"], ex["episode_metadata"]
  return Episode(
      observations={k: np.asarray(v) for k, v in steps["observation"].items()},
      actions=np.asarray(steps["action"][:-1], np.float32),
      task_id=int(meta["task_id"]), robot_id=int(meta["robot_id"]),
      episode_id=int(meta["episode_id"]),
      success=np.asarray(meta["success"], bool) if meta["has_success"] else None,
      labels=np.asarray(meta["labels"], np.float32) if meta["has_labels"] else None,
      terminated=bool(steps["is_terminal"][-1]))


class DatasetWriter:
  """Writes validated Episodes into a new RLDS dataset directory.

  Episodes are buffered and written in groups; `close()` (or leaving the `with` block)
  finishes the dataset. An existing dataset is never overwritten unless asked.
  """

  def __init__(self, out_dir: str, spec: EnvSpec, max_tasks: int, task_names: Sequence[str],
               episodes_per_shard: int = 500, overwrite: bool = False, flush_every: int = 64):
    from tensorflow_datasets.core import sequential_writer
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(os.path.join(out_dir, "dataset_info.json")) and not overwrite:
      raise DatasetError(f"{out_dir} already holds a dataset; choose a new directory")
    os.makedirs(out_dir, exist_ok=True)
    self.spec, self.max_tasks = spec, max_tasks
    meta = tfds.core.MetadataDict(env_spec=spec.to_json(), max_tasks=max_tasks,
                                  task_names=list(task_names))
    info = tfds.core.DatasetInfo(
        builder=tfds.core.dataset_info.DatasetIdentity(
            name=DATASET_NAME, data_dir=out_dir, module_name="mtopt.rlds_format",
            version="1.0.0"),
        description="mtopt robot episodes in RLDS format.",
        features=features(spec, max_tasks), metadata=meta)
    self._writer = sequential_writer.SequentialWriter(info, episodes_per_shard, overwrite=True)
    self._writer.initialize_splits([SPLIT])
    self._buffer: list[dict] = []
    self._flush_every = flush_every
    self.num_written = 0
    self.out_dir = out_dir

  def write(self, ep: Episode) -> None:
    ep.validate(self.spec, self.max_tasks)
    self._buffer.append(episode_to_rlds(ep, self.max_tasks))
    self.num_written += 1
    if len(self._buffer) >= self._flush_every:
      self.flush()

  def flush(self) -> None:
    if self._buffer:
      self._writer.add_examples({SPLIT: self._buffer})
      self._buffer = []

  def close(self) -> None:
    self.flush()
    self._writer.close_all()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def read_metadata(data_dir: str) -> tuple[EnvSpec | None, int | None, list[str]]:
  """The env spec, max_tasks and task names that an mtopt dataset was written with."""
  path = os.path.join(data_dir, "metadata.json")
  if not os.path.exists(path):
    return None, None, []
  with open(path) as f:
    meta = json.load(f)
  spec = EnvSpec.from_json(meta["env_spec"]) if "env_spec" in meta else None
  return spec, meta.get("max_tasks"), list(meta.get("task_names", []))


def load_builder(data_dir: str):
  """`tfds.builder_from_directory` with a clear error for a directory that is not a dataset."""
  if not os.path.exists(os.path.join(data_dir, "dataset_info.json")):
    raise DatasetError(f"{data_dir}: not a TFDS/RLDS dataset (no dataset_info.json)")
  try:
    return tfds.builder_from_directory(data_dir)
  except Exception as e:  # TFDS raises many types for corrupt metadata.
    raise DatasetError(f"{data_dir}: cannot load dataset: {type(e).__name__}: {e}") from e


def _stack_steps(ex):
  """Turns the nested `steps` dataset into tensors [T+1, ...] inside the tf.data graph."""
  steps = ex["steps"].batch(1 << 20).get_single_element()
  return {**ex, "steps": steps}


def as_numpy_examples(data_dir: str, split: str = SPLIT) -> Iterator[dict]:
  """Decoded RLDS examples, steps stacked, as nested numpy dicts."""
  ds = load_builder(data_dir).as_dataset(split=split)
  ds = ds.map(_stack_steps, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  yield from tfds.as_numpy(ds.prefetch(tf.data.AUTOTUNE))


def read_episodes(data_dir: str, split: str = SPLIT) -> Iterator[Episode]:
  """The Episodes of a dataset written by DatasetWriter, in write order."""
  for ex in as_numpy_examples(data_dir, split):
    yield rlds_to_episode(ex)
