"""The labeller in its two places: inline, and in bulk over an RLDS dataset.

A labeller is any callable `labeller(episodes) -> float32 [N, max_tasks]` (one forward pass
on the final observations). `SuccessDetector` is one; `load_labeller(dir)` loads one from a
detector directory. `relabel_dataset` labels a whole dataset in this process (tf.data reads
and parses episodes in parallel; the detector labels them in batches, so memory stays one
batch) and writes the labels next to the data (see `label_store`).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from success_detectors import label_store
from success_detectors.detector import SuccessDetector


def load_labeller(detector_dir: str) -> SuccessDetector:
  """An inline labeller: the detector saved in `detector_dir`."""
  return SuccessDetector.load(detector_dir)


# Bulk relabelling.
def final_observations(data_dir: str, batch_size: int = 1024
                       ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
  """(episode ids [n], final observations name -> [n, ...]) of an RLDS dataset, in batches."""
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
