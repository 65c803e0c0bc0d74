"""On-policy collection tied to learner steps (`train.episodes_per_step`): the budget the
collector and the learner both wait on, and the learner's side of the loop."""

from __future__ import annotations

import math
import threading
import time
from typing import Callable

from mtopt.config import ConfigDict, ConfigError


def from_config(config: ConfigDict, lcfg, replay, slots) -> "CollectionBudget | None":
  """`train.episodes_per_step` > 0: on-policy collection tied to learner steps; None (as
  fast as the actors go) otherwise."""
  t = config.train
  rate = float(t.get("episodes_per_step", 0.0))
  if rate < 0:
    raise ConfigError(f"train.episodes_per_step must be >= 0, got {rate}")
  if not rate or t.mode == "offline":
    return None
  if config.actors.get("mode", "ray") == "served":
    raise ConfigError("train.episodes_per_step needs actors.mode=ray: served robots upload "
                      "on their own schedule")
  ready = None
  if t.mode == "online":  # The sampler's first batch needs a table at min_size.
    min_size = int(config.replay.min_size)
    ready = lambda: any(max(c.values()) >= min_size  # noqa: E731
                        for k, c in replay.counts().items() if k in slots)
  return CollectionBudget.for_learner(
      rate, int(lcfg.publish_every), ready=ready, timeout=float(t.wait_for_data_seconds))


class CollectionBudget:
  """On-policy episodes tied to learner steps, never to wall time (`train.episodes_per_step`).

  With the learner at step s, the collector may have written `base + rate * s + margin`
  episodes, and the learner runs on from s only once `base + rate * s` are written. So
  whichever side is faster waits, and collected episodes per learner step stay at `rate`
  (within `margin` episodes) on any machine and load: every method of an experiment gets
  the same on-policy data for the same steps. `base` is set by `start`: the episodes
  collected before training (re)started, less `rate` times its step, so a resumed run goes
  on at `rate` from where it is. Before `start` nothing is written, except while `ready()`
  is false (an `online` replay that cannot be sampled yet; those episodes count too).

  The collector checks before each episode it writes (episodes the actors finished
  meanwhile wait in Ray, made by a policy at most one publication old).
  """

  def __init__(self, rate: float, margin: int, ready: Callable[[], bool] | None = None,
               timeout: float = 600.0):
    if not rate > 0 or margin < 1:
      raise ValueError(f"CollectionBudget: need rate > 0 and margin >= 1, got {rate}, {margin}")
    self.rate, self.margin, self.timeout = float(rate), int(margin), float(timeout)
    self._ready = ready
    self._cond = threading.Condition()
    self._base: float | None = None
    self._steps = 0
    self.collected = 0  # Set by the collector after each write.
    self.waited = 0.0  # Seconds the learner has waited for episodes in all.

  @classmethod
  def for_learner(cls, rate: float, steps_per_check: int, **kwargs) -> "CollectionBudget":
    """A budget the learner checks every `steps_per_check` steps: the collector may run a
    check's worth ahead, so that both sides work at once."""
    return cls(rate, max(1, math.ceil(rate * steps_per_check)), **kwargs)

  def start(self, collected: int, steps: int) -> None:
    with self._cond:
      self.collected, self._steps = int(collected), int(steps)
      self._base = collected - self.rate * steps
      self._cond.notify_all()

  def allowed(self) -> float:
    """Episodes the collector may have written now."""
    return -math.inf if self._base is None else self._base + self.rate * self._steps + self.margin

  def owed(self, steps: int) -> float:
    """Episodes that must be written before the learner runs on from `steps`."""
    return math.inf if self._base is None else self._base + self.rate * steps

  # The collector's side.
  def wait_to_write(self, n: int, stop: threading.Event) -> bool:
    """Blocks until the collector may have written `n` episodes; False once `stop` is set."""
    with self._cond:
      while not stop.is_set():
        if n <= self.allowed() or (self._ready is not None and not self._ready()):
          return True
        self._cond.wait(0.2)
    return False

  def wrote(self, collected: int) -> None:
    with self._cond:
      self.collected = int(collected)
      self._cond.notify_all()

  # The learner's side.
  def set_steps(self, steps: int) -> None:
    with self._cond:
      self._steps = int(steps)
      self._cond.notify_all()

  def wait_for_episodes(self, steps: int, check: Callable[[], None] = lambda: None) -> float:
    """Blocks until the episodes owed at `steps` are written; returns the seconds waited.
    `check` raises if collection failed; TimeoutError after `timeout` seconds."""
    t0 = time.monotonic()
    with self._cond:
      while self.collected < self.owed(steps):
        check()
        if time.monotonic() - t0 > self.timeout:
          raise TimeoutError(
              f"train.episodes_per_step={self.rate:g}: the learner waited {self.timeout:.0f} s "
              f"at step {steps} for {self.owed(steps) - self.collected:.0f} more on-policy "
              f"episodes ({self.collected} written); are the robot actors running?")
        self._cond.wait(0.2)
      waited = time.monotonic() - t0
      self.waited += waited
    return waited


def run_learner(learner, num_steps: int, budget: CollectionBudget | None = None,
                check: Callable[[], None] = lambda: None, steps_per_check: int = 0) -> dict:
  """`learner.run(num_steps)`; with a budget, in parts of `steps_per_check` steps, each
  after the on-policy episodes owed at its first step are written (the collector then
  runs on to the new step), so a check costs no save point."""
  if budget is None:
    return learner.run(num_steps)
  end, metrics = learner.steps + num_steps, {}
  while learner.steps < end:
    budget.wait_for_episodes(learner.steps, check)
    metrics = learner.run(min(steps_per_check or num_steps, end - learner.steps))
    budget.set_steps(learner.steps)
  return metrics
