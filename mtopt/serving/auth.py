"""Per-robot tokens for `mtopt serve`, kept in RUN/serving/robots.json.

Only a SHA-256 of each token is stored; a connection's token is hashed and compared with
`hmac.compare_digest` (constant time), and an unknown robot is compared against a dummy
hash so that timing does not tell which robot names exist.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_DUMMY = hashlib.sha256(b"no such robot").hexdigest()


class AuthError(ValueError):
  """A robot name or token file is bad."""


def robots_path(run_dir: str) -> str:
  return os.path.join(run_dir, "serving", "robots.json")


def _hash(token: str) -> str:
  return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def load_robots(run_dir: str) -> dict[str, dict]:
  """robot name -> {"index": int, "token_sha256": hex}; {} if none were added."""
  path = robots_path(run_dir)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def add_robot(run_dir: str, name: str) -> str:
  """Registers (or re-keys) robot `name`; returns its new token (shown once, not stored)."""
  if not _NAME.match(name):
    raise AuthError(f"bad robot name {name!r}: 1-64 letters, digits, '_', '-' or '.'")
  robots = load_robots(run_dir)
  index = robots[name]["index"] if name in robots else 1 + max(
      (r["index"] for r in robots.values()), default=0)
  token = secrets.token_urlsafe(32)
  robots[name] = {"index": index, "token_sha256": _hash(token)}
  path = robots_path(run_dir)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
    json.dump(robots, f, indent=1)
  os.replace(tmp, path)
  return token


class TokenChecker:
  """check(robot, token) -> the robot's index, or None. Reloads the file when it changes."""

  def __init__(self, run_dir: str):
    self._path = robots_path(run_dir)
    self._run_dir = run_dir
    self._mtime = None
    self._robots: dict[str, dict] = {}

  def _refresh(self):
    try:
      mtime = os.stat(self._path).st_mtime_ns
    except FileNotFoundError:
      mtime = None
    if mtime != self._mtime:
      self._robots, self._mtime = load_robots(self._run_dir), mtime

  def check(self, robot: str | None, token: str | None) -> int | None:
    self._refresh()
    entry = self._robots.get(robot or "")
    ok = hmac.compare_digest(_hash(token or ""), entry["token_sha256"] if entry else _DUMMY)
    return int(entry["index"]) if ok and entry else None
