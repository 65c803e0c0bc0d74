"""Per-task quality of a success detector: precision, recall, accuracy and calibration."""

from __future__ import annotations

import numpy as np


def binary_metrics(probs: np.ndarray, truth: np.ndarray, threshold: float = 0.5,
                   bins: int = 10) -> dict:
  """Quality of probabilities `probs` [N] against boolean `truth` [N].

  Precision is 0 when nothing is predicted positive but positives exist (and 1 when there
  are none to find); recall is 1 when there are no positives. `ece` is the expected
  calibration error over `bins` equal-width bins; `brier` the mean squared error.
  """
  probs = np.asarray(probs, np.float64).reshape(-1)
  truth = np.asarray(truth, bool).reshape(-1)
  if probs.shape != truth.shape:
    raise ValueError(f"probs {probs.shape} and truth {truth.shape} differ in shape")
  pred = probs >= threshold
  tp = int(np.sum(pred & truth))
  fp = int(np.sum(pred & ~truth))
  fn = int(np.sum(~pred & truth))
  n_pos, n = int(truth.sum()), len(truth)
  precision = tp / (tp + fp) if tp + fp else float(n_pos == 0)
  recall = tp / (tp + fn) if tp + fn else 1.0
  ece = 0.0
  if n:
    which = np.minimum((probs * bins).astype(int), bins - 1)
    for b in range(bins):
      sel = which == b
      if sel.any():
        ece += sel.mean() * abs(probs[sel].mean() - truth[sel].mean())
  return {
      "precision": float(precision), "recall": float(recall),
      "accuracy": float(np.mean(pred == truth)) if n else 1.0,
      "ece": float(ece), "brier": float(np.mean((probs - truth) ** 2)) if n else 0.0,
      "positives": n_pos, "negatives": n - n_pos,
      "true_positives": tp, "predicted_positives": tp + fp,
  }


def per_task_metrics(probs: np.ndarray, truth: np.ndarray, slots, threshold: float = 0.5
                     ) -> dict[int, dict]:
  """binary_metrics for each slot's column of probs / truth [N, max_tasks]."""
  return {int(s): binary_metrics(probs[:, s], truth[:, s], threshold) for s in slots}


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
  """The Wilson score interval (95% for z=1.96) of a proportion: how far a precision or
  recall measured on `trials` held-out episodes may be from the true one."""
  if trials <= 0:
    return 0.0, 1.0
  p = successes / trials
  denom = 1 + z * z / trials
  centre = (p + z * z / (2 * trials)) / denom
  half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
  return float(max(0.0, centre - half)), float(min(1.0, centre + half))
