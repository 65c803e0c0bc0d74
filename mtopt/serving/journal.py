"""The durable log of uploaded episodes: an acknowledgement means the episode is here.

RUN/fleet/episodes.journal is a sequence of records `[u32 length][u32 crc32][msgpack]`,
appended and fsync'd before the server acknowledges. A server that restarts reads it back
(this is how acknowledged episodes survive the server dying, and how it knows which
episode ids it already holds); a record cut short by a crash fails its length or CRC and
is dropped with everything after it, which no robot was told was stored.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from typing import Iterator

from mtopt.robot_client import protocol

_HEADER = struct.Struct("<II")


def journal_path(run_dir: str) -> str:
  return os.path.join(run_dir, "fleet", "episodes.journal")


def read_records(path: str) -> tuple[list[dict], int]:
  """(records, byte length of the valid prefix) of a journal; [] if there is none."""
  if not os.path.exists(path):
    return [], 0
  records, good = [], 0
  with open(path, "rb") as f:
    data = f.read()
  while good + _HEADER.size <= len(data):
    n, crc = _HEADER.unpack_from(data, good)
    body = data[good + _HEADER.size: good + _HEADER.size + n]
    if len(body) < n or zlib.crc32(body) != crc:
      break
    try:
      records.append(protocol.unpack(body))
    except protocol.ProtocolError:
      break
    good += _HEADER.size + n
  return records, good


class Journal:
  """Append-only; `append_many` returns once the records are on disk."""

  def __init__(self, path: str):
    self.path = path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    self.records, good = read_records(path)
    self._f = open(path, "ab")
    if self._f.tell() != good:  # A torn tail from a crash: cut it off.
      self._f.truncate(good)
      self._f.seek(good)
    self._lock = threading.Lock()

  def append_many(self, records: list[dict]) -> None:
    parts = []
    for r in records:
      body = protocol.pack(r)
      parts.append(_HEADER.pack(len(body), zlib.crc32(body)) + body)
    with self._lock:
      self._f.write(b"".join(parts))
      self._f.flush()
      os.fsync(self._f.fileno())

  def close(self) -> None:
    with self._lock:
      self._f.close()


def iter_records(run_dir: str) -> Iterator[dict]:
  """Every stored upload of a run (e.g. to import into a learner's replay)."""
  yield from read_records(journal_path(run_dir))[0]
