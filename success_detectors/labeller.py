"""The labeller in its two places: inline, and in bulk over an RLDS dataset.

A labeller is any callable `labeller(episodes) -> float32 [N, max_tasks]` (one forward pass
on the final observations). `SuccessDetector` is one; `load_labeller(dir)` loads one from a
detector directory. `relabel_dataset` labels a whole dataset in this process (tf.data reads
and parses episodes in parallel; the detector labels them in batches, so memory stays one
batch) and writes the labels next to the data (see `label_store`).

Labelling needs only each episode's final observation, and a dataset's episodes never
change, so the first bulk pass also keeps them in DATA_DIR/final_observations/ (batches of
ids and observations, with the shard files' names, sizes and modification times they were
read from). Later passes (a new task, a retrained detector) read that instead of parsing
every episode again; a dataset whose files changed is read again.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Iterator

import numpy as np

from mtopt.durable_files import write_json
from success_detectors import label_store
from success_detectors.detector import SuccessDetector


def load_labeller(detector_dir: str) -> SuccessDetector:
  """An inline labeller: the detector saved in `detector_dir`."""
  return SuccessDetector.load(detector_dir)


# Bulk relabelling.
def final_observations(data_dir: str, batch_size: int = 1024
                       ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
  """(episode ids [n], final observations name -> [n, ...]) of an RLDS dataset, in batches:
  from its kept final observations if its files are unchanged, else read (and kept)."""
  cache = os.path.join(data_dir, label_store.FINALS_DIR)
  source = _dataset_files(data_dir)
  if _cache_source(cache) == source:
    for name in sorted(f for f in os.listdir(cache) if f.endswith(".npz")):
      with np.load(os.path.join(cache, name)) as z:
        yield z["episode_id"], {k[4:]: z[k] for k in z.files if k.startswith("obs/")}
    return
  tmp = f"{cache}.tmp{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  keep = _try(lambda: os.makedirs(tmp))
  for i, (eid, obs) in enumerate(_read_final_observations(data_dir, batch_size)):
    if keep:
      keep = _try(lambda: np.savez(os.path.join(tmp, f"batch-{i:06d}.npz"), episode_id=eid,
                                   **{f"obs/{k}": v for k, v in obs.items()}))
    yield eid, obs
  if keep and _try(lambda: write_json(os.path.join(tmp, "source.json"), source)):
    shutil.rmtree(cache, ignore_errors=True)
    _try(lambda: os.replace(tmp, cache))
  shutil.rmtree(tmp, ignore_errors=True)


def _read_final_observations(data_dir: str, batch_size: int):
  from mtopt import rlds_format
  from mtopt.tf_setup import tf
  import tensorflow_datasets as tfds

  def last(ex):
    steps = ex["steps"].batch(1 << 20).get_single_element()
    obs = {k: v[-1] for k, v in steps["observation"].items()}
    return ex["episode_metadata"]["episode_id"], obs

  ds = rlds_format.load_builder(data_dir).as_dataset(split=rlds_format.SPLIT)
  ds = ds.map(last, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(2)
  for eid, obs in tfds.as_numpy(ds):
    yield np.asarray(eid, np.int64), obs


def _dataset_files(data_dir: str) -> list:
  """What the kept final observations depend on: the dataset's files, as [name, size,
  mtime_ns] (not the labels or the kept observations themselves)."""
  out = []
  for name in sorted(os.listdir(data_dir)):
    path = os.path.join(data_dir, name)
    if os.path.isfile(path) and name != label_store.LABELS_FILE and not name.endswith(".tmp.npz"):
      st = os.stat(path)
      out.append([name, st.st_size, st.st_mtime_ns])
  return out


def _cache_source(cache: str):
  try:
    with open(os.path.join(cache, "source.json")) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _try(fn) -> bool:
  """Runs fn; False if the disk refused (a read-only dataset is labelled all the same)."""
  try:
    fn()
    return True
  except OSError:
    return False


def relabel_dataset(data_dir: str, detector: SuccessDetector | str,
                    batch_size: int = 1024) -> str:
  """Labels every episode of the RLDS dataset `data_dir` for every slot with `detector` (or
  the one saved in that directory) and writes DATA_DIR/labels.npz. Returns its path."""
  from mtopt import rlds_format
  rlds_format.load_builder(data_dir)  # A clear error for a non-dataset directory.
  det = detector if isinstance(detector, SuccessDetector) else SuccessDetector.load(detector)
  ids, labels = [np.zeros(0, np.int64)], [np.zeros((0, det.max_tasks), np.float32)]
  for eid, obs in final_observations(data_dir, batch_size):
    ids.append(eid)
    labels.append(det.predict(obs))
  return label_store.write_labels(data_dir, np.concatenate(ids), np.concatenate(labels),
                                  det.version, det.task_names)
