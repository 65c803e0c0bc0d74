"""A run's replays relabelled by its current success detector, in this process.

Labels live in the replay's items (which task tables an episode is in) and in its episode
log, so a new detector head (`mtopt tasks add`) or a retrained detector (`mtopt tasks
train`) reaches training only through a relabelled replay. Each replay directory (the run's,
and RUN/online in `mixed` mode) records which detector labelled it (`replay_labels.json`);
when the run starts with another one, every stored episode is read back, labelled for
every slot and written into a fresh replay beside the old one, which then replaces it:

  D/relabel/{replay,replay_log}  the new replay, complete once D/relabel/DONE exists
  D/relabel_old/                 where the old one goes while the new one moves in

A crash before DONE leaves the old replay untouched (the half-built one is deleted at the
next start); after DONE the next start finishes the swap. Nothing acknowledged is lost.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np

from mtopt.program.run_dir import write_json

STAMP_FILE = "replay_labels.json"
PARTS = ("replay", "replay_log")  # What `ReverbReplay.from_config(run_dir=D)` keeps in D.


def stamp(labeller) -> dict:
  """Which labeller labelled a replay: a detector's version and slot names, or ground truth."""
  if hasattr(labeller, "version") and hasattr(labeller, "task_names"):
    return {"detector_version": int(labeller.version),
            "task_names": {str(s): n for s, n in labeller.task_names.items()}}
  return {"ground_truth": True}


def read_stamp(directory: str) -> dict | None:
  path = os.path.join(directory, STAMP_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def write_stamp(directory: str, labeller) -> None:
  os.makedirs(directory, exist_ok=True)
  write_json(os.path.join(directory, STAMP_FILE), stamp(labeller))


def _has_replay(directory: str) -> bool:
  return any(os.path.exists(os.path.join(directory, p)) for p in PARTS)


def recover(directory: str) -> None:
  """Finishes or discards a relabelling a crash interrupted (see module docstring)."""
  new, old = os.path.join(directory, "relabel"), os.path.join(directory, "relabel_old")
  if os.path.exists(os.path.join(new, "DONE")):
    os.makedirs(old, exist_ok=True)
    for part in PARTS:
      if os.path.exists(os.path.join(new, part)):
        if os.path.exists(os.path.join(directory, part)):
          os.replace(os.path.join(directory, part), os.path.join(old, part))
        os.replace(os.path.join(new, part), os.path.join(directory, part))
    os.replace(os.path.join(new, STAMP_FILE), os.path.join(directory, STAMP_FILE))
  shutil.rmtree(new, ignore_errors=True)
  shutil.rmtree(old, ignore_errors=True)


def ensure_labelled(config, spec, directory: str, labeller, slots, log=print) -> int:
  """Relabels the replay kept in `directory` if another labeller labelled it (or none is
  recorded); a new, empty replay is stamped. Returns the episodes relabelled."""
  recover(directory)
  current, saved = stamp(labeller), read_stamp(directory)
  if saved == current or "ground_truth" in current:
    return 0
  if not _has_replay(directory):
    write_stamp(directory, labeller)
    return 0
  return relabel_replay(config, spec, directory, labeller, slots, log)


def relabel_replay(config, spec, directory: str, labeller, slots, log=print,
                   batch: int = 256) -> int:
  """Every episode of the replay in `directory`, labelled by `labeller`, into a new replay
  that replaces it. Returns the number of episodes."""
  from replay.reverb_replay import ReverbReplay
  new_dir = os.path.join(directory, "relabel")
  shutil.rmtree(new_dir, ignore_errors=True)
  start, n = time.perf_counter(), 0
  old = ReverbReplay.from_config(config, spec, run_dir=directory)  # Reads every slot.
  try:
    new = ReverbReplay.from_config(config, spec, run_dir=new_dir, labeller=labeller,
                                   slots=slots)
    try:
      pending = []
      for ep in old.episodes():
        pending.append(ep)
        if len(pending) == batch:
          n += _write_relabelled(new, labeller, pending)
          pending = []
      n += _write_relabelled(new, labeller, pending)
      new.checkpoint()  # The new log is then empty: the checkpoint holds everything.
    finally:
      new.close()
  finally:
    old.close()
  write_stamp(new_dir, labeller)
  with open(os.path.join(new_dir, "DONE"), "w"):
    pass
  recover(directory)
  log(f"relabelled {n} stored episodes in {directory} with {_describe(labeller)} "
      f"({n / max(time.perf_counter() - start, 1e-9):.0f} episodes/s)")
  return n


def _write_relabelled(replay, labeller, episodes) -> int:
  if not episodes:
    return 0
  labels = np.asarray(labeller(episodes), np.float32)
  replay.write_many([ep.with_labels(row) for ep, row in zip(episodes, labels)])
  return len(episodes)


def _describe(labeller) -> str:
  s = stamp(labeller)
  return (f"detector version {s['detector_version']}" if "detector_version" in s
          else "ground truth")
