"""The labeller in its two places: inline, and in bulk over an RLDS dataset.

A labeller is any callable `labeller(episodes) -> float32 [N, max_tasks]` (one forward pass
on the final observations). `SuccessDetector` is one; `load_labeller(dir)` loads one from a
detector directory. `relabel_dataset` labels a whole dataset with Ray Data (parallel
readers of dataset slices, then detector workers) and writes the labels next to the data
(see `label_store`).
"""

from __future__ import annotations

import numpy as np

from success_detectors import label_store
from success_detectors.detector import SuccessDetector

_OBS_PREFIX = "obs:"


def load_labeller(detector_dir: str) -> SuccessDetector:
  """An inline labeller: the detector saved in `detector_dir`."""
  return SuccessDetector.load(detector_dir)


# Bulk relabelling.
def read_final_observations(data_dir: str, split: str) -> dict[str, np.ndarray]:
  """Episode ids and final observations of one slice of an RLDS dataset, as columns
  {"episode_id": [n], "obs:NAME": [n, ...]}."""
  from mtopt import rlds_format
  from mtopt.tf_setup import tf
  import tensorflow_datasets as tfds

  def last(ex):
    steps = ex["steps"].batch(1 << 20).get_single_element()
    obs = {k: v[-1] for k, v in steps["observation"].items()}
    return ex["episode_metadata"]["episode_id"], obs

  ds = rlds_format.load_builder(data_dir).as_dataset(split=split)
  ds = ds.map(last, num_parallel_calls=tf.data.AUTOTUNE).batch(1024)
  ids, cols = [], {}
  for eid, obs in tfds.as_numpy(ds):
    ids.append(eid)
    for k, v in obs.items():
      cols.setdefault(k, []).append(v)
  if not ids:  # An empty slice still has every column, so that blocks share one schema.
    spec, _, _ = rlds_format.read_metadata(data_dir)
    return {"episode_id": np.zeros(0, np.int64),
            **{_OBS_PREFIX + k: s.zeros(0) for k, s in spec.observation.items()}}
  out = {"episode_id": np.concatenate(ids).astype(np.int64)}
  out.update({_OBS_PREFIX + k: np.concatenate(v) for k, v in cols.items()})
  return out


def _read_slices(batch: dict, data_dir: str) -> dict:
  parts = [read_final_observations(data_dir, str(s)) for s in batch["split"]]
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class _DetectorBatches:
  """Ray Data UDF: observation columns -> {"episode_id", "labels"}; loads the detector once."""

  def __init__(self, detector_dir: str):
    self.detector = SuccessDetector.load(detector_dir)

  def __call__(self, batch: dict) -> dict:
    obs = {k[len(_OBS_PREFIX):]: v for k, v in batch.items() if k.startswith(_OBS_PREFIX)}
    return {"episode_id": batch["episode_id"], "labels": self.detector.predict(obs)}


def relabel_dataset(data_dir: str, detector_dir: str, num_slices: int = 4,
                    num_labellers: int = 1, batch_size: int = 1024) -> str:
  """Labels every episode of the RLDS dataset `data_dir` for every slot, in parallel with
  Ray Data (Ray must be initialised), and writes DATA_DIR/labels.npz. Returns its path."""
  import ray
  from mtopt import rlds_format

  builder = rlds_format.load_builder(data_dir)  # A clear error for a non-dataset directory.
  detector = SuccessDetector.load(detector_dir)
  ctx = ray.data.DataContext.get_current()
  ctx.enable_progress_bars = False
  n = builder.info.splits[rlds_format.SPLIT].num_examples
  bounds = np.linspace(0, n, min(max(1, num_slices), max(n, 1)) + 1).astype(int)
  splits = [f"{rlds_format.SPLIT}[{a}:{b}]" for a, b in zip(bounds[:-1], bounds[1:])]
  ds = ray.data.from_items([{"split": s} for s in splits], override_num_blocks=len(splits))
  ds = ds.map_batches(_read_slices, fn_kwargs={"data_dir": data_dir}, batch_size=1,
                      num_cpus=1)
  ds = ds.map_batches(_DetectorBatches, fn_constructor_kwargs={"detector_dir": detector_dir},
                      batch_size=batch_size, num_cpus=1,
                      compute=ray.data.ActorPoolStrategy(size=max(1, num_labellers)))
  ids, labels = [], []
  for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
    ids.append(batch["episode_id"])
    labels.append(batch["labels"])
  ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
  labels = np.concatenate(labels) if labels else np.zeros((0, detector.max_tasks), np.float32)
  return label_store.write_labels(data_dir, ids, labels, detector.version, detector.task_names)
