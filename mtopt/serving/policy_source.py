"""What `mtopt serve` and `mtopt export` serve: a run's spec, tasks and Q-network params.

The params are the learner's checkpoints in RUN/checkpoints (written by `mtopt train`):
the newest step, or the step pinned in RUN/serving/pin.json (`mtopt pin`). The policy
version on every reply is that step. Params of steps already served stay in memory, so
a rollback works even after the learner has deleted the checkpoint (it keeps only a few).
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from typing import Any, Callable

import jax
import numpy as np

from mtopt import envs
from mtopt.config import ConfigDict, ConfigError
from mtopt.specs import EnvSpec
from mtopt.tasks import TaskRegistry


def pin_path(run_dir: str) -> str:
  return os.path.join(run_dir, "serving", "pin.json")


def write_pin(run_dir: str, step: int | None) -> None:
  """Pins serving to checkpoint `step`; None goes back to following the newest."""
  from mtopt.durable_files import write_json
  path = pin_path(run_dir)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  # Written atomically: a server never reads half a pin.
  write_json(path, {"step": None if step is None else int(step)})


def read_pin(run_dir: str) -> int | None:
  try:
    with open(pin_path(run_dir)) as f:
      step = json.load(f).get("step")
  except (FileNotFoundError, ValueError):
    return None
  return None if step is None else int(step)


def checkpoint_steps(run_dir: str) -> list[int]:
  """Finished checkpoint steps (Orbax renames a step's directory to its number when done)."""
  d = os.path.join(run_dir, "checkpoints")
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


class RunPolicy:
  """A run directory's policy pieces. Raises ConfigError if RUN is not a run directory."""

  def __init__(self, run_dir: str):
    from learners import learning, networks
    from learners.config import LearnerConfig
    from mtopt.program.run_dir import load_run_config
    self.run_dir = os.path.abspath(run_dir)
    self.config: ConfigDict = load_run_config(self.run_dir)
    self.registry = TaskRegistry.load(self.run_dir)
    self.spec: EnvSpec = envs.make(self.config.env).spec()
    self.lcfg = LearnerConfig.from_config(self.config)
    self.network = networks.make_q_network(self.spec, self.registry.max_tasks, self.lcfg.network)
    self._like = jax.eval_shape(lambda: learning.init_training_state(
        self.network, self.spec, self.lcfg, jax.random.PRNGKey(0)))
    self._cache: collections.OrderedDict[int, Any] = collections.OrderedDict()

  @property
  def tasks(self) -> dict[str, int]:
    return {t.name: t.slot for t in self.registry.active()}

  def load_params(self, step: int | None = None) -> tuple[int, Any]:
    """(step, params as numpy) of checkpoint `step` (default newest)."""
    if step is not None and step in self._cache:
      self._cache.move_to_end(step)
      return step, self._cache[step]
    from learners.checkpointing import Checkpointer
    steps = checkpoint_steps(self.run_dir)
    step = steps[-1] if step is None and steps else step
    if step is None:
      raise FileNotFoundError(f"{self.run_dir}: no learner checkpoint yet")
    if step not in steps:
      raise FileNotFoundError(f"{self.run_dir}: no checkpoint at step {step} (have {steps}; "
                              "the learner keeps only its newest few)")
    ckpt = Checkpointer(os.path.join(self.run_dir, "checkpoints"))
    try:
      state = ckpt.restore(self._like, step)
    finally:
      ckpt.close()
    params = jax.device_get(state.params)
    self._cache[step] = params
    while len(self._cache) > 8:
      self._cache.popitem(last=False)
    return step, params

  def wanted_step(self) -> int | None:
    """The pinned step, else the newest checkpoint's."""
    pinned = read_pin(self.run_dir)
    if pinned is not None:
      return pinned
    steps = checkpoint_steps(self.run_dir)
    return steps[-1] if steps else None


class ParamWatcher:
  """Polls the run every `poll_seconds` and calls `on_params(step, params)` when the wanted
  step changes (new checkpoint, pin, rollback). Loading runs in this thread, so acting
  goes on with the old params meanwhile; the swap is one assignment in the callback."""

  def __init__(self, source: RunPolicy, on_params: Callable[[int, Any], None],
               poll_seconds: float = 1.0, log=print):
    self.source, self._on, self._poll, self._log = source, on_params, poll_seconds, log
    self.step: int | None = None
    self.error: str | None = None
    self._stop = threading.Event()
    self.check()
    self._thread = threading.Thread(target=self._run, name="param-watcher", daemon=True)
    self._thread.start()

  def check(self) -> None:
    want = self.source.wanted_step()
    if want is None or want == self.step:
      return
    try:
      step, params = self.source.load_params(want)
    except Exception as e:  # A half-written or foreign checkpoint must not stop serving.
      if self.error != str(e):
        self._log(f"serve: cannot load step {want}: {e}")
      self.error = str(e)
      return
    self.error = None
    self._on(step, params)
    self.step = step
    self._log(f"serve: policy version {step}")

  def _run(self):
    while not self._stop.wait(self._poll):
      self.check()

  def stop(self):
    self._stop.set()
    self._thread.join(timeout=10)


def numpy_params(params) -> Any:
  return jax.tree.map(np.asarray, params)
