"""Where the replay and the learner run (`program.placement`).

`driver` (the default, one machine): the Reverb server and the learner live in the driver
process, as fast as it gets on a laptop.
"""

from __future__ import annotations

import contextlib

from mtopt.config import ConfigDict, ConfigError
from mtopt.program import nodes

PLACEMENTS = ("driver",)


def placement_of(config: ConfigDict) -> str:
  return str(config.get("program", {}).get("placement", "driver"))


def check(config: ConfigDict, streamed: bool) -> None:
  where = placement_of(config)
  if where not in PLACEMENTS:
    raise ConfigError(f"program.placement must be one of {PLACEMENTS}, got {where!r}")


def make_replays(config: ConfigDict, spec, run_dir: str, labeller, slots):
  """(replay, online replay or None), as `nodes.make_replays`."""
  return nodes.make_replays(config, spec, run_dir, labeller, slots)


def make_learner(config: ConfigDict, spec, registry, lcfg, run_dir: str, ps,
                 stack: contextlib.ExitStack, replay, online=None, disk=None):
  """The learner, fed by the config's sampler over `replay` (and `online`), or over `disk`
  (batches streamed from a dataset) in place of `replay`; publishes to `ps`."""
  from learners.learner import Learner
  sampler = nodes.make_sampler(config, lcfg.batch_size, None if disk else replay, online,
                               offline=disk)
  stack.callback(sampler.close)  # Its in-flight reads end before the servers stop.
  learner = Learner(spec, registry.max_tasks, lcfg, sampler, run_dir=run_dir,
                    seed=config.seed, publish=lambda params, step: ps.publish.remote(params, step))
  stack.callback(learner.close)
  return learner
