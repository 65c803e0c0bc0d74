"""The replay as a node of its own (`program.placement = "actors"`): a Ray actor that owns
the Reverb server, its checkpoint and its episode log under the run directory, and labels
what it is given; the driver and the learner node reach it through `RemoteReplay`.

Ray restarts a dead node with the same arguments: it restores the checkpoint and re-applies
the log (every acknowledged episode), on the port it first listened on (saved in
RUN/replay_node.json), so that the learner's samplers reconnect by themselves. A write that
was in flight when the node died is retried by Ray; its episodes that reached the log are
then skipped, so none is stored twice.
"""

from __future__ import annotations

import json
import os
import socket

from mtopt.config import ConfigDict
from mtopt.program.remote_node import RemoteNode, assigned_resources

NODE_FILE = "replay_node.json"  # {"port": ..., "starts": ...}, beside the replay's checkpoint.


def _free_port(port: int = 0) -> int:
  """`port` if nothing listens on it (0: any free one), else any free one. The probe
  fails where a gRPC server listens (those set SO_REUSEPORT: two Reverb servers would
  share the port), not for the dead server's connections left in TIME_WAIT."""
  with socket.socket() as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
      s.bind(("", port))
    except OSError:
      s.bind(("", 0))
    return s.getsockname()[1]


class ReplayNode:
  """A `ReverbReplay` owning its server in RUN (see module docstring); a Ray actor."""

  def __init__(self, config: dict, spec, run_dir: str, labeller, slots):
    from replay.reverb_replay import ReverbReplay
    path = os.path.join(run_dir, NODE_FILE)
    state = json.load(open(path)) if os.path.exists(path) else {}
    # The same port as before a restart where it is free: samplers then reconnect.
    self.replay = ReverbReplay.from_config(ConfigDict(config), spec, run_dir=run_dir,
                                           labeller=labeller, slots=slots,
                                           port=_free_port(int(state.get("port", 0))))
    self.starts = int(state.get("starts", 0)) + 1
    self.port = int(self.replay.address.rsplit(":", 1)[1])
    with open(path + ".tmp", "w") as f:
      json.dump({"port": self.port, "starts": self.starts}, f)
    os.replace(path + ".tmp", path)

  def ready(self) -> bool:
    return True

  def address(self) -> str:
    import ray
    return f"{ray.util.get_node_ip_address()}:{self.port}"

  def info(self) -> dict:
    r = self.replay
    return dict(spec=r.spec, max_tasks=r.max_tasks, slots=r.slots, sharing=r.sharing,
                starts=self.starts, pid=os.getpid(), address=self.address(),
                resources=assigned_resources())

  def write_many(self, episodes) -> int:
    fresh = [ep for ep in episodes if int(ep.episode_id) not in self.replay.reapplied_ids]
    return self.replay.write_many(fresh)

  def import_offline(self, config: dict, registry, data_dir: str, source
                     ) -> tuple[int, list[str]]:
    """`offline_data.import_offline` here, reading data_dir on this node's machine: the
    episodes do not cross the driver. Retried after a restart, it resumes after the
    acknowledged ones. Returns (episodes held from it, its log lines)."""
    from mtopt.program import offline_data
    lines: list[str] = []
    n = offline_data.import_offline(ConfigDict(config), self.replay, registry, data_dir,
                                    self.replay.labeller, lines.append, source)
    return n, lines

  def counts(self):
    return self.replay.counts()

  def acknowledged(self) -> int:
    return self.replay.acknowledged()

  def max_episode_id(self):
    return self.replay.max_episode_id()

  def num_episodes(self) -> int:
    return self.replay.num_episodes()

  def checkpoint(self) -> str:
    return self.replay.checkpoint()

  def close(self) -> None:
    self.replay.close()


class RemoteReplay(RemoteNode):
  """The driver's (and the learner node's) view of a ReplayNode: the `Replay` methods the
  program uses, each a round trip that Ray retries while the node restarts. Picklable."""

  def __init__(self, handle):
    super().__init__(handle)
    info = self.info()
    self.spec, self.max_tasks = info["spec"], info["max_tasks"]
    self.slots, self.sharing = info["slots"], info["sharing"]

  def write_many(self, episodes) -> int:
    """Returns once the node has the episodes durably (acknowledged)."""
    return self._call("write_many", list(episodes))

  def import_offline(self, config: ConfigDict, registry, data_dir: str, log=print,
                     source=None) -> int:
    """`offline_data.import_offline`, run by the node with its own labeller (the run's
    detector): the dataset is read where the node runs, at the same path."""
    n, lines = self._call("import_offline", config.to_dict(), registry, data_dir, source)
    for line in lines:
      log(line)
    return n

  def counts(self):
    return self._call("counts")

  def acknowledged(self) -> int:
    return self._call("acknowledged")

  def max_episode_id(self):
    return self._call("max_episode_id")

  def num_episodes(self) -> int:
    return self._call("num_episodes")

  def checkpoint(self) -> str:
    return self._call("checkpoint")

  def address(self) -> str:
    return self._call("address")

  def client(self, config: ConfigDict, address: str | None = None):
    """A replay client at `address`, default the node's address now (for samplers; no
    writes)."""
    from replay.reverb_replay import ReverbReplay
    return ReverbReplay.from_config(config, self.spec, address=address or self.address(),
                                    slots=self.slots)
