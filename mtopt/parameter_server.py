"""Parameters from the learner to the actors: the `ParameterSource` interface and its server.

The learner publishes versioned params (a pytree of numpy arrays); whatever acts on them
(robot actors, evaluators, a policy server) reads them through one small interface,
`ParameterSource.pull`, so that it does not care whether they come from a Ray actor, a
local object or, later, the network. Pulling is one round trip and skips the transfer when
the reader is up to date.
"""

from __future__ import annotations

from typing import Any, Protocol


class ParameterSource(Protocol):
  """Where acting code gets parameters from."""

  def pull(self, have_version: int = -1) -> tuple[int, Any]:
    """(version, params), or (version, None) when `have_version` is already the newest
    (version -1 and None before anything was published)."""


class ParameterServer:
  """Holds the newest published params: a local `ParameterSource`; `ray.remote` it to
  share it across processes (then read it through `RemoteParameters`)."""

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
    if have_version >= self._version:
      return self._version, None
    return self._version, self._params


class RemoteParameters:
  """The `ParameterSource` of a ParameterServer Ray actor (picklable: it holds the handle)."""

  def __init__(self, handle: Any):
    self.handle = handle

  def pull(self, have_version: int = -1) -> tuple[int, Any]:
    import ray
    return ray.get(self.handle.pull.remote(have_version))
