"""A run's replays relabelled by its current success detector (or rewritten in the current
storage layout), in this process.

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
A replay stored in an older layout (`replay.tables`) is rewritten the same way, its labels
kept unless the labeller changed too.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import time

import numpy as np

from mtopt.durable_files import write_json

STAMP_FILE = "replay_labels.json"
# What `ReverbReplay.from_config(run_dir=D)` keeps in D.
PARTS = ("replay", "replay_log", "replay_layout.json")


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


def ensure_labelled(config, spec, directory: str, labeller, slots, log=print,
                    timings: dict | None = None) -> int:
  """Relabels the replay kept in `directory` if another labeller labelled it (or none is
  recorded), or rewrites it if it is stored in an older layout; a new, empty replay is
  stamped. Returns the episodes rewritten (`timings` as in `relabel_replay`)."""
  from replay.reverb_replay import stored_layout
  from replay.tables import LAYOUT_VERSION
  recover(directory)
  current, saved = stamp(labeller), read_stamp(directory)
  relabel = saved != current and "ground_truth" not in current
  layout = stored_layout(os.path.join(directory, "replay"))
  if not relabel and layout in (None, LAYOUT_VERSION):
    return 0
  if not _has_replay(directory):
    write_stamp(directory, labeller)
    return 0
  return relabel_replay(config, spec, directory, labeller, slots, log, keep_labels=not relabel,
                        layout=layout or LAYOUT_VERSION, timings=timings)


def relabel_replay(config, spec, directory: str, labeller, slots, log=print,
                   batch: int = 256, keep_labels: bool = False, layout: int | None = None,
                   timings: dict | None = None) -> int:
  """Every episode of the replay in `directory` (stored in `layout`, default the current
  one), labelled by `labeller` (or with its labels kept), into a new replay in the current
  layout that replaces it. Returns the number of episodes; `timings`, if given, gets the
  seconds spent reading (the old replay's start and walk), labelling, writing and
  checkpointing."""
  from replay.reverb_replay import ReverbReplay
  new_dir = os.path.join(directory, "relabel")
  shutil.rmtree(new_dir, ignore_errors=True)
  start, n = time.perf_counter(), 0
  spent = dict.fromkeys(("read", "label", "write", "checkpoint"), 0.0)
  new = ReverbReplay.from_config(config, spec, run_dir=new_dir, slots=slots)
  try:
    label_with = None if keep_labels else labeller
    # Closed on any error too: the old replay's server and log lock go at once.
    with contextlib.closing(_stored_episodes(config, spec, directory, layout)) as stored:
      while True:
        with _timed(spent, "read"):
          pending = list(itertools.islice(stored, batch))
        if not pending:
          break
        n += _write_relabelled(new, label_with, pending, spent)
    with _timed(spent, "checkpoint"):
      new.checkpoint()  # The new log is then empty: the checkpoint holds everything.
  finally:
    new.close()
  if timings is not None:
    timings.update(spent)
  write_stamp(new_dir, labeller)
  with open(os.path.join(new_dir, "DONE"), "w"):
    pass
  recover(directory)
  what = (f"rewritten from layout {layout}" if keep_labels else
          f"relabelled with {_describe(labeller)}")
  log(f"{what}: {n} stored episodes in {directory} "
      f"({n / max(time.perf_counter() - start, 1e-9):.0f} episodes/s)")
  return n


def _stored_episodes(config, spec, directory: str, layout: int | None):
  """Every episode the replay in `directory` acknowledged: its checkpoint and its log."""
  import dataclasses
  from replay.episode_log import EpisodeLog, latest_checkpoint
  from replay.reverb_replay import ReverbReplay, layout_from_config
  from replay.tables import LAYOUT_VERSION
  if layout in (None, LAYOUT_VERSION):
    old = ReverbReplay.from_config(config, spec, run_dir=directory)  # Reads every slot.
    try:
      yield from old.episodes()
    finally:
      old.close()
    return
  # An older layout: its server restores the checkpoint only (it cannot write), and the
  # episodes logged after that checkpoint are read from the log.
  ckpt = os.path.join(directory, "replay")
  old = ReverbReplay(dataclasses.replace(layout_from_config(config, spec), version=layout),
                     checkpoint_dir=ckpt)
  try:
    yield from old.episodes()
  finally:
    old.close()
  log_dir = os.path.join(directory, "replay_log")
  if os.path.isdir(log_dir):
    episode_log = EpisodeLog(log_dir, latest_checkpoint(ckpt))
    try:
      yield from episode_log.unapplied()
    finally:
      episode_log.close()


def _write_relabelled(replay, labeller, episodes, spent: dict) -> int:
  with _timed(spent, "label"):
    if labeller is not None:
      labels = np.asarray(labeller(episodes), np.float32)
      episodes = [ep.with_labels(row) for ep, row in zip(episodes, labels)]
  with _timed(spent, "write"):
    replay.write_many(episodes)
  return len(episodes)


@contextlib.contextmanager
def _timed(spent: dict, phase: str):
  t = time.perf_counter()
  try:
    yield
  finally:
    spent[phase] += time.perf_counter() - t


def _describe(labeller) -> str:
  s = stamp(labeller)
  return (f"detector version {s['detector_version']}" if "detector_version" in s
          else "ground truth")
