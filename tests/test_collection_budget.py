"""`train.episodes_per_step`: on-policy collection tied to learner steps, whichever side is
faster (a real replay and `Collector`; the fleet and the learner are timed stand-ins)."""

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from mtopt.program import budget as budget_lib, collection
from replay.reverb_replay import ReverbReplay
from replay.tables import TableLayout
from tests.test_replay_helpers import MAX_TASKS, SPEC, make_episode


class TimedFleet:
  """Yields episodes, each after `seconds` (a robot's episode time)."""

  def __init__(self, seconds: float):
    self.seconds, self.shut = seconds, False

  def collect(self, n, first_episode_id=0):
    rng = np.random.default_rng(0)
    for i in range(n):
      time.sleep(self.seconds)
      yield make_episode(rng, first_episode_id + i, i % 2, np.arange(MAX_TASKS) == i % 3)

  def call_all(self, *args, **kwargs):
    return []

  def shutdown(self):
    self.shut = True


class TimedLearner:
  """`run(n)` takes `seconds` per step."""

  def __init__(self, seconds: float):
    self.seconds, self.steps = seconds, 0

  def run(self, n):
    time.sleep(self.seconds * n)
    self.steps += n
    return {}


def _train(rate, chunk, total, learner, fleet):
  """The driver's loop (`program.training_loop`): learner chunks, budget checks between.
  Returns (collected - rate * steps) after each chunk, and the final counts."""
  replay = ReverbReplay(TableLayout(SPEC, MAX_TASKS, max_size=10_000), slots=[0, 1],
                        sharing="none")
  budget = budget_lib.CollectionBudget.for_learner(rate, chunk, timeout=30)
  collector = collection.Collector(fleet, replay, budget=budget)
  stopped = False
  try:
    budget.start(collector.collected, learner.steps)
    gaps = []
    while learner.steps < total:
      budget_lib.run_learner(learner, chunk, budget, collector.check)
      gaps.append(budget.collected - rate * learner.steps)
    # Stopped before counting: a write in flight lands in the replay before the budget
    # counts it (CI once read 292 counted, then 293 stored).
    collector.stop()
    stopped = True
    return gaps, budget.collected, replay.num_episodes()
  finally:
    if not stopped:
      collector.stop()
    replay.close()


class BusyMachine:
  """Every core busy with a spinning process while it is open."""

  def __enter__(self):
    self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                  for _ in range(len(os.sched_getaffinity(0)))]
    return self

  def __exit__(self, *exc):
    for p in self.procs:
      p.kill()
      p.wait()


@pytest.mark.parametrize("learner_s,fleet_s,loaded", [(0.002, 0.0, False), (0.0, 0.004, False),
                                                      (0.001, 0.002, True)],
                         ids=["slow_learner", "slow_collector", "loaded_machine"])
def test_episodes_per_learner_step_stay_at_the_configured_rate(learner_s, fleet_s, loaded):
  rate, chunk, total = 0.5, 20, 600
  with BusyMachine() if loaded else open(os.devnull):
    gaps, collected, stored = _train(rate, chunk, total, TimedLearner(learner_s),
                                     TimedFleet(fleet_s))
  assert stored == collected
  # Within one check's worth of episodes at every check, and within 10% over the run.
  margin = np.ceil(rate * chunk)
  assert all(-margin <= g <= margin for g in gaps), gaps
  assert abs(collected / total - rate) <= 0.1 * rate, collected


def test_learner_waits_for_a_stalled_collector_and_says_so():
  replay = ReverbReplay(TableLayout(SPEC, MAX_TASKS, max_size=100), slots=[0, 1],
                        sharing="none")
  budget = budget_lib.CollectionBudget(1.0, 1, timeout=0.5)
  collector = collection.Collector(TimedFleet(60.0), replay, budget=budget)
  try:
    budget.start(0, 0)
    learner = TimedLearner(0.0)
    budget_lib.run_learner(learner, 10, budget)  # Nothing is owed at step 0.
    with pytest.raises(TimeoutError, match="episodes_per_step=1.*step 10"):
      budget_lib.run_learner(learner, 10, budget)
  finally:
    collector._stop.set()  # The stand-in robot is mid-episode; do not wait for it.
    replay.close()


def test_collector_stops_while_waiting_for_the_learner():
  replay = ReverbReplay(TableLayout(SPEC, MAX_TASKS, max_size=100), slots=[0, 1],
                        sharing="none")
  budget = budget_lib.CollectionBudget(1.0, 3)
  fleet = TimedFleet(0.0)
  collector = collection.Collector(fleet, replay, budget=budget)
  try:
    budget.start(0, 0)
    deadline = time.monotonic() + 10
    while budget.collected < 3 and time.monotonic() < deadline:
      time.sleep(0.01)
    time.sleep(0.2)
    assert budget.collected == 3 == replay.num_episodes()  # Blocked at the margin.
    stopper = threading.Thread(target=collector.stop)
    stopper.start()
    stopper.join(timeout=5)
    assert not stopper.is_alive() and fleet.shut
  finally:
    replay.close()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["mixed", "online"])
def test_train_collects_the_configured_episodes_per_learner_step(tmp_path, ray_session, mode):
  """`mtopt train` end to end (Ray robot actors acting by CEM, Reverb, the learner)."""
  from mtopt import cli
  from mtopt.program import run_dir
  from tests.test_launch import DEFAULT, TINY
  run = str(tmp_path / "run")
  steps, rate = 400, 0.25
  assert cli.main(["train", "--config", DEFAULT, f"--config.run_dir={run}", *TINY,
                   f"--config.train.mode={mode}", f"--config.learner.num_steps={steps}",
                   "--config.train.eval_every=200", "--config.learner.publish_every=20",
                   f"--config.train.episodes_per_step={rate}"]) == 0
  collected = run_dir.load_progress(run)["collected_episodes"]
  print(f"{mode}: {collected} on-policy episodes in {steps} learner steps (rate {rate})")
  assert abs(collected / steps - rate) <= 0.1 * rate, collected
