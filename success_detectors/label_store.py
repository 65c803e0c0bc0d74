"""Detector labels stored next to an RLDS dataset, so that the dataset is never rewritten.

`DATA_DIR/labels.npz` holds:
  episode_id        int64 [N]
  labels            float32 [N, max_tasks], success probabilities for every slot
  detector_version  int64 [], the version of the detector that made them
  task_names        str [max_tasks], the slot names at labelling time ("" for free slots)
A newer labelling replaces the file atomically.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping

import numpy as np

LABELS_FILE = "labels.npz"
FINALS_DIR = "final_observations"  # Kept by `labeller.final_observations`; derived data.


@dataclasses.dataclass
class StoredLabels:
  episode_id: np.ndarray
  labels: np.ndarray
  detector_version: int
  task_names: list[str]

  def by_episode(self) -> dict[int, np.ndarray]:
    return {int(e): row for e, row in zip(self.episode_id, self.labels)}


def labels_path(data_dir: str) -> str:
  return os.path.join(data_dir, LABELS_FILE)


def write_labels(data_dir: str, episode_id: np.ndarray, labels: np.ndarray,
                 detector_version: int, task_names: Mapping[int, str]) -> str:
  """Writes DATA_DIR/labels.npz (atomically); rows are sorted by episode id."""
  episode_id = np.asarray(episode_id, np.int64).reshape(-1)
  labels = np.asarray(labels, np.float32)
  if labels.ndim != 2 or len(labels) != len(episode_id):
    raise ValueError(f"labels {labels.shape} do not match {len(episode_id)} episode ids")
  order = np.argsort(episode_id, kind="stable")
  names = np.array([task_names.get(s, "") for s in range(labels.shape[1])], dtype=str)
  path = labels_path(data_dir)
  tmp = path + ".tmp.npz"
  np.savez(tmp, episode_id=episode_id[order], labels=labels[order],
           detector_version=np.int64(detector_version), task_names=names)
  os.replace(tmp, path)
  return path


def read_labels(data_dir: str) -> StoredLabels | None:
  """The labels stored next to `data_dir`, or None if it has none."""
  path = labels_path(data_dir)
  if not os.path.exists(path):
    return None
  with np.load(path) as f:
    return StoredLabels(f["episode_id"], f["labels"], int(f["detector_version"]),
                        [str(n) for n in f["task_names"]])
