"""Where the replay and the learner run (`program.placement`).

`driver` (the default, one machine): the Reverb server and the learner live in the driver
process, as fast as it gets on a laptop. `actors` (a cluster): each replay and the learner
is a Ray actor with its config section's resources (`replay.num_cpus`, `replay.memory_gb`,
`replay.resources`; `learner.num_gpus`, ...), so that Ray puts the replay on a big-memory
node and the learner on a GPU node, and restarts them when they die (see `replay_node`,
`learner_node`); `labeller.nodes` labeller nodes label for all of them (`labeller_node`).
The driver then only builds, supervises and reports.
"""

from __future__ import annotations

import contextlib
import os

from mtopt.config import ConfigDict, ConfigError
from mtopt.program import nodes

PLACEMENTS = ("driver", "actors")


def placement_of(config: ConfigDict) -> str:
  return str(config.get("program", {}).get("placement", "driver"))


def check(config: ConfigDict) -> None:
  where = placement_of(config)
  if where not in PLACEMENTS:
    raise ConfigError(f"program.placement must be one of {PLACEMENTS}, got {where!r}")
  for section in ("replay", "learner", "labeller"):
    node_options(config, section)  # Its resources, checked before any work.
  from mtopt.program.labeller_node import count
  if where == "actors" and count(config) < 1:
    raise ConfigError(f"labeller.nodes must be >= 1 with program.placement=actors, got "
                      f"{count(config)}")


def restart_options(config: ConfigDict) -> dict:
  """Ray options of a node restarted up to `program.node_restarts` times (default 10); a
  call in flight is retried on the restarted node."""
  restarts = int(config.get("program", {}).get("node_restarts", 10))
  return {"max_restarts": restarts, "max_task_retries": -1 if restarts else 0}


def node_options(config: ConfigDict, section: str) -> dict:
  """Ray actor options of the `section` node: its resources, restarts, retried calls."""
  s = config.get(section) or {}
  cpus, gpus = float(s.get("num_cpus", 1.0)), float(s.get("num_gpus", 0.0))
  memory_gb = float(s.get("memory_gb", 0.0))
  if cpus < 0 or gpus < 0 or memory_gb < 0:
    raise ConfigError(f"{section}.num_cpus, num_gpus and memory_gb must be >= 0, got "
                      f"{cpus}, {gpus}, {memory_gb}")
  resources = {}
  for item in filter(None, (x.strip() for x in str(s.get("resources", "")).split(","))):
    name, _, amount = item.partition(":")
    try:
      resources[name.strip()] = float(amount or 1)
    except ValueError:
      raise ConfigError(f"{section}.resources: {item!r} is not name:amount") from None
  options = dict(num_cpus=cpus, num_gpus=gpus, resources=resources,
                 **restart_options(config))
  if memory_gb:
    options["memory"] = int(memory_gb * 2**30)
  return options


def started(handle, what: str, options: dict, log=print, patience_s: float = 60.0):
  """Waits until Ray has placed and started the node; says so when that takes long (no
  node in the cluster has the resources free: it waits for them, as Ray does)."""
  import ray
  ref = handle.ready.remote()
  if not ray.wait([ref], timeout=patience_s)[0]:
    wants = {k: options[k] for k in ("num_cpus", "num_gpus", "memory", "resources")
             if k in options}
    log(f"the {what} node is not up after {patience_s:.0f} s: still starting, or waiting "
        f"for a node with {wants} free (free now: {ray.available_resources()})")
  ray.get(ref)
  return handle


def spawn(config: ConfigDict, section: str, cls, stack: contextlib.ExitStack, *args,
          log=print):
  """A started `section` node: a Ray actor of `cls` with the section's options, killed when
  `stack` closes. Its arguments are put in Ray's object store and held until then: Ray
  rebuilds a restarted node from them, and frees those too large to inline once the first
  start has them (ray-project/ray#53727: the restart then fails)."""
  import ray
  options = node_options(config, section)
  held = [ray.put(a) for a in args]
  handle = ray.remote(cls).options(**options).remote(*held)
  stack.callback(lambda: (ray.kill(handle), held.clear()))  # Also when it never started.
  return started(handle, section, options, log)


def make_labeller(config: ConfigDict, labeller, stack: contextlib.ExitStack, log=print):
  """The program's labeller: `labeller` itself, or with `actors` a RemoteLabeller over
  `labeller.nodes` LabellerNode actors holding it (None stays None: labels come with the
  data)."""
  if placement_of(config) == "driver" or labeller is None:
    return labeller
  from mtopt.program.labeller_node import LabellerNode, RemoteLabeller, count
  return RemoteLabeller([spawn(config, "labeller", LabellerNode, stack, labeller, log=log)
                         for _ in range(count(config))], labeller)


