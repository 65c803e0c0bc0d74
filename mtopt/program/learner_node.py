"""The learner as a node of its own (`program.placement = "actors"`): a Ray actor that
samples from the replay node(s) over Reverb's own protocol, trains, checkpoints into the
run directory and publishes to the parameter server; the driver drives it through
`RemoteLearner`.

Ray restarts a dead node with the same arguments: the Learner resumes from its newest
checkpoint, and the call that was running is retried. Calls name the step to reach
(`run_to`), not a number of steps, so a retried call ends where the first would have.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import queue
import threading

from mtopt.config import ConfigDict
from mtopt.program import nodes
from mtopt.program.remote_node import RemoteNode, assigned_resources

NODE_FILE = "learner_node.json"  # [the step each start resumed from, ...]
CHECK_REPLAYS_SECONDS = 10.0  # A read this long asks whether the replay nodes have moved.

log = logging.getLogger(__name__)


class FollowedReplays:
  """Batches from `build(addresses)`, the sampler for the replay nodes' addresses now
  (`addresses()`), rebuilt when they change.

  Reverb retries a server that is gone forever, with no error, so a replay node restarted
  at another address (another machine, or its port taken) would stall the learner. So the
  sampler is read on a reader thread, `chunk` batches per ask, and a wait of over
  `check_seconds` asks where the nodes are; where they moved, the sampler is rebuilt and
  the read asked of the new one. The old reader stays blocked on the dead address (a
  tf.data read cannot be cancelled from another thread): a daemon thread holding nothing
  the run needs. Reads happen only while the learner waits for them, and in chunks: on a
  loaded machine each hand-over between threads waits for the scheduler.
  """

  def __init__(self, addresses, build, check_seconds: float = CHECK_REPLAYS_SECONDS,
               chunk: int = 8):
    self._addresses_fn, self._build, self._check = addresses, build, float(check_seconds)
    self._chunk = int(chunk)
    self._sampler, self._addresses, self._reader, self._asked = None, None, None, False
    self._ready, self._error = collections.deque(), None
    self.rebuilds = 0
    self.follow()

  def follow(self) -> bool:
    """Rebuilds the sampler if the nodes listen elsewhere now; whether it did."""
    addresses = self._addresses_fn()
    if addresses == self._addresses:
      return False
    if self._sampler is not None:
      log.warning("replay nodes moved from %s to %s: sampling from there", self._addresses,
                  addresses)
      self.close()
    self._sampler, self._addresses = self._build(addresses), addresses
    self._reader, self._asked = _Reader(self._sampler), False
    self._ready.clear()  # Fetched from where the nodes were, as is an error from there.
    self._error = None
    self.rebuilds += 1
    return True

  def __iter__(self):
    return self

  def __next__(self):
    while not self._ready:
      if self._error is not None:
        error, self._error = self._error, None
        raise error
      if not self._asked:
        self._reader.asks.put(self._chunk)
        self._asked = True
      try:
        batches, self._error = self._reader.answers.get(timeout=self._check)
      except queue.Empty:
        self.follow()  # Waits on Ray while a node restarts; the same read goes on if not moved.
        continue
      self._asked = False
      self._ready.extend(batches)
    return self._ready.popleft()

  def close(self) -> None:
    if self._reader is not None:
      self._reader.asks.put(0)  # Ends it once its read (if any) returns.
    if self._sampler is not None:
      self._sampler.close()


class _Reader:
  """A daemon thread that answers an ask for n batches with (the sampler's next batches,
  None), or with (those read, the error the next read raised)."""

  def __init__(self, sampler):
    self.asks, self.answers = queue.SimpleQueue(), queue.SimpleQueue()
    threading.Thread(target=self._run, args=(sampler,), name="replay-read", daemon=True).start()

  def _run(self, sampler) -> None:
    while n := self.asks.get():
      batches = []
      try:
        for _ in range(n):
          batches.append(next(sampler))
        self.answers.put((batches, None))
      except BaseException as e:
        self.answers.put((batches, e))


class LearnerNode:
  """A `learners.learner.Learner` fed by `nodes.make_sampler` over RemoteReplays, or over
  `disk` (`offline_data.disk_batches`' factory: the dataset streamed from its files, which
  the node's machine must see at the same path) in place of `replay`."""

  def __init__(self, config: dict, spec, max_tasks: int, run_dir: str, ps, replay,
               online=None, disk=None):
    from learners.config import LearnerConfig
    from learners.learner import Learner
    self._config = ConfigDict(config)
    self._replay, self._online, self._disk = replay, online, disk
    self._sampler = FollowedReplays(self._replay_addresses, self._make_sampler)
    lcfg = LearnerConfig.from_config(self._config)
    from mtopt.program.nodes import state_labeller_for_run
    self.learner = Learner(spec, max_tasks, lcfg, self._sampler, run_dir=run_dir,
                           seed=int(self._config.seed),
                           publish=lambda params, step: ps.publish.remote(params, step),
                           state_labeller=state_labeller_for_run(self._config, None, run_dir))
    # Every start and the step it resumed from, for the driver's report (and the tests).
    path = os.path.join(run_dir, NODE_FILE)
    self.starts = (json.load(open(path)) if os.path.exists(path) else []) + [self.learner.steps]
    with open(path + ".tmp", "w") as f:
      json.dump(self.starts, f)
    os.replace(path + ".tmp", path)

  def _replay_addresses(self) -> list[str]:
    return [r.address() for r in (self._replay, self._online) if r is not None]

  def _make_sampler(self, addresses: list[str]):
    """A sampler over the replay nodes at `addresses` (a node restarted in place is
    reconnected to by Reverb itself; `FollowedReplays` rebuilds this one where one moved)."""
    where = iter(addresses)  # In `_replay_addresses`' order: replay, then online.
    replay, online = (r.client(self._config, next(where)) if r is not None else None
                      for r in (self._replay, self._online))
    return nodes.make_sampler(self._config, int(self._config.learner.batch_size),
                              replay, online, offline=self._disk)

  def run_to(self, step: int) -> dict:
    """Trains until `step` (nothing if already there); the last update's metrics."""
    self._sampler.follow()
    n = int(step) - self.learner.steps
    return self.learner.run(n) if n > 0 else {}

  def ready(self) -> bool:
    return True

  def resumed_from(self) -> list[int]:
    return list(self.starts)

  def info(self) -> dict:
    import jax
    import ray
    return dict(address=ray.util.get_node_ip_address(), pid=os.getpid(),
                resources=assigned_resources(), devices=[str(d) for d in jax.devices()])

  def steps(self) -> int:
    return self.learner.steps

  def save(self) -> int:
    return self.learner.save()

  def get_params(self):
    return self.learner.get_params()

  def close(self) -> None:
    self._sampler.close()
    self.learner.close()


class RemoteLearner(RemoteNode):
  """The driver's Learner: what the training loop calls, as round trips to a LearnerNode
  (retried by Ray while it restarts)."""

  @property
  def steps(self) -> int:
    return self._call("steps")

  def run(self, num_steps: int) -> dict:
    return self._call("run_to", self.steps + int(num_steps))

  def save(self) -> int:
    return self._call("save")

  def resumed_from(self) -> list[int]:
    return self._call("resumed_from")

  def get_params(self):
    return self._call("get_params")
