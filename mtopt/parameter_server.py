"""Parameter server: the learner publishes versioned params; actors and evaluators pull.

A plain Ray actor holding the latest params (a pytree of numpy arrays) and its version, so
that pulling is one round trip and a reader can skip the transfer when it is up to date.
"""

from __future__ import annotations

from typing import Any


class ParameterServer:
  """Holds the newest published params. Wrap with `ray.remote` to share across processes."""

  def __init__(self):
    self._params: Any = None
    self._version = -1

  def publish(self, params: Any, version: int) -> int:
    """Stores `params` if newer than what is held; returns the held version."""
    if version > self._version:
      self._params, self._version = params, int(version)
    return self._version

  def version(self) -> int:
    return self._version

  def pull(self, have_version: int = -1) -> tuple[int, Any]:
    """(version, params), or (version, None) when the caller already has that version."""
    if have_version >= self._version:
      return self._version, None
    return self._version, self._params