def make_replays(config: ConfigDict, spec, run_dir: str, labeller, slots,
                 stack: contextlib.ExitStack, log=print):
  """(replay, online replay or None), as `nodes.make_replays`; with `actors`, RemoteReplays
  of ReplayNode actors."""
  if placement_of(config) == "driver":
    return nodes.make_replays(config, spec, run_dir, labeller, slots)
  from mtopt.program.replay_node import RemoteReplay, ReplayNode
  fraction = nodes.online_fraction(config)
  dirs = [run_dir] + ([os.path.join(run_dir, "online")] if fraction else [])
  made = [RemoteReplay(spawn(config, "replay", ReplayNode, stack, config.to_dict(), spec, d,
                             labeller, list(slots), log=log)) for d in dirs]
  return made[0], (made[1] if fraction else None)


def make_learner(config: ConfigDict, spec, registry, lcfg, run_dir: str, ps,
                 stack: contextlib.ExitStack, replay, online=None, disk=None, log=print):
  """The learner, fed by the config's sampler over `replay` (and `online`), or over `disk`
  (batches streamed from a dataset) in place of `replay`; publishes to `ps`. With `actors`,
  a RemoteLearner of a LearnerNode actor."""
  if placement_of(config) == "actors":
    from mtopt.program.learner_node import LearnerNode, RemoteLearner
    learner = RemoteLearner(spawn(config, "learner", LearnerNode, stack, config.to_dict(),
                                  spec, registry.max_tasks, run_dir, ps, replay, online, disk,
                                  log=log))
    stack.callback(learner.close)
    return learner
  from learners.learner import Learner
  sampler = nodes.make_sampler(config, lcfg.batch_size, None if disk else replay, online,
                               offline=disk)
  stack.callback(sampler.close)  # Its in-flight reads end before the servers stop.
  learner = Learner(spec, registry.max_tasks, lcfg, sampler, run_dir=run_dir,
                    seed=config.seed, publish=lambda params, step: ps.publish.remote(params, step),
                    state_labeller=nodes.state_labeller_for_run(config, registry, run_dir))
  stack.callback(learner.close)
  return learner


class Supervisor:
  """The driver's watch over the nodes Ray restarts (`actors` placement): after each
  learner chunk it reports a node that came back, and from where; Ray did the restart."""

  def __init__(self, replays, learner, labeller=None, log=print):
    from mtopt.program.labeller_node import RemoteLabeller
    from mtopt.program.learner_node import RemoteLearner
    from mtopt.program.replay_node import RemoteReplay
    self._replays = [r for r in replays if isinstance(r, RemoteReplay)]
    self._learner = learner if isinstance(learner, RemoteLearner) else None
    self._labeller = labeller if isinstance(labeller, RemoteLabeller) else None
    self._log = log
    infos = [r.info() for r in self._replays]
    self._starts = [i["starts"] for i in infos]
    self._labeller_pids = []
    if self._labeller is not None:
      for i in self._labeller.infos():
        self._labeller_pids.append(i["pid"])
        log(f"labeller node: {i['address']} (pid {i['pid']}) with {i['resources']}")
    self._learner_starts = len(self._learner.resumed_from()) if self._learner else 0
    for i in infos:
      log(f"replay node: {i['address']} (pid {i['pid']}) with {i['resources']}")
    if self._learner is not None:
      i = self._learner.info()
      log(f"learner node: {i['address']} (pid {i['pid']}) with {i['resources']}, "
          f"devices {i['devices']}")

  def __call__(self) -> None:
    for i, r in enumerate(self._replays):
      info = r.info()
      if info["starts"] != self._starts[i]:
        self._starts[i] = info["starts"]
        self._log(f"the replay node at {info['address']} was restarted (pid {info['pid']}): "
                  f"{r.acknowledged()} acknowledged episodes, from its checkpoint and log")
    if self._labeller is not None:
      for i, info in enumerate(self._labeller.infos()):
        if info["pid"] != self._labeller_pids[i]:
          self._labeller_pids[i] = info["pid"]
          self._log(f"labeller node {i} at {info['address']} was restarted (pid "
                    f"{info['pid']}); the labels it owed were asked again")
    if self._learner is not None:
      starts = self._learner.resumed_from()
      if len(starts) != self._learner_starts:
        self._learner_starts = len(starts)
        self._log(f"the learner node was restarted: it resumed from its checkpoint at step "
                  f"{starts[-1]}")
