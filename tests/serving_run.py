"""A small run directory for the serving tests: the default config, its task registry and
learner checkpoints of freshly initialised params (no training needed to serve them)."""

from __future__ import annotations

import os

from mtopt import envs
from mtopt.program import run_dir as run_dirs
from tests.conftest import ROOT

DEFAULT = os.path.join(ROOT, "configs", "tabletop_state.py")


def make_run(run_dir: str, steps=(10,), seeds=None, overrides=()) -> str:
  """Writes config.json, tasks and a checkpoint per step (params from seed i for step i)."""
  from benchmarks.serving import make_run as make_benchmark_run
  make_benchmark_run(run_dir, DEFAULT, overrides, steps, seeds)
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
  config = run_dirs.load_run_config(run_dir)
  spec = envs.make(config.env).spec()
  lcfg = LearnerConfig.from_config(config)
  net = networks.make_q_network(spec, int(config.max_tasks), lcfg.network)
  ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), max_to_keep=10)
  add_checkpoint(ckpt, net, spec, lcfg, step, seed)
  ckpt.close()


class Served:
  """A running server on a small run, with two registered robots."""

  def __init__(self, run_dir: str, **config):
    from mtopt.serving import auth
    from mtopt.serving.server import PolicyServer, ServerConfig
    self.run_dir = run_dir
    self.tokens = {name: auth.add_robot(run_dir, name) for name in ("r1", "r2")}
    # Compiled on first use: warming every batch size up would slow each test's start.
    defaults = dict(port=0, max_batch=8, replay=False, poll_seconds=0.2, warm_up=False)
    self.server = PolicyServer(run_dir, ServerConfig(**{**defaults, **config}),
                               log=lambda *a: None).start()

  @property
  def url(self) -> str:
    return self.server.url

  def client(self, robot: str = "r1", **kwargs):
    from mtopt.robot_client import RobotClient
    return RobotClient(self.url, robot, self.tokens[robot], **kwargs)

  def healthz(self) -> dict:
    import json
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{self.server.port}/healthz", timeout=5) as r:
      return json.loads(r.read())

  def stop(self):
    self.server.stop()


def episode(rng, steps: int = 8, dim: int = 44, action_dim: int = 5, max_tasks: int = 16):
  """A well-formed upload's fields (labels included: the test runs have no detector)."""
  return dict(observations={"state": rng.normal(size=(steps + 1, dim)).astype("float32")},
              actions=rng.uniform(-1, 1, size=(steps, action_dim)).astype("float32"),
              labels=rng.uniform(size=max_tasks).astype("float32"))
