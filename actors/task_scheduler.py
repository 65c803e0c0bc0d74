"""Task schedulers: which task a robot attempts next.

`uniform` picks every task equally; `weighted` by fixed weights (imbalanced mixtures,
rare tasks); `underperforming` favours tasks whose recent success rate is low (MT-Opt's
robots spent their time where the policy was weakest). Any of them can be told to focus on
some tasks (`set_focus`: a task just added to a run gets a fixed share of the attempts).
"""

from __future__ import annotations

import collections
from typing import Any, Mapping, Sequence

import numpy as np

SCHEDULERS = ("uniform", "weighted", "underperforming")


class TaskScheduler:
  """Picks tasks at random with `probabilities()`; learns from `update(task, success)`."""

  def __init__(self, tasks: Sequence[str], seed: Any = None):
    if not tasks:
      raise ValueError("TaskScheduler: no tasks to schedule")
    if len(set(tasks)) != len(tasks):
      raise ValueError(f"TaskScheduler: duplicate task names in {list(tasks)}")
    self.tasks = list(tasks)
    self._rng = np.random.default_rng(seed)
    self._focus, self._focus_share = [], 0.0

  def base_probabilities(self) -> np.ndarray:
    return np.full(len(self.tasks), 1.0 / len(self.tasks))

  def probabilities(self) -> np.ndarray:
    p = self.base_probabilities()
    if not self._focus:
      return p
    q = np.zeros(len(self.tasks))
    q[self._focus] = 1.0 / len(self._focus)
    return (1.0 - self._focus_share) * p + self._focus_share * q

  def set_focus(self, tasks: Sequence[str], share: float) -> None:
    """`share` of the attempts go to `tasks` (equally), the rest as before; () ends it."""
    unknown = [t for t in tasks if t not in self.tasks]
    if unknown or not 0.0 <= share <= 1.0:
      raise ValueError(f"TaskScheduler.set_focus: need known tasks and share in [0, 1], got "
                       f"{list(tasks)} and {share}; known: {', '.join(self.tasks)}")
    self._focus = [self.tasks.index(t) for t in tasks]
    self._focus_share = float(share)

  def next_task(self) -> str:
    return self.tasks[int(self._rng.choice(len(self.tasks), p=self.probabilities()))]

  def update(self, task: str, success: bool) -> None:
    """Records the outcome of an attempt (ground truth or a detector's label)."""

  def set_success_estimates(self, estimates: Mapping[str, float]) -> None:
    """Replaces success estimates with fleet-wide ones (e.g. from the labeller)."""


class WeightedScheduler(TaskScheduler):
  def __init__(self, tasks: Sequence[str], weights: Sequence[float], seed: Any = None):
    super().__init__(tasks, seed)
    w = np.asarray(weights, np.float64)
    if w.shape != (len(self.tasks),):
      raise ValueError(f"WeightedScheduler: {len(w)} weights for {len(self.tasks)} tasks "
                       f"({', '.join(self.tasks)})")
    if np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
      raise ValueError(f"WeightedScheduler: weights must be >= 0 with a positive sum, got {list(w)}")
    self._p = w / w.sum()

  def base_probabilities(self) -> np.ndarray:
    return self._p


class UnderperformingScheduler(TaskScheduler):
  """P(task) ∝ (1 - recent success rate) + `floor`, over the last `window` attempts.

  A task never tried counts as failing, so every task gets tried early on; `floor` keeps
  mastered tasks from vanishing (they still need data to stay mastered).
  """

  def __init__(self, tasks: Sequence[str], window: int = 50, floor: float = 0.05,
               seed: Any = None):
    super().__init__(tasks, seed)
    if window < 1 or floor <= 0:
      raise ValueError(f"UnderperformingScheduler: need window >= 1 and floor > 0, "
                       f"got {window}, {floor}")
    self._floor = floor
    self._recent = {t: collections.deque(maxlen=window) for t in self.tasks}
    self._estimates: dict[str, float] = {}

  def success_rate(self, task: str) -> float:
    if task in self._estimates:
      return self._estimates[task]
    r = self._recent[task]
    return float(np.mean(r)) if r else 0.0

  def base_probabilities(self) -> np.ndarray:
    need = np.array([1.0 - self.success_rate(t) + self._floor for t in self.tasks])
    return need / need.sum()

  def update(self, task: str, success: bool) -> None:
    if task in self._recent:
      self._recent[task].append(bool(success))
      self._estimates.pop(task, None)  # Fresh own data supersedes an old fleet estimate.

  def set_success_estimates(self, estimates: Mapping[str, float]) -> None:
    for task, rate in estimates.items():
      if task in self._recent:
        self._estimates[task] = float(np.clip(rate, 0.0, 1.0))


def make_scheduler(kind: str, tasks: Sequence[str], weights: Sequence[float] = (),
                   seed: Any = None) -> TaskScheduler:
  if kind == "uniform":
    return TaskScheduler(tasks, seed)
  if kind == "weighted":
    return WeightedScheduler(tasks, weights, seed)
  if kind == "underperforming":
    return UnderperformingScheduler(tasks, seed=seed)
  raise ValueError(f"unknown task scheduler {kind!r}; known: {', '.join(SCHEDULERS)}")
