"""The learner as a node of its own (`program.placement = "actors"`): a Ray actor that
samples from the replay node(s) over Reverb's own protocol, trains, checkpoints into the
run directory and publishes to the parameter server; the driver drives it through
`RemoteLearner`.

Ray restarts a dead node with the same arguments: the Learner resumes from its newest
checkpoint, and the call that was running is retried. Calls name the step to reach
(`run_to`), not a number of steps, so a retried call ends where the first would have.
"""

from __future__ import annotations

import json
import os

from mtopt.config import ConfigDict
from mtopt.program import nodes
from mtopt.program.remote_node import RemoteNode, assigned_resources

NODE_FILE = "learner_node.json"  # [the step each start resumed from, ...]


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
    self._sampler, self._addresses = None, None
    self._follow_replays()
    lcfg = LearnerConfig.from_config(self._config)
    from mtopt.program.nodes import state_labeller_for_run
    self.learner = Learner(spec, max_tasks, lcfg, self._batches(), run_dir=run_dir,
                           seed=int(self._config.seed),
                           publish=lambda params, step: ps.publish.remote(params, step),
                           state_labeller=state_labeller_for_run(self._config, None, run_dir))
    # Every start and the step it resumed from, for the driver's report (and the tests).
    path = os.path.join(run_dir, NODE_FILE)
    self.starts = (json.load(open(path)) if os.path.exists(path) else []) + [self.learner.steps]
    with open(path + ".tmp", "w") as f:
      json.dump(self.starts, f)
    os.replace(path + ".tmp", path)

  def _follow_replays(self) -> None:
    """(Re)builds the sampler when a replay node is new or listens elsewhere (restarted on
    another machine); a node restarted in place is reconnected to by Reverb itself."""
    addresses = [r.address() for r in (self._replay, self._online) if r is not None]
    if addresses == self._addresses:
      return
    if self._sampler is not None:
      self._sampler.close()
    replay, online = (r.client(self._config) if r is not None else None
                      for r in (self._replay, self._online))
    self._sampler = nodes.make_sampler(self._config, int(self._config.learner.batch_size),
                                       replay, online, offline=self._disk)
    self._addresses = addresses

  def _batches(self):
    while True:  # The sampler now, also after `_follow_replays` replaced it.
      yield next(self._sampler)

  def run_to(self, step: int) -> dict:
    """Trains until `step` (nothing if already there); the last update's metrics."""
    self._follow_replays()
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
    if self._sampler is not None:
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
