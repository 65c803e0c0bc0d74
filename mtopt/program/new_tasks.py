"""Tasks that join a run after it started (`mtopt tasks add`, stopped or running run).

When the run continues with a task that no earlier evaluation had (its replays were
relabelled by then, see `relabel`), it is first evaluated zero-shot, at the step the run
resumes from; then `actors.new_task_share` of the robots' attempts go to it while its
judged success is below the mean of the other tasks; training fine-tunes the one
Q-function on it throughout. A running run notices a changed task registry or detector at
its next save point and restarts in-process to take them in.
"""

from __future__ import annotations

import json
import os

import numpy as np

from mtopt.tasks import REGISTRY_FILE


def added(tasks, progress: dict) -> list[str]:
  """The run's tasks that its last evaluation did not include (none in a fresh run)."""
  evals = progress["evaluations"]
  return [t for t in tasks if evals and t not in evals[-1]["success"]]


def focused(progress: dict, rates: dict) -> list[str]:
  """New tasks still behind: judged success below the mean of the other tasks'."""
  new = [t for t in progress.get("new_tasks", {}) if t in rates]
  others = [r for t, r in rates.items() if t not in new]
  bar = float(np.mean(others)) if others else 1.0
  return [t for t in new if rates[t] < bar]


def zero_shot(evaluation, learner, progress: dict, new: list[str], log=print) -> dict:
  """Evaluates the current params before any fine-tuning; records when the tasks joined."""
  log(f"new task(s) {', '.join(new)}: zero-shot evaluation at step {learner.steps}")
  progress.setdefault("new_tasks", {}).update({t: learner.steps for t in new})
  rates = evaluation(learner.get_params(), learner.steps, progress)
  progress["evaluations"][-1]["zero_shot"] = list(new)
  if rates:  # None without a simulator to evaluate in.
    log("zero-shot success (judged): " + ", ".join(f"{t} {rates[t]:.2f}" for t in new))
  return rates


class Watch:
  """Notices `mtopt tasks add` / `tasks train` on this run while it is running."""

  def __init__(self, run_dir: str):
    self._run_dir = run_dir
    self._seen = self._state()

  def _state(self):
    out = []
    for path in (REGISTRY_FILE, os.path.join("detector", "detector.json")):
      try:
        with open(os.path.join(self._run_dir, path)) as f:
          d = json.load(f)
      except (OSError, ValueError):  # Absent, or being replaced right now.
        out.append(None)
        continue
      out.append(d["tasks"] if path == REGISTRY_FILE else d.get("version"))
    return out

  def changed(self) -> bool:
    now = self._state()  # A file missing now is being replaced: look again next time.
    return None not in now and now != self._seen
