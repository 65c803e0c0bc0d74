"""Small files replaced atomically and durably: a crash leaves the old file or the new one."""

from __future__ import annotations

import json
import os


def write_json(path: str, value, **kw) -> None:
  """`value` as JSON at `path` (json.dump's `kw`; tuples and sets as lists), written to
  path.tmp, fsynced, renamed over `path`, and the rename made durable."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, default=list, **kw)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  sync_dir(os.path.dirname(path) or ".")


def sync_dir(path: str) -> None:
  """Makes the creations, renames and removals in directory `path` durable."""
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)
