"""A small run directory for the serving tests: the default config, its task registry and
learner checkpoints of freshly initialised params (no training needed to serve them)."""

from __future__ import annotations

import os

from mtopt import envs, launch
from mtopt.config import load_config
from mtopt.tasks import TaskRegistry
from tests.conftest import ROOT

DEFAULT = os.path.join(ROOT, "configs", "tabletop_state.py")


def make_run(run_dir: str, steps=(10,), seeds=None) -> str:
  """Writes config.json, tasks and a checkpoint per step (params from seed i for step i)."""
  import jax
  from learners import learning, networks
  from learners.checkpointing import Checkpointer
  from learners.config import LearnerConfig
  config = load_config(DEFAULT, [f"run_dir={run_dir}"])
  os.makedirs(run_dir, exist_ok=True)
  launch.save_config(run_dir, config)
  spec = envs.make(config.env).spec()
  registry = TaskRegistry.load_or_create(run_dir, int(config.max_tasks), list(config.env.tasks))
  lcfg = LearnerConfig.from_config(config)
  net = networks.make_q_network(spec, registry.max_tasks, lcfg.network)
  ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"))
  for i, step in enumerate(steps):
    add_checkpoint(ckpt, net, spec, lcfg, step, seed=i if seeds is None else seeds[i])
  ckpt.close()
  return run_dir


def add_checkpoint(ckpt, net, spec, lcfg, step: int, seed: int = 0):
  import jax
  from learners import learning
  state = learning.init_training_state(net, spec, lcfg, jax.random.PRNGKey(seed))
  ckpt.save(state._replace(step=jax.numpy.asarray(step, state.step.dtype)))


def add_step(run_dir: str, step: int, seed: int) -> None:
  """Another checkpoint in an existing run, as the learner would write it."""
  from learners import networks
  from learners.checkpointing import Checkpointer
  from learners.config import LearnerConfig
  config = launch.load_run_config(run_dir)
  spec = envs.make(config.env).spec()
  lcfg = LearnerConfig.from_config(config)
  net = networks.make_q_network(spec, int(config.max_tasks), lcfg.network)
  ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), max_to_keep=10)
  add_checkpoint(ckpt, net, spec, lcfg, step, seed)
  ckpt.close()
