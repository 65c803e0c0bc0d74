"""What the replay and learner nodes (Ray actors) share: the driver's handle on one, whose
calls Ray retries while it restarts, and what Ray gave it."""

from __future__ import annotations


def assigned_resources() -> dict:
  """What Ray gave the calling actor (CPU, GPU, memory, custom resources)."""
  import ray
  return {k: round(v, 3) for k, v in ray.get_runtime_context().get_assigned_resources().items()}


class RemoteNode:
  """A node's Ray actor handle; `_call` is a blocking round trip (picklable: the handle)."""

  def __init__(self, handle):
    self.handle = handle

  def _call(self, name: str, *args):
    import ray
    return ray.get(getattr(self.handle, name).remote(*args))

  def info(self) -> dict:
    return self._call("info")

  def close(self) -> None:
    """Closes the node (its files and servers), then ends its actor."""
    import ray
    try:
      self._call("close")
    finally:
      ray.kill(self.handle)
