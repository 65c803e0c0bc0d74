"""A Reverb replay server hosted in a Ray actor, for distributed runs.

The actor owns the `reverb.Server` (on a big-memory node, say); actors and learners connect
with `ReverbReplay(layout, address=...)`, which starts nothing of its own.
"""

from __future__ import annotations

from replay.reverb_replay import serve
from replay.tables import TableLayout


class ReplayServer:
  """Owns a Reverb server with `layout`'s tables; restores from `checkpoint_dir` if set."""

  def __init__(self, layout: TableLayout, checkpoint_dir: str | None = None,
               port: int | None = None):
    import ray
    self._server = serve(layout, checkpoint_dir, port)
    host = ray.util.get_node_ip_address() if ray.is_initialized() else "localhost"
    self._address = f"{host}:{self._server.port}"

  def address(self) -> str:
    """host:port that clients anywhere in the cluster can reach."""
    return self._address

  def checkpoint(self) -> str:
    import reverb
    return reverb.Client(f"localhost:{self._server.port}").checkpoint()

  def stop(self) -> None:
    if self._server is not None:
      self._server.stop()
      self._server = None


def start_server_actor(layout: TableLayout, checkpoint_dir: str | None = None,
                       port: int | None = None, **actor_options):
  """Starts the server actor; returns (actor handle, address).

  `actor_options` go to `ray.remote` (e.g. `resources={"replay": 1}` to place it on a
  big-memory node). It reserves no CPU by default: Reverb's threads are mostly waiting.
  """
  import ray
  actor_options.setdefault("num_cpus", 0)
  handle = ray.remote(ReplayServer).options(**actor_options).remote(layout, checkpoint_dir, port)
  return handle, ray.get(handle.address.remote())
