"""`mtopt tasks add` on a run with many stored episodes: how fast stored data is relabelled.

Run: `python -m benchmarks.tasks_add [--quick]`. Prints a table, then one JSON line.

Builds a run directory with the default tabletop config's state spec: a detector for its
six tasks, N stored episodes in an RLDS dataset under RUN/data/ and the same N in the
run's replay (as after its offline import). Episodes are random (the timing does not
depend on what they show). Then it times the two steps a user's `tasks add` takes:

- the first relabelling of the dataset, which reads every episode and keeps its final
  observation (`dataset_relabel_cold_episodes_per_s`; once per dataset, see
  `success_detectors.labeller`);
- `mtopt tasks add NAME --examples DIR --run-dir RUN` (the CLI, in this process): the new
  detector head, then every stored dataset relabelled from the kept final observations
  (`dataset_relabel_episodes_per_s`, timed again alone);
- the replay relabelled when the run continues (`relabel.ensure_labelled`, what `mtopt
  train` runs first; `replay_relabel_episodes_per_s`).

`relabel_episodes_per_s` is both stores together (2N episodes over both times, the
dataset's from its kept final observations); `add_task_seconds` the CLI and the replay.
The replay relabel's seconds are split into reading (the old replay's start and walk),
labelling, writing the new replay and checkpointing it (`replay_relabel_seconds`).
The reference figure is the labeller alone (`detector_episodes_per_s`: a forward pass over
N final observations, compiled first).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "configs", "tabletop_state.py")
TASKS = ["reach_red", "reach_green", "reach_blue", "lift_red", "lift_green", "lift_blue"]


def _episodes(spec, n: int, max_tasks: int, seed: int):
  from mtopt.episode import Episode
  rng = np.random.default_rng(seed)
  dim, steps = spec.observation["state"].shape[0], spec.max_episode_steps
  for i in range(n):
    t = int(rng.integers(steps // 2, steps + 1))
    yield Episode({"state": rng.normal(size=(t + 1, dim)).astype(np.float32)},
                  rng.uniform(-1, 1, (t, spec.action.shape[0])).astype(np.float32),
                  task_id=i % len(TASKS), episode_id=i,
                  success=np.zeros(max_tasks, bool))


def _examples(rng, dim: int, n: int, column: int):
  """Observations where the task holds iff state[column] > 0."""
  x = rng.normal(size=(2 * n, dim)).astype(np.float32)
  return {"state": x[x[:, column] > 0][:n]}, {"state": x[x[:, column] <= 0][:n]}


def build_run(run: str, n: int, config):
  """RUN with a detector for TASKS, n episodes in RUN/data/offline and in its replay."""
  from mtopt import envs, rlds_format
  from mtopt.program import relabel
  from mtopt.tasks import TaskRegistry
  from replay.reverb_replay import ReverbReplay
  from success_detectors.detector import DetectorConfig, SuccessDetector
  from success_detectors.examples import ExampleSet
  spec = envs.make(config.env).spec()
  max_tasks, dim = int(config.max_tasks), spec.observation["state"].shape[0]
  registry = TaskRegistry.from_names(max_tasks, TASKS)
  registry.save(run)
  rng = np.random.default_rng(0)
  sets = []
  for slot in range(len(TASKS)):
    pos, neg = _examples(rng, dim, 200, slot)
    obs = {"state": np.concatenate([pos["state"], neg["state"]])}
    sets.append(ExampleSet(obs, np.full(len(obs["state"]), slot),
                           np.arange(len(obs["state"])) < len(pos["state"])))
  det = SuccessDetector.create(spec, max_tasks, DetectorConfig.from_dict(config.detector))
  # The run's detector is not what is timed: a short fit builds it (tasks add then trains
  # the new head with the config's own steps).
  det.train(ExampleSet.concat(sets), {s: t for s, t in enumerate(TASKS)}, steps=200)
  det.save(os.path.join(run, "detector"))
  data = os.path.join(run, "data", "offline")
  with rlds_format.DatasetWriter(data, spec, max_tasks, TASKS) as w:
    for ep in _episodes(spec, n, max_tasks, 1):
      w.write(ep)
  replay = ReverbReplay.from_config(config, spec, run_dir=run, labeller=det,
                                    slots=registry.slots)
  batch = []
  for ep in _episodes(spec, n, max_tasks, 1):
    batch.append(ep)
    if len(batch) == 256:
      replay.write_many(batch)
      batch = []
  replay.write_many(batch)
  replay.checkpoint()
  replay.close()
  relabel.write_stamp(run, det)
  return spec, det


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true", help="1000 stored episodes instead of 10,000")
  p.add_argument("--episodes", type=int, default=None)
  args = p.parse_args(argv)
  n = args.episodes or (1000 if args.quick else 10_000)
  from mtopt import cli
  from mtopt.config import load_config
  from mtopt.program import relabel
  from mtopt.tasks import TaskRegistry
  from success_detectors.detector import SuccessDetector
  from success_detectors.examples import write_example_folder
  config = load_config(CONFIG, [])
  root = tempfile.mkdtemp(prefix="mtopt_tasks_add_")
  run = os.path.join(root, "run")
  try:
    t0 = time.perf_counter()
    spec, det = build_run(run, n, config)
    build_s = time.perf_counter() - t0
    finals = {"state": np.stack([ep.observations["state"][-1]
                                 for ep in _episodes(spec, n, det.max_tasks, 1)])}
    det.predict(finals)  # Compiled first: the reference is the forward pass alone.
    t0 = time.perf_counter()
    det.predict(finals)
    detector_rate = n / (time.perf_counter() - t0)
    from success_detectors.labeller import relabel_dataset
    t0 = time.perf_counter()
    relabel_dataset(os.path.join(run, "data", "offline"), det)  # The first, cold pass.
    cold_s = time.perf_counter() - t0

    pos, neg = _examples(np.random.default_rng(1), spec.observation["state"].shape[0], 400, 7)
    folder = os.path.join(root, "examples")
    write_example_folder(folder, pos, neg, name="new_task")
    t0 = time.perf_counter()
    assert cli.main(["tasks", "add", "new_task", "--examples", folder, "--run-dir", run,
                     "--config", CONFIG]) == 0
    add_s = time.perf_counter() - t0
    new = SuccessDetector.load(os.path.join(run, "detector"))
    # The dataset relabel alone, timed again (the CLI's time includes the head's training).
    t0 = time.perf_counter()
    relabel_dataset(os.path.join(run, "data", "offline"), new)
    dataset_s = time.perf_counter() - t0
    registry = TaskRegistry.load(run)
    t0 = time.perf_counter()
    phases: dict = {}
    relabelled = relabel.ensure_labelled(config, spec, run, new, registry.slots, log=print,
                                         timings=phases)
    replay_s = time.perf_counter() - t0
    assert relabelled == n, (relabelled, n)
  finally:
    shutil.rmtree(root, ignore_errors=True)
  result = {
      "stored_episodes": n,
      "dataset_relabel_cold_episodes_per_s": round(n / cold_s, 1),
      "dataset_relabel_episodes_per_s": round(n / dataset_s, 1),
      "replay_relabel_episodes_per_s": round(n / replay_s, 1),
      "relabel_episodes_per_s": round(2 * n / (dataset_s + replay_s), 1),
      "tasks_add_cli_seconds": round(add_s, 2),
      "head_train_seconds": round(add_s - dataset_s, 2),
      "add_task_seconds": round(add_s + replay_s, 2),
      "detector_episodes_per_s": round(detector_rate, 1),
      "replay_relabel_seconds": {k: round(v, 2) for k, v in phases.items()},
      "build_seconds": round(build_s, 1),
  }
  rows = [("stored episodes (dataset + replay, each)", f"{n}"),
          ("dataset relabel, first (cold), episodes/s",
           f"{result['dataset_relabel_cold_episodes_per_s']:.0f}"),
          ("dataset relabel, episodes/s", f"{result['dataset_relabel_episodes_per_s']:.0f}"),
          ("replay relabel, episodes/s", f"{result['replay_relabel_episodes_per_s']:.0f}"),
          ("  its seconds: " + ", ".join(phases), " / ".join(f"{v:.1f}" for v in
                                                            phases.values())),
          ("both stores, episodes/s (goal >= 5000)", f"{result['relabel_episodes_per_s']:.0f}"),
          ("`tasks add` CLI, s (head + dataset)", f"{add_s:.1f}"),
          ("add task total, s (+ replay relabel)", f"{result['add_task_seconds']:.1f}"),
          ("reference: detector alone, episodes/s", f"{detector_rate:.0f}")]
  w = max(len(r[0]) for r in rows)
  for name, value in rows:
    print(f"{name.ljust(w)}  {value:>10}")
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main()
