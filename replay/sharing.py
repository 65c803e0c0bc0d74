"""Data-sharing rules: which task slots an episode becomes an item for, and with which outcome.

Pure functions of (collected-for task, per-task success probabilities). An outcome is a
success for task k when `labels[k] >= threshold`.

- `none`: only the task the episode was collected for.
- `all` (MT-Opt): every active task, as a success or a failure by its label.
- `conservative` (CDS-like): the collected-for task, plus every other task for which the
  episode is a success. CDS shares a transition into task B only where its (conservative)
  value for B is at least as high as B's own data; with sparse end-of-episode rewards the
  episodes whose value for B is surely high are B's successes, while another task's failures
  are off-distribution for B's policy and mostly dilute B's data with low values, so they
  are not shared.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

RULES = ("none", "all", "conservative")

# A target: (task slot, is_success).
Target = tuple[int, bool]


def share_none(task_id: int, labels: np.ndarray, slots: Sequence[int],
               threshold: float) -> list[Target]:
  return [(int(task_id), bool(labels[task_id] >= threshold))]


def share_all(task_id: int, labels: np.ndarray, slots: Sequence[int],
              threshold: float) -> list[Target]:
  # The collected-for task always counts, even if it is not in `slots` any more.
  out = share_none(task_id, labels, slots, threshold)
  return out + [(int(k), bool(labels[k] >= threshold)) for k in slots if k != task_id]


def share_conservative(task_id: int, labels: np.ndarray, slots: Sequence[int],
                       threshold: float) -> list[Target]:
  out = share_none(task_id, labels, slots, threshold)
  return out + [(int(k), True) for k in slots if k != task_id and labels[k] >= threshold]


_RULES: dict[str, Callable[..., list[Target]]] = {
    "none": share_none, "all": share_all, "conservative": share_conservative}


def get_rule(name: str) -> Callable[..., list[Target]]:
  """The sharing function called `name`; ValueError naming the choices otherwise."""
  try:
    return _RULES[name]
  except KeyError:
    raise ValueError(f"unknown sharing rule {name!r}; choose one of {', '.join(RULES)}") from None


def targets(rule: str, task_id: int, labels: np.ndarray, slots: Sequence[int],
            threshold: float = 0.5) -> list[Target]:
  """Which (slot, success) items an episode collected for `task_id` becomes under `rule`."""
  return get_rule(rule)(task_id, np.asarray(labels), slots, threshold)
