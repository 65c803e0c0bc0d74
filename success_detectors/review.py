"""MT-Opt's detector loop: a sample of the policy's own episodes goes to a person for
review, the answers join the task's examples, and the detector is retrained on them.

A policy finds the detector's blind spots (scenes that look like success to it and are
not), which no example folder made beforehand covers. The run queues, per collected
episode, those whose label for the attempted task is near the cut (|p - threshold| <
`margin`: flagged, counted) and a `fraction` of the others the detector calls successes
(where its false successes hide). `mtopt tasks review` shows and answers them (on a
robot: a person looks at the final image; in simulation the simulator can answer for its
own tasks); `--apply` retrains the detector with the answers plus all stored examples
(rehearsal), and the run relabels its data (see `mtopt.program.relabel`).

RUN/review/
  queue/EPISODE_ID.npz   final observation (one array per name), slot, label, truth
                         (the simulator's ground truth for the slot: 1, 0, or -1 unknown)
  answers.json           {episode id: true/false}, written atomically
  applied/               queue files whose answers are in the detector
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np

from mtopt.durable_files import write_json

REVIEW_DIR = "review"


class ReviewError(ValueError):
  """Unknown episode, a malformed answer or queue file; names it."""


class ReviewQueue:
  def __init__(self, run_dir: str):
    self.root = os.path.join(run_dir, REVIEW_DIR)
    self._queue = os.path.join(self.root, "queue")
    self._applied = os.path.join(self.root, "applied")
    self._answers_path = os.path.join(self.root, "answers.json")

  # Queueing (the run).
  def offer(self, episodes: Sequence, labels: np.ndarray, threshold: float, margin: float,
            fraction: float, rng: np.random.Generator, truth_known: Sequence[bool] = ()
            ) -> int:
    """Queues the episodes near the cut, and `fraction` of the other judged successes;
    returns how many were near the cut. `truth_known[i]`: the simulator defines episode
    i's task (its `success` then is ground truth, kept for simulated review)."""
    os.makedirs(self._queue, exist_ok=True)
    near = 0
    for i, (ep, row) in enumerate(zip(episodes, np.asarray(labels))):
      p = float(row[ep.task_id])
      is_near = abs(p - threshold) < margin
      near += is_near
      if not (is_near or (p >= threshold and rng.random() < fraction)):
        continue
      known = bool(truth_known[i]) if len(truth_known) and ep.success is not None else False
      truth = int(bool(ep.success[ep.task_id])) if known else -1
      final = {k: v[-1] for k, v in ep.observations.items()}
      path = os.path.join(self._queue, f"{ep.episode_id}.npz")
      np.savez(path + ".tmp.npz", **{"obs:" + k: v for k, v in final.items()},
               slot=np.int64(ep.task_id), label=np.float32(p), truth=np.int64(truth))
      os.replace(path + ".tmp.npz", path)
    return near

  # Reviewing (a person, or the simulator).
  def pending(self) -> list[int]:
    """Queued episode ids without an answer, oldest id first."""
    answers = self.answers()
    return [e for e in self._ids(self._queue) if e not in answers]

  def item(self, episode_id: int) -> dict:
    """{"observation": name -> array, "slot", "label", "truth"} of a queued episode."""
    path = os.path.join(self._queue, f"{int(episode_id)}.npz")
    if not os.path.exists(path):
      raise ReviewError(f"episode {episode_id} is not in the review queue {self._queue} "
                        f"({len(self._ids(self._queue))} queued)")
    with np.load(path) as f:
      return {"observation": {k[4:]: f[k] for k in f.files if k.startswith("obs:")},
              "slot": int(f["slot"]), "label": float(f["label"]), "truth": int(f["truth"])}

  def answers(self) -> dict[int, bool]:
    if not os.path.exists(self._answers_path):
      return {}
    try:
      with open(self._answers_path) as f:
        return {int(k): bool(v) for k, v in json.load(f).items()}
    except (ValueError, TypeError, AttributeError) as e:
      raise ReviewError(f"{self._answers_path}: malformed ({e})") from None

  def answer(self, episode_id: int, success: bool) -> None:
    self.item(episode_id)  # An unknown episode is an error; nothing is recorded.
    self._record({int(episode_id): bool(success)})

  def answer_from_simulator(self) -> int:
    """Answers every pending episode whose task the simulator judges; returns how many."""
    truths = {e: self.item(e)["truth"] for e in self.pending()}
    known = {e: bool(t) for e, t in truths.items() if t >= 0}
    self._record(known)
    return len(known)

  def _record(self, new: dict[int, bool]) -> None:
    """Adds answers in one atomic rewrite of answers.json."""
    if not new:
      return
    answers = {**self.answers(), **new}
    write_json(self._answers_path, {str(k): v for k, v in sorted(answers.items())})

  # Applying (into the detector's examples).
  def answered_examples(self):
    """(ExampleSet of answered, not yet applied episodes, their ids)."""
    from success_detectors.examples import ExampleSet
    answers = self.answers()
    ids = [e for e in self._ids(self._queue) if e in answers]
    if not ids:
      return None, []
    items = [self.item(e) for e in ids]
    obs = {k: np.stack([it["observation"][k] for it in items]) for k in items[0]["observation"]}
    return ExampleSet(obs, np.array([it["slot"] for it in items]),
                      np.array([answers[e] for e in ids])), ids

  def mark_applied(self, ids: Sequence[int]) -> None:
    os.makedirs(self._applied, exist_ok=True)
    for e in ids:
      os.replace(os.path.join(self._queue, f"{e}.npz"), os.path.join(self._applied, f"{e}.npz"))

  @staticmethod
  def _ids(directory: str) -> list[int]:
    if not os.path.isdir(directory):
      return []
    return sorted(int(n[:-4]) for n in os.listdir(directory)
                  if n.endswith(".npz") and not n.endswith(".tmp.npz"))
