"""The Reverb table layout: names, signatures, selectors and rate limiters.

One table per (task slot, outcome) holds one item per stored episode for that task, so a
batch can take an exact success:failure ratio per task. An episode is stored as ONE Reverb
step whose columns hold all of it, padded to L = max_episode_steps + 1 rows (`pad_episode`:
observations zero-padded, actions NaN-padded after the row that marks the end), and every
table's items reference that step: the data is written once and shared. One append per
episode, not one per time step, is what makes writing (and so relabelling, importing and
ingesting robots' episodes) fast: `benchmarks.replay --quick` writes ~3x the episodes/s of
per-step appends (1,906 vs 625 on this 2-core machine). Items are sampled in proportion to
their episode's length (priority T, exponent 1), i.e. uniformly over transitions. One more
table, `episodes`, holds one item per episode with its metadata (ids, labels, ground
truth), so the replay can enumerate its episodes for RLDS export and relabelling.

Under `all` sharing nearly every episode is a failure for nearly every task, so failure
items would be most of the items (~1 KB each in Reverb, several times an episode's state
data per task). Instead every episode gets one item in the `shared` table with its label
vector, and a task's failures are sampled from it, keeping rows labelled failure for that
task; only successes get per-task items. Then storing an episode for 10 tasks costs 2 items
plus one per task it succeeded at.

Layouts: 2 (this one). Layout 1 stored one Reverb step per time step ([T+1, ...] items);
a replay checkpointed in it is read once through `TableLayout(..., version=1)` and rewritten
(`mtopt.program.relabel`), never served to a sampler.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mtopt.specs import EnvSpec
from mtopt.tf_setup import tf

import reverb  # noqa: E402  (after tf_setup hides GPUs)

LAYOUT_VERSION = 2
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
    version: the storage layout (see module docstring); 1 only to read an old replay.
  """

  spec: EnvSpec
  max_tasks: int
  max_size: int = 1_000_000
  max_episodes: int | None = None
  min_size: int = 1
  samples_per_insert: float = 0.0
  version: int = LAYOUT_VERSION

  def __post_init__(self):
    if self.max_tasks < 1 or self.max_size < 1 or self.min_size < 1:
      raise ValueError(f"max_tasks, max_size and min_size must be >= 1, got "
                       f"{self.max_tasks}, {self.max_size}, {self.min_size}")
    if self.version not in (1, LAYOUT_VERSION):
      raise ValueError(f"unknown replay layout version {self.version}")
    if self.samples_per_insert < 0:
      raise ValueError(f"samples_per_insert must be >= 0, got {self.samples_per_insert}")
    if self.max_episodes is None:
      object.__setattr__(self, "max_episodes", self.max_size)


def task_table(slot: int, success: bool) -> str:
  return f"task{slot:03d}_{'success' if success else 'failure'}"


def task_tables(layout: TableLayout) -> list[str]:
  return [task_table(k, s) for k in range(layout.max_tasks) for s in (True, False)]


def episode_rows(spec: EnvSpec) -> int:
  """L: the rows of a stored episode (observations of the longest episode)."""
  return spec.max_episode_steps + 1


def steps_signature(spec: EnvSpec, version: int = LAYOUT_VERSION) -> dict:
  """Observation [L, ...] and action [L, A] (see `pad_episode`); layout 1: [T+1, ...]."""
  rows = episode_rows(spec) if version == LAYOUT_VERSION else None
  return {
      "observation": {k: tf.TensorSpec([rows, *s.shape], tf.as_dtype(s.dtype))
                      for k, s in spec.observation.items()},
      "action": tf.TensorSpec([rows, *spec.action.shape], tf.float32),
  }


def pad_episode(ep, rows: int) -> tuple[dict, np.ndarray]:
  """An episode as stored: observations [rows, ...] (zeros after its T+1), actions
  [rows, A]: its T actions, then a pad row (zeros, with 1 in its first entry if the episode
  ended by termination rather than the time limit, so that a sampled item tells the
  sampler where to stop bootstrapping), then NaN rows, which is how readers find T."""
  t_len = ep.num_steps
  obs = {}
  for k, v in ep.observations.items():
    out = np.zeros((rows, *v.shape[1:]), v.dtype)
    out[:t_len + 1] = v
    obs[k] = out
  act = np.full((rows, *ep.actions.shape[1:]), np.nan, np.float32)
  act[:t_len] = ep.actions
  act[t_len] = 0.0
  act[t_len, 0] = float(ep.terminated)
  return obs, act


def shared_signature(spec: EnvSpec, max_tasks: int, version: int = LAYOUT_VERSION) -> dict:
  return {**steps_signature(spec, version), "labels": tf.TensorSpec([max_tasks], tf.float32)}


def metadata_signature(max_tasks: int) -> dict:
  return {
      "task_id": tf.TensorSpec([], tf.int32), "robot_id": tf.TensorSpec([], tf.int32),
      "episode_id": tf.TensorSpec([], tf.int64), "terminated": tf.TensorSpec([], tf.bool),
      "success": tf.TensorSpec([max_tasks], tf.bool), "has_success": tf.TensorSpec([], tf.bool),
      "labels": tf.TensorSpec([max_tasks], tf.float32),
  }


def episode_signature(spec: EnvSpec, max_tasks: int, version: int = LAYOUT_VERSION) -> dict:
  return {**steps_signature(spec, version), "metadata": metadata_signature(max_tasks)}


def episode_metadata(ep, max_tasks: int) -> dict:
  """The per-episode values stored with its steps (labels must be set)."""
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
  sig = steps_signature(layout.spec, layout.version)
  tables = [reverb.Table(name, sampler=reverb.selectors.Prioritized(1.0),
                         remover=reverb.selectors.Fifo(), max_size=layout.max_size,
                         rate_limiter=_rate_limiter(layout), signature=sig)
            for name in task_tables(layout)]
  tables.append(reverb.Table(SHARED_TABLE, sampler=reverb.selectors.Prioritized(1.0),
                             remover=reverb.selectors.Fifo(), max_size=layout.max_size,
                             rate_limiter=_rate_limiter(layout),
                             signature=shared_signature(layout.spec, layout.max_tasks,
                                                        layout.version)))
  # Export walks this table by min-heap priority (see ReverbReplay.episodes); FIFO removal.
  tables.append(reverb.Table(EPISODES_TABLE, sampler=reverb.selectors.MinHeap(),
                             remover=reverb.selectors.Fifo(), max_size=layout.max_episodes,
                             rate_limiter=reverb.rate_limiters.MinSize(1),
                             signature=episode_signature(layout.spec, layout.max_tasks,
                                                         layout.version)))
  return tables
