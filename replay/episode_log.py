"""The write-ahead episode log: what makes an acknowledged episode survive a crash.

A Reverb checkpoint is a snapshot; episodes written after it would die with the process.
So every episode (with its labels) is first appended to a segment file of this log and
fsynced, and only then written to Reverb and acknowledged. A checkpoint closes the current
segment; once Reverb has stored the checkpoint, the log records which checkpoint covers
which segments and deletes them. On restart the server restores its newest checkpoint and
the replay re-applies the segments after it, so it holds exactly the acknowledged episodes.

Files in the log directory:
  segment-NNNNNNNN.wal  records: uint32 length, uint32 crc32, int64 episode id, msgpack
                        payload (no pickle).
  state.json            {"checkpoint": Reverb checkpoint name, "covered": last segment in
                        it, "episodes": episodes acknowledged up to it, "max_episode_id"}.
  pending.json          the same for a checkpoint being taken: if the process dies after
                        Reverb stored it but before state.json names it, the newest
                        checkpoint is that one, and pending.json says what it covers.
  lock                  held (flock) by the one process that has the log open; the kernel
                        releases it when that process dies.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import struct
import zlib
from typing import Iterator, Sequence

import msgpack
import numpy as np

from mtopt.durable_files import sync_dir, write_json
from mtopt.episode import Episode

_HEADER = struct.Struct("<IIq")  # payload length, its crc32, the episode id.
_SEGMENT = re.compile(r"^segment-(\d{8})\.wal$")
_DTYPES = {"float32", "float64", "uint8", "int32", "int64", "bool"}


class LogError(RuntimeError):
  """The log and the Reverb checkpoint disagree, or a record is corrupt; names the file."""


def latest_checkpoint(checkpoint_dir: str | None) -> str | None:
  """The name of the checkpoint a Reverb server started on `checkpoint_dir` restores: the
  newest complete one (Reverb names them by timestamp and marks them with DONE)."""
  if not checkpoint_dir or not os.path.isdir(checkpoint_dir):
    return None
  done = [d for d in os.listdir(checkpoint_dir)
          if os.path.exists(os.path.join(checkpoint_dir, d, "DONE"))]
  return max(done) if done else None


# Records.
def _array(a: np.ndarray) -> dict:
  a = np.ascontiguousarray(a)
  return {"dtype": a.dtype.name, "shape": list(a.shape), "data": a.tobytes()}


def _from_array(d: dict) -> np.ndarray:
  if d["dtype"] not in _DTYPES:
    raise LogError(f"record holds an array of dtype {d['dtype']!r}")
  return np.frombuffer(d["data"], d["dtype"]).reshape(d["shape"]).copy()


def encode(ep: Episode) -> bytes:
  payload = msgpack.packb({
      "observations": {k: _array(v) for k, v in ep.observations.items()},
      "actions": _array(ep.actions), "task_id": int(ep.task_id), "robot_id": int(ep.robot_id),
      "episode_id": int(ep.episode_id), "terminated": bool(ep.terminated),
      "success": None if ep.success is None else _array(np.asarray(ep.success)),
      "labels": None if ep.labels is None else _array(np.asarray(ep.labels))})
  return _HEADER.pack(len(payload), zlib.crc32(payload), int(ep.episode_id)) + payload


def decode(payload: bytes) -> Episode:
  d = msgpack.unpackb(payload)
  opt = lambda v: None if v is None else _from_array(v)  # noqa: E731
  return Episode(observations={k: _from_array(v) for k, v in d["observations"].items()},
                 actions=_from_array(d["actions"]), task_id=d["task_id"],
                 robot_id=d["robot_id"], episode_id=d["episode_id"],
                 success=opt(d["success"]), labels=opt(d["labels"]),
                 terminated=d["terminated"])


def _records(path: str) -> tuple[list[tuple[int, bytes]], int]:
  """The intact records (episode id, payload) of a segment and the byte length they span
  (a torn tail is left out)."""
  with open(path, "rb") as f:
    data = f.read()
  out, pos = [], 0
  while pos + _HEADER.size <= len(data):
    n, crc, episode_id = _HEADER.unpack_from(data, pos)
    payload = data[pos + _HEADER.size:pos + _HEADER.size + n]
    if len(payload) < n or zlib.crc32(payload) != crc:
      break
    out.append((episode_id, payload))
    pos += _HEADER.size + n
  return out, pos


def _lock(directory: str):
  """An exclusive lock on the log: a second process opening it (`mtopt replay info` during
  training, say) would cut what the first is writing."""
  f = open(os.path.join(directory, "lock"), "a+")
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    f.close()
    raise LogError(f"{directory}: the episode log is open in another process (a running "
                   "`mtopt train`?); stop it first") from None
  return f


class EpisodeLog:
  """The log in `directory`, for a server that restored checkpoint `restored` (a name from
  `latest_checkpoint`, or None for an empty server).

  Not thread-safe: the replay calls it under its write lock.
  """

  def __init__(self, directory: str, restored: str | None):
    self.directory = os.path.abspath(directory)
    os.makedirs(self.directory, exist_ok=True)
    self._lock = _lock(self.directory)
    self._state_path = os.path.join(self.directory, "state.json")
    self._pending_path = os.path.join(self.directory, "pending.json")
    state = self._read(self._state_path) or {"checkpoint": None, "covered": 0, "episodes": 0,
                                             "max_episode_id": -1}
    pending = self._read(self._pending_path)
    if restored != state["checkpoint"]:
      if restored is not None and pending is not None:  # Died between Reverb and state.json.
        state = {**pending, "checkpoint": restored}
      elif restored is not None and state["checkpoint"] is None and not self._segments():
        state["checkpoint"] = restored  # A replay checkpointed before it had a log.
      else:
        raise LogError(f"{self.directory}: the log follows Reverb checkpoint "
                       f"{state['checkpoint']!r} but the server restored {restored!r}; "
                       "the replay checkpoint was moved or deleted")
      write_json(self._state_path, state)
    if os.path.exists(self._pending_path):
      os.remove(self._pending_path)
    self._state = state
    self._unapplied: list[str] = []
    self._acknowledged = int(state["episodes"])
    self._max_id = int(state.get("max_episode_id", -1))
    for number, path in self._segments():
      if number <= state["covered"]:
        os.remove(path)  # In the checkpoint already (died before deleting it).
        continue
      records, length = _records(path)
      if length != os.path.getsize(path):  # A torn last record: never acknowledged.
        with open(path, "r+b") as f:
          f.truncate(length)
      self._unapplied.append(path)
      self._acknowledged += len(records)
      self._max_id = max([self._max_id, *(i for i, _ in records)])
    self._number = max([state["covered"], *(n for n, _ in self._segments())])
    self._file = None

  @property
  def acknowledged(self) -> int:
    """Episodes acknowledged over the replay's whole life (checkpointed or logged)."""
    return self._acknowledged

  @property
  def max_episode_id(self) -> int:
    """The largest episode id ever acknowledged (-1: none), for ids unique across restarts."""
    return self._max_id

  def unapplied(self) -> Iterator[Episode]:
    """The logged episodes the restored checkpoint lacks, oldest first (read once, on start)."""
    paths, self._unapplied = self._unapplied, []
    for path in paths:
      for _, payload in _records(path)[0]:
        yield decode(payload)

  def append(self, episodes: Sequence[Episode]) -> None:
    """Appends `episodes`; they are on disk when this returns."""
    if not episodes:
      return
    if self._file is None:
      self._number += 1
      self._file = open(self._segment_path(self._number), "ab")
      sync_dir(self.directory)
    self._file.write(b"".join(encode(ep) for ep in episodes))
    self._file.flush()
    os.fsync(self._file.fileno())
    self._acknowledged += len(episodes)
    self._max_id = max([self._max_id, *(int(ep.episode_id) for ep in episodes)])

  def begin_checkpoint(self) -> None:
    """Closes the current segment: everything logged so far goes into the checkpoint."""
    self._close_segment()
    self._pending = {"checkpoint": None, "covered": self._number,
                     "episodes": self._acknowledged, "max_episode_id": self._max_id}
    write_json(self._pending_path, self._pending)

  def end_checkpoint(self, checkpoint: str) -> None:
    """Reverb stored `checkpoint`: the covered segments are no longer needed."""
    self._state = {**self._pending, "checkpoint": checkpoint}
    write_json(self._state_path, self._state)
    os.remove(self._pending_path)
    for number, path in self._segments():
      if number <= self._state["covered"]:
        os.remove(path)

  def close(self) -> None:
    self._close_segment()
    if self._lock is not None:
      self._lock.close()  # Releases the flock.
      self._lock = None

  # Internals.
  def _close_segment(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None

  def _segment_path(self, number: int) -> str:
    return os.path.join(self.directory, f"segment-{number:08d}.wal")

  def _segments(self) -> list[tuple[int, str]]:
    found = [(int(m.group(1)), os.path.join(self.directory, name))
             for name in os.listdir(self.directory) if (m := _SEGMENT.match(name))]
    return sorted(found)

  @staticmethod
  def _read(path: str) -> dict | None:
    if not os.path.exists(path):
      return None
    with open(path) as f:
      return json.load(f)
