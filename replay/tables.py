"""The Reverb table layout: names, signatures, selectors and rate limiters.

One table per (task slot, outcome) holds one item per stored episode for that task, so a
batch can take an exact success:failure ratio per task. Items reference a whole episode's
steps (T+1 observations, T actions plus a zero pad); the steps themselves are written once
and shared by every table's items. Items are sampled in proportion to their episode's
length (priority T, exponent 1), i.e. uniformly over transitions. One more table,
`episodes`, holds one item per episode with its metadata (ids, labels, ground truth) over
the same steps, so the replay can enumerate its episodes for RLDS export.

Under `all` sharing nearly every episode is a failure for nearly every task, so failure
items would be most of the items (~1 KB each in Reverb, several times an episode's state
data per task). Instead every episode gets one item in the `shared` table with its label
vector, and a task's failures are sampled from it, keeping rows labelled failure for that
task; only successes get per-task items. Then storing an episode for 10 tasks costs 2 items
plus one per task it succeeded at.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mtopt.specs import EnvSpec
from mtopt.tf_setup import tf

import reverb  # noqa: E402  (after tf_setup hides GPUs)

OUTCOMES = ("success", "failure")
EPISODES_TABLE = "episodes"
SHARED_TABLE = "shared"
# The episodes table is a min-heap on write sequence (< EPISODE_ROUND); see ReverbReplay.episodes.
EPISODE_ROUND = float(2 ** 40)


@dataclasses.dataclass(frozen=True)
class TableLayout:
  """Everything a server and its clients must agree on.

  Attributes:
    spec: the episodes' env spec.
    max_tasks: task slots; every slot has its two tables, so a new task needs no new table.
    max_size: items (episodes) per (task, outcome) table; the oldest is removed first.
    max_episodes: items in the episodes table (the episodes export can see).
    min_size: items a table needs before it is sampled.
    samples_per_insert: sampled items per inserted item per table; 0 disables rate limiting.
  """

  spec: EnvSpec
  max_tasks: int
  max_size: int = 1_000_000
  max_episodes: int | None = None
  min_size: int = 1
  samples_per_insert: float = 0.0

  def __post_init__(self):
    if self.max_tasks < 1 or self.max_size < 1 or self.min_size < 1:
      raise ValueError(f"max_tasks, max_size and min_size must be >= 1, got "
                       f"{self.max_tasks}, {self.max_size}, {self.min_size}")
    if self.samples_per_insert < 0:
      raise ValueError(f"samples_per_insert must be >= 0, got {self.samples_per_insert}")
    if self.max_episodes is None:
      object.__setattr__(self, "max_episodes", self.max_size)


def task_table(slot: int, success: bool) -> str:
  return f"task{slot:03d}_{'success' if success else 'failure'}"


def task_tables(layout: TableLayout) -> list[str]:
  return [task_table(k, s) for k in range(layout.max_tasks) for s in (True, False)]


def steps_signature(spec: EnvSpec) -> dict:
  """Observation [T+1, ...] and action [T+1, A]; the last action row is a pad (see
  `final_pad`)."""
  return {
      "observation": {k: tf.TensorSpec([None, *s.shape], tf.as_dtype(s.dtype))
                      for k, s in spec.observation.items()},
      "action": tf.TensorSpec([None, *spec.action.shape], tf.float32),
  }


def final_pad(shape, terminated: bool) -> np.ndarray:
  """The action row stored with an episode's final observation (which has no action): zeros,
  with 1 in its first entry if the episode ended by termination rather than the time limit,
  so that a sampled item tells the sampler where to stop bootstrapping (items written
  before this rule have zeros: time limit)."""
  pad = np.zeros(shape, np.float32)
  pad[0] = float(terminated)
  return pad


def shared_signature(spec: EnvSpec, max_tasks: int) -> dict:
  return {**steps_signature(spec), "labels": tf.TensorSpec([max_tasks], tf.float32)}


def metadata_signature(max_tasks: int) -> dict:
  return {
      "task_id": tf.TensorSpec([], tf.int32), "robot_id": tf.TensorSpec([], tf.int32),
      "episode_id": tf.TensorSpec([], tf.int64), "terminated": tf.TensorSpec([], tf.bool),
      "success": tf.TensorSpec([max_tasks], tf.bool), "has_success": tf.TensorSpec([], tf.bool),
      "labels": tf.TensorSpec([max_tasks], tf.float32),
  }


def episode_signature(spec: EnvSpec, max_tasks: int) -> dict:
  return {**steps_signature(spec), "metadata": metadata_signature(max_tasks)}


def episode_metadata(ep, max_tasks: int) -> dict:
  """The per-episode values stored beside its last step (labels must be set)."""
  return {
      "task_id": np.int32(ep.task_id), "robot_id": np.int32(ep.robot_id),
      "episode_id": np.int64(ep.episode_id), "terminated": np.bool_(ep.terminated),
      "success": (np.zeros(max_tasks, bool) if ep.success is None
                  else np.asarray(ep.success, bool)),
      "has_success": np.bool_(ep.success is not None),
      "labels": np.asarray(ep.labels, np.float32),
  }


def _rate_limiter(layout: TableLayout):
  if layout.samples_per_insert <= 0:
    return reverb.rate_limiters.MinSize(layout.min_size)
  # Let samplers run ahead of (or behind) inserts by ~100 items' worth before blocking.
  buffer = max(1.0, layout.samples_per_insert) * max(layout.min_size, 100)
  return reverb.rate_limiters.SampleToInsertRatio(
      samples_per_insert=layout.samples_per_insert, min_size_to_sample=layout.min_size,
      error_buffer=buffer)


def make_tables(layout: TableLayout) -> list:
  """The reverb.Table list for a server with this layout."""
  sig = steps_signature(layout.spec)
  tables = [reverb.Table(name, sampler=reverb.selectors.Prioritized(1.0),
                         remover=reverb.selectors.Fifo(), max_size=layout.max_size,
                         rate_limiter=_rate_limiter(layout), signature=sig)
            for name in task_tables(layout)]
  tables.append(reverb.Table(SHARED_TABLE, sampler=reverb.selectors.Prioritized(1.0),
                             remover=reverb.selectors.Fifo(), max_size=layout.max_size,
                             rate_limiter=_rate_limiter(layout),
                             signature=shared_signature(layout.spec, layout.max_tasks)))
  # Export walks this table by min-heap priority (see ReverbReplay.episodes); FIFO removal.
  tables.append(reverb.Table(EPISODES_TABLE, sampler=reverb.selectors.MinHeap(),
                             remover=reverb.selectors.Fifo(), max_size=layout.max_episodes,
                             rate_limiter=reverb.rate_limiters.MinSize(1),
                             signature=episode_signature(layout.spec, layout.max_tasks)))
  return tables
