"""The evaluation protocol every learning claim in the project follows.

- Fixed start states per task, shared by every method (`actors.evaluator.start_seed`):
  episode j of every task and method starts from the same scene, so results pair up.
- At least 50 episodes per task; a 95% interval for each task (Wilson) and for the mean
  over tasks (normal, from the per-task binomial variances), pooled over seeds; each seed's
  own mean is reported beside it.
- Every result file is stamped with the commit (and whether the tree had uncommitted
  changes), the resolved config and a hash of the data it was trained on.
- A stored result is reused only if its stamp (commit, config, data) matches the run that
  would make it; otherwise it is recomputed, never mixed in.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from typing import Mapping, Sequence

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIN_EPISODES_PER_TASK = 50
Z95 = 1.959964


def wilson(successes: int, n: int) -> tuple[float, float]:
  """95% Wilson score interval of a binomial rate."""
  if n == 0:
    return (0.0, 1.0)
  p = successes / n
  centre = (p + Z95 ** 2 / (2 * n)) / (1 + Z95 ** 2 / n)
  half = Z95 * np.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / (1 + Z95 ** 2 / n)
  return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def summarize(per_seed: Mapping[int, Mapping[str, Sequence[bool]]]) -> dict:
  """{seed: {task: successes per episode}} -> mean, 95% ci, per-task rates and intervals
  (episodes of all seeds pooled), and each seed's mean."""
  tasks = list(next(iter(per_seed.values())))
  pooled = {t: np.concatenate([np.asarray(r[t], bool) for r in per_seed.values()])
            for t in tasks}
  rates = {t: float(v.mean()) for t, v in pooled.items()}
  mean = float(np.mean(list(rates.values())))
  se = np.sqrt(sum(r * (1 - r) / len(pooled[t]) for t, r in rates.items())) / len(tasks)
  return {
      "mean": mean, "ci": [max(0.0, mean - Z95 * se), min(1.0, mean + Z95 * se)],
      "per_task": {t: {"rate": rates[t], "ci": list(wilson(int(pooled[t].sum()),
                                                           len(pooled[t])))} for t in tasks},
      "seed_means": {str(s): float(np.mean([np.mean(r[t]) for t in tasks]))
                     for s, r in per_seed.items()},
      "episodes_per_task": {t: int(len(v)) for t, v in pooled.items()},
  }


def commit() -> dict:
  """The commit the code ran at and whether tracked files differed from it."""
  def git(*args):
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout
  return {"commit": git("rev-parse", "HEAD").strip() or "unknown",
          "dirty": bool(git("status", "--porcelain", "--untracked-files=no").strip())}


def data_sha(path: str) -> str:
  """sha256 over a dataset directory's files (names and contents, sorted), less the final
  observations kept for relabelling (derived from the rest)."""
  from success_detectors.label_store import FINALS_DIR
  h = hashlib.sha256()
  for dirpath, dirnames, files in os.walk(path):
    dirnames[:] = sorted(d for d in dirnames if d != FINALS_DIR and
                         not d.startswith(FINALS_DIR + ".tmp"))
    for name in sorted(files):
      full = os.path.join(dirpath, name)
      h.update(os.path.relpath(full, path).encode())
      with open(full, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
          h.update(block)
  return h.hexdigest()


def stamp(config: Mapping, data: Mapping[str, str]) -> dict:
  """The stamp of a result: commit, resolved config, {dataset name: sha}."""
  return {**commit(), "config": json.loads(json.dumps(config, default=list)),
          "data_sha": dict(data)}


def load_if_same(path: str, want: dict) -> dict | None:
  """The result stored at `path` if it was made by the same commit, config and data (and
  not from a dirty tree); None otherwise."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    saved = json.load(f)
  meta = saved.get("meta", {})
  same = all(meta.get(k) == want.get(k) for k in ("commit", "config", "data_sha"))
  return saved if same and not meta.get("dirty") and not want.get("dirty") else None
