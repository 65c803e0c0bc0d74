"""Fleets of robot actors collecting episodes: into a new RLDS dataset on disk, or (online)
into a replay from a background thread, optionally tied to the learner's progress
(`CollectionBudget`)."""

from __future__ import annotations

import collections
import math
import os
import shutil
import threading
import time
from typing import Callable

import numpy as np

from mtopt import envs, rlds_format
from mtopt.config import ConfigDict
from mtopt.program import nodes
from mtopt.tasks import TaskRegistry

ONLINE_FIRST_ID = 1 << 40  # Online episode ids start here, above any offline dataset's.


def collect_dataset(config: ConfigDict, ray, registry: TaskRegistry, out_dir: str,
                    num_episodes: int, kwargs: dict, num_actors: int | None = None,
                    episodes_per_call: int = 4, overwrite: bool = False,
                    on_episode=None) -> tuple[int, list[int]]:
  """A fleet of robot actors writes `num_episodes` into a new RLDS dataset at `out_dir`.

  Returns (episodes written, ids lost to actor crashes). The dataset is written under
  `out_dir.partial` and renamed when complete, so `out_dir` never holds half a dataset.
  """
  from actors.fleet import Fleet
  num_actors = int(num_actors or config.actors.num_actors)
  spec = envs.make(config.env).spec()
  tmp = out_dir.rstrip("/") + ".partial"
  if os.path.exists(os.path.join(out_dir, "dataset_info.json")) and not overwrite:
    raise rlds_format.DatasetError(f"{out_dir} already holds a dataset; choose a new directory")
  if os.path.exists(tmp):  # Left by a killed collection.
    shutil.rmtree(tmp)
  cpus = float(ray.cluster_resources().get("CPU", 1.0))
  with rlds_format.DatasetWriter(tmp, spec, registry.max_tasks, registry.names,
                                 overwrite=True) as writer, \
       Fleet(ray, num_actors, kwargs, episodes_per_call=episodes_per_call,
             num_cpus=min(float(config.actors.num_cpus), cpus / num_actors)) as fleet:
    for ep in fleet.collect(num_episodes):
      writer.write(ep)
      if on_episode is not None:
        on_episode(ep)
    lost = list(fleet.lost_episode_ids)
  if os.path.exists(out_dir):
    shutil.rmtree(out_dir)
  os.replace(tmp, out_dir)
  return writer.num_written, lost


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
    return time.monotonic() - t0


class Collector:
  """Online collection in a background thread: a fleet acting by CEM over the latest
  params with exploration, its episodes written (labelled) into `replay`.

  `collected` counts the episodes the replay acknowledged, from what it acknowledged before
  (a resumed run); ids continue after the largest the replay acknowledged, so that they
  stay unique across restarts (a crashed call's ids are never reused either). With
  `write=False` the robots store their episodes themselves (the served fleet uploads them
  through `mtopt serve`) and the collector only keeps them collecting and counts them.
  With a `budget`, each episode is written as soon as the budget allows it (the learner
  may be waiting for it).
  """

  def __init__(self, fleet, replay, episodes_per_write: int = 8, write: bool = True,
               reviewer=None, budget: CollectionBudget | None = None):
    if budget is not None and not write:
      raise ValueError("Collector: a budget needs the collector to write the episodes")
    self._fleet, self._replay, self._budget = fleet, replay, budget
    self._per_write = 1 if budget is not None else episodes_per_write
    self._write, self.reviewer = write, reviewer
    self.collected = replay.acknowledged()
    largest = replay.max_episode_id()
    self._first_id = max(ONLINE_FIRST_ID, (largest if largest is not None else
                                           ONLINE_FIRST_ID + self.collected - 1) + 1)
    self.attempts = collections.Counter()  # Task slot -> episodes collected since start.
    self._stop = threading.Event()
    self.error: BaseException | None = None
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()

  def _run(self):
    try:
      batch = []
      for ep in self._fleet.collect(1 << 40, first_episode_id=self._first_id):
        self.attempts[ep.task_id] += 1
        if not self._write:  # Already stored (and acknowledged to its robot) on upload.
          self.collected += 1
          if self._stop.is_set():
            break
          continue
        if self._budget is not None and not self._budget.wait_to_write(self.collected + 1,
                                                                        self._stop):
          break
        batch.append(ep)
        if len(batch) >= self._per_write:
          if self.reviewer is not None:
            batch = self.reviewer(batch)
          self._replay.write_many(batch)  # Returns once the episodes are durable.
          self.collected += len(batch)
          batch = []
          if self._budget is not None:
            self._budget.wrote(self.collected)
        if self._stop.is_set():
          break
    except BaseException as e:  # Surfaced by the driver loop.
      self.error = e

  def check(self) -> None:
    if self.error is not None:
      raise RuntimeError(f"online collection failed: {self.error}") from self.error

  def set_success_estimates(self, rates: dict) -> None:
    """Per-task success for the actors' `underperforming` scheduler."""
    self._fleet.tell_all("set_success_estimates", rates)

  def focus(self, tasks, share: float) -> None:
    """`share` of the robots' attempts go to `tasks` (tasks just added); () ends it."""
    self._fleet.tell_all("set_focus", list(tasks), share if tasks else 0.0)

  def stop(self):
    self._stop.set()
    self._thread.join(timeout=30)
    self._fleet.shutdown()


class Reviewer:
  """Labels collected episodes before they are stored, and queues some of them for review
  (`success_detectors.review`): those near the detector's cut (flagged, counted) and
  `review.fraction` of its other successes."""

  def __init__(self, config: ConfigDict, run_dir: str, labeller, true_slots, seed: int = 0):
    from success_detectors.review import ReviewQueue
    self.queue = ReviewQueue(run_dir)
    self._labeller, self._true = labeller, set(true_slots)
    self._threshold = float(config.detector.threshold)
    self._margin, self._fraction = float(config.review.margin), float(config.review.fraction)
    self._rng = np.random.default_rng(seed)
    self.flagged = self.seen = 0

  def __call__(self, episodes):
    labels = np.asarray(self._labeller(episodes), np.float32)
    self.flagged += self.queue.offer(episodes, labels, self._threshold, self._margin,
                                     self._fraction, self._rng,
                                     [ep.task_id in self._true for ep in episodes])
    self.seen += len(episodes)
    return [ep.with_labels(row) for ep, row in zip(episodes, labels)]


def start_collector(ray, config: ConfigDict, registry: TaskRegistry, policy, tasks,
                    replay, reviewer: Reviewer | None = None,
                    budget: CollectionBudget | None = None) -> Collector:
  """`actors.num_actors` robot actors running `policy` on `tasks`, writing into `replay`
  (as fast as they can, or as `budget` allows)."""
  from actors.fleet import Fleet
  a = config.actors
  fleet = Fleet(ray, int(a.num_actors), nodes.actor_kwargs(config, registry, policy, tasks),
                episodes_per_call=1, num_cpus=float(a.num_cpus))
  return Collector(fleet, replay, reviewer=reviewer, budget=budget)


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
