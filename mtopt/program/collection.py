"""Fleets of robot actors collecting episodes: into a new RLDS dataset on disk, or (online)
into a replay from a background thread, optionally tied to the learner's progress
(`budget.CollectionBudget`)."""

from __future__ import annotations

import collections
import os
import shutil
import threading

import numpy as np

from mtopt import envs, rlds_format
from mtopt.config import ConfigDict
from mtopt.program import budget as budget_lib, nodes
from mtopt.tasks import TaskRegistry

ONLINE_FIRST_ID = 1 << 40  # Online episode ids start here, above any offline dataset's.


def collect_dataset(config: ConfigDict, ray, registry: TaskRegistry, out_dir: str,
                    num_episodes: int, kwargs: dict, num_actors: int | None = None,
                    episodes_per_call: int = 4, overwrite: bool = False,
                    on_episode=None) -> tuple[int, list[int]]:
  """A fleet of robot actors writes `num_episodes` into a new RLDS dataset at `out_dir`.

  Returns (episodes written, ids lost to actor crashes). The dataset is written under
  `out_dir.partial` and renamed when complete, so `out_dir` never holds half a dataset.
  With `num_actors=1` the dataset is a function of the config's seed (one actor runs every
  call, in order: same files, same sha); with more, which actor runs which ids, and so
  each episode's noise and scene history, depends on timing.
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
               reviewer=None, budget: "budget_lib.CollectionBudget | None" = None):
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
                    budget: "budget_lib.CollectionBudget | None" = None) -> Collector:
  """`actors.num_actors` robot actors running `policy` on `tasks`, writing into `replay`
  (as fast as they can, or as `budget` allows)."""
  from actors.fleet import Fleet
  a = config.actors
  fleet = Fleet(ray, int(a.num_actors), nodes.actor_kwargs(config, registry, policy, tasks),
                episodes_per_call=1, num_cpus=float(a.num_cpus))
  return Collector(fleet, replay, reviewer=reviewer, budget=budget)
