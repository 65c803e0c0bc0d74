"""The replay interface that actors, learners and the launcher see.

Reverb stays behind this: dm-reverb's last release pins TensorFlow 2.15 and Python <= 3.11,
so a successor may one day replace it without touching actors or learners.
"""

from __future__ import annotations

import abc
from typing import Iterator, Mapping, Sequence

from mtopt.batch import Batch
from mtopt.episode import Episode

# counts()[slot] == {"success": n, "failure": m}: stored items (episodes) per task and outcome.
Counts = dict[int, dict[str, int]]


class ReplayError(ValueError):
  """Bad input to the replay (unknown task slot, missing labels, bad shares); names the problem."""


class Replay(abc.ABC):
  """Stores labelled episodes once, shares them across tasks and samples balanced batches."""

  @abc.abstractmethod
  def write_many(self, episodes: Sequence[Episode]) -> int:
    """Validates every episode, then stores them all; returns how many (task, outcome)
    entries they were shared into (what `counts()` grows by).

    Raises EpisodeError / ReplayError before anything is stored if any episode is bad.
    """

  def write(self, episode: Episode) -> int:
    return self.write_many([episode])

  @abc.abstractmethod
  def sampler(self, batch_size: int, task_shares: Mapping[int, float] | None = None,
              success_fraction: float | None = None, seed: int | None = None) -> Iterator[Batch]:
    """An endless iterator of rebalanced Batches (prefetched)."""

  @abc.abstractmethod
  def counts(self) -> Counts:
    """Items per task slot and outcome."""

  @abc.abstractmethod
  def num_episodes(self) -> int:
    """Distinct episodes stored (each counted once, however many tasks share it)."""

  def acknowledged(self) -> int:
    """Episodes acknowledged over the replay's life: for a durable replay, what a restart
    brings back; by default, those stored now."""
    return self.num_episodes()

  def max_episode_id(self) -> int | None:
    """The largest episode id acknowledged (-1: none), where the replay keeps it."""
    return None

  @abc.abstractmethod
  def episodes(self) -> Iterator[Episode]:
    """Every stored episode once, with its labels (for RLDS export)."""

  @abc.abstractmethod
  def checkpoint(self) -> str:
    """Saves the replay's contents; returns where."""

  @abc.abstractmethod
  def close(self) -> None:
    """Flushes writers and stops anything this object started."""

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
