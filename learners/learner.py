"""The Learner: pulls batches, runs the jitted QT-Opt update, logs, checkpoints, publishes."""

from __future__ import annotations

import os
import time
from typing import Callable, Iterable, Iterator

import jax
import numpy as np

from learners import learning, networks
from learners.checkpointing import Checkpointer
from learners.config import LearnerConfig
from mtopt.batch import Batch, check_task_slots
from mtopt.specs import EnvSpec

# publish(params as numpy, step): how parameters reach actors (a parameter server, a queue).
PublishFn = Callable[[object, int], None]
# state_labeller(observation dict [B, ...]) -> success probabilities [B, max_tasks].
StateLabeller = Callable[[dict], np.ndarray]


class Learner:
  """Trains one task-conditioned Q-function from an iterator of `Batch`es.

  With `run_dir`, it writes TensorBoard scalars to `run_dir/learner/` and Orbax
  checkpoints to `run_dir/checkpoints/`, and resumes from the newest checkpoint there.
  With several devices (or `devices=`), each batch is split across them. `init_params`
  (e.g. a goal-conditioned network's) replaces the fresh online parameters and both targets,
  where there is no checkpoint to resume; parts it lacks (a terminate head) start fresh
  (`learning.start_from`).
  """

  def __init__(self, env_spec: EnvSpec, max_tasks: int, config: LearnerConfig,
               batches: Iterable[Batch], *, run_dir: str | None = None, seed: int = 0,
               publish: PublishFn | None = None, devices=None, resume: bool = True,
               init_params=None, state_labeller: StateLabeller | None = None):
    self.env_spec = env_spec
    self.max_tasks = max_tasks
    self.config = config
    self._batches: Iterator[Batch] = iter(batches)
    self._publish = publish
    self._state_labeller = state_labeller if config.state_label_weight else None
    devices = list(devices) if devices is not None else jax.devices()
    self._mesh = learning.data_mesh(devices) if len(devices) > 1 else None
    self.network = networks.make_q_network(env_spec, max_tasks, config.network)
    self._update = learning.make_update_fn(self.network, env_spec, config, max_tasks,
                                           self._mesh)
    self._updates_per_call = learning.updates_per_call(self.network, config, devices)
    self._update_stacked = learning.make_update_fn(self.network, env_spec, config, max_tasks,
                                                   self._mesh, stacked=True)
    self._state = learning.init_training_state(self.network, env_spec, config,
                                               jax.random.PRNGKey(seed))
    if init_params is not None:
      self._state = learning.start_from(self._state, init_params, config)
    self._checkpointer = self._writer = None
    if run_dir is not None:
      self._checkpointer = Checkpointer(os.path.join(run_dir, "checkpoints"))
      if resume and self._checkpointer.latest_step() is not None:
        self._state = self._checkpointer.restore(self._state)
      from tensorboardX import SummaryWriter  # Only runs that log pay for the import.
      self._writer = SummaryWriter(os.path.join(run_dir, "learner"))
    if self._mesh is not None:
      self._state = jax.device_put(self._state, learning.replicated(self._mesh))
    self._step = int(self._state.step)
    self._checked_keys = False
    self._last_log = (time.perf_counter(), self._step)

  # Training.
  def step(self) -> dict:
    """One update on the next batch; returns its metrics (device arrays, not synced)."""
    batch = self._prepare(self._next_batch())
    self._state, metrics = self._update(self._state, batch)
    self._after_updates(1, metrics)
    return metrics

  def run(self, num_steps: int) -> dict:
    """Runs `num_steps` updates, `updates_per_call` per call where no checkpoint or
    publication falls in between (one per call elsewhere, and for image networks on CPUs:
    see `learning.updates_per_call`); returns the last update's metrics as numpy."""
    metrics, stacked = {}, False
    while num_steps > 0:
      n = min(num_steps, self._updates_per_call, self._steps_to_next_save())
      if n == 1 or n < self._updates_per_call:  # Singly: no compile for each such n.
        for _ in range(n):
          metrics, stacked = self.step(), False
      else:
        batches = [self._prepare(self._next_batch(), stacked=True) for _ in range(n)]
        batch = learning.stack_batches(batches)
        if self._mesh is not None:
          batch = jax.device_put(batch, learning.batch_sharding(self._mesh, stacked=True))
        self._state, metrics = self._update_stacked(self._state, batch)
        self._after_updates(n, metrics)
        stacked = True
      num_steps -= n
    metrics = jax.device_get(metrics)  # Sliced here, not per call: a slice is a dispatch.
    return {k: v[-1] for k, v in metrics.items()} if stacked else metrics

  # State.
  @property
  def state(self) -> learning.TrainingState:
    return self._state

  @property
  def steps(self) -> int:
    return self._step

  def get_params(self):
    """The online network's parameters as numpy, for actors and serving."""
    return jax.device_get(self._state.params)

  def save(self) -> int:
    """Checkpoints now (waits for the write); returns the step."""
    if self._checkpointer is None:
      raise RuntimeError("this Learner has no run_dir, so it cannot checkpoint")
    return self._checkpointer.save(self._state)

  def close(self) -> None:
    if self._checkpointer is not None:
      self._checkpointer.close()
    if self._writer is not None:
      self._writer.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  # Internals.
  def _next_batch(self) -> Batch:
    try:
      return next(self._batches)
    except StopIteration:
      raise StopIteration("the learner's batch iterator is exhausted") from None

  def _steps_to_next_save(self) -> int:
    """Updates until the next checkpoint or publication (the state exists only between
    calls, so a call of several updates ends there)."""
    c = self.config
    periods = [c.checkpoint_every] if self._checkpointer is not None and c.checkpoint_every \
        else []
    if self._publish is not None:
      periods.append(c.publish_every)
    return min((p - self._step % p for p in periods), default=self._updates_per_call)

  def _after_updates(self, n: int, metrics: dict) -> None:
    """Logs, checkpoints and publishes for the `n` updates just run; with n > 1, `metrics`
    holds each update's, stacked."""
    c = self.config
    first = self._step + 1
    self._step += n
    logged = [s for s in range(first, self._step + 1) if s % c.log_every == 0]
    if self._writer is not None and logged:
      host = jax.device_get(metrics)  # One transfer, then numpy rows for each logged step.
      for step in logged:
        self._log(host if n == 1 else {k: v[step - first] for k, v in host.items()}, step)
    if self._checkpointer is not None and c.checkpoint_every and \
        self._step % c.checkpoint_every == 0:
      self._checkpointer.save(self._state, wait=False)
    if self._publish is not None and self._step % c.publish_every == 0:
      self._publish(self.get_params(), self._step)

  def _prepare(self, batch: Batch, stacked: bool = False) -> Batch:
    """Checks a batch; puts it on the mesh unless it is one of several to be stacked."""
    if not isinstance(batch, Batch):
      raise TypeError(f"the learner takes mtopt.batch.Batch, got {type(batch).__name__}")
    if not self._checked_keys:  # The layout does not change between batches.
      want = set(self.env_spec.observation)
      for name in ("observation", "next_observation"):
        got = set(getattr(batch, name))
        if got != want:
          raise ValueError(f"batch.{name} has keys {sorted(got)}, the env spec {sorted(want)}")
      if self._mesh is not None and batch.size % self._mesh.size:
        raise ValueError(f"batch size {batch.size} does not split over "
                         f"{self._mesh.size} devices")
      self._checked_keys = True
    check_task_slots(batch, self.max_tasks)
    if self._state_labeller is not None and batch.state_label is None:
      labels = np.asarray(self._state_labeller(batch.observation), np.float32)
      batch = batch._replace(state_label=labels[np.arange(batch.size), batch.task])
    if self._mesh is not None and not stacked:
      return jax.device_put(batch, learning.batch_sharding(self._mesh))
    return batch

  def _log(self, m: dict, step: int) -> None:
    """Writes one update's metrics (numpy) to TensorBoard at `step`."""
    now = time.perf_counter()
    t0, s0 = self._last_log
    self._last_log = (now, step)
    w = self._writer
    for k, v in m.items():
      if np.ndim(v) == 0:
        w.add_scalar(f"learner/{k}", float(v), step)
    w.add_scalar("learner/steps_per_second", (step - s0) / max(now - t0, 1e-9), step)
    for slot in np.flatnonzero(m["task_count"]):  # Only tasks present in this batch.
      w.add_scalar(f"td_abs/task_{slot}", float(m["task_td_abs"][slot]), step)
    w.flush()
