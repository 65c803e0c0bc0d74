"""Program assembly: one MT-Opt training run from a config, on local Ray or a cluster.

    driver (this process)                       Ray actors
    ─────────────────────                       ──────────
    Reverb replay + episode log ◄─ episodes ──── K RobotActors (CEM over latest Q,
      ▲ labels from the success detector              exploration; or scripted noisy
      │                                               experts for offline data)
    Learner (jitted QT-Opt update) ── params ──► ParameterServer ──► actors, evaluators
      │                                                               │
      └── every eval_every steps ◄── per-task success ── Evaluator actors (greedy CEM)
                                          └──► TaskScheduler of the collecting actors

With `program.placement = "actors"` the replay and the learner are Ray actors too, placed
by their config sections' resources and restarted when they die (mtopt/program/placement.py).

Modes (`train.mode`): `offline` trains only from an RLDS dataset (given, or collected
first by scripted noisy experts); `online` collects with the current Q while training;
`mixed` does both: the offline dataset in one replay, on-policy episodes in a second, and
`train.online_fraction` of every batch from the second once it has data (QT-Opt).

Resuming: the same command on an existing run directory continues it. Every episode the
replay acknowledged is in its episode log, so the replay comes back whole; the learner
and progress.json are saved together at every `learner.checkpoint_every` steps and every
evaluation (a "save point"), so they resume at the same step. The parts are in
`mtopt/program/`: `build` makes the nodes, `training_loop` drives them.
"""

from __future__ import annotations

import contextlib
from typing import Any, NamedTuple

from mtopt import envs
from mtopt.config import ConfigDict, ConfigError
from mtopt.program import (build, dataset_source, nodes, offline_data, placement,
                           training_loop)
from mtopt.program.checks import check_config
from mtopt.program.run_dir import load_progress, open_run_dir
from mtopt.tasks import TaskRegistry

class Prepared(NamedTuple):
  run_dir: str
  env: Any  # None for a dataset without a simulator (`env.name = "none"`).
  registry: TaskRegistry
  ray: Any
  labeller: Any  # For on-policy and imported episodes without labels.
  dataset_dir: str | None  # The offline dataset (`offline` and `mixed` modes).
  spec: Any = None
  source: Any = None  # The config's `dataset` section, checked (`program.dataset_source`).


def prepare(config: ConfigDict, log=print) -> Prepared:
  """The run directory (its config checked), env, task registry, Ray and labeller
  (training the detector if the run has none yet); with `offline`/`mixed`, the dataset.

  Every config value and the dataset (its mapping against its feature spec, its shards)
  are checked first, before the run directory, Ray or any data."""
  check_config(config)  # Every value, before any work (seconds, not minutes in).
  source = dataset_source.from_config(config, log)
  if source is not None:
    dataset_source.check_against_config(config, source)
  placement.check(config)
  env = None if dataset_source.no_env(config) else envs.make(config.env)
  spec = source.spec if env is None else env.spec()
  if source is not None and env is not None:
    dataset_source.check_spec(source, spec)
  offline_data.check_dataset(config, spec, log)  # Its shards whole, before any work.
  run_dir = open_run_dir(config)
  names = list(config.env.tasks) or (env.task_names() if env else list(source.task_names))
  registry = TaskRegistry.load_or_create(run_dir, int(config.max_tasks), names)
  _check_tasks(config, registry)
  ray = nodes.init_ray(config)
  labeller = nodes.make_labeller(config, env, registry, run_dir, log) if env else None
  data = None
  if source is not None:
    labeller = dataset_source.labeller(config, source, labeller)
    data = source.data_dir
  elif config.train.mode in ("offline", "mixed"):
    data = offline_data.offline_dataset(config, ray, registry, run_dir, log)
  return Prepared(run_dir, env, registry, ray, labeller, data, spec, source)


def _check_tasks(config: ConfigDict, registry: TaskRegistry) -> None:
  unknown = [x for x in config.train.tasks if x not in registry]
  if unknown:
    raise ConfigError(f"train.tasks names unknown task(s) {unknown}; known: {registry.names}")


def train(config: ConfigDict, log=print) -> dict:
  """Trains from `config` until `learner.num_steps`; returns the final per-task success
  (`train.mode=goals`: goal-reaching success by goal kind, `program.goal_training`)."""
  if config.train.mode == "goals":
    check_config(config)
    from mtopt.program import goal_training
    return goal_training.train(config, log)
  while True:
    with contextlib.ExitStack() as stack:  # Shuts down what was built, also after an error.
      prepared = prepare(config, log)
      progress = load_progress(prepared.run_dir)
      run = build.build(config, prepared, progress, stack, log)
      result = training_loop.run(config, run, prepared.registry, prepared.run_dir, progress,
                                 log)
    if result != training_loop.RESTART:
      return result
    log("the run's tasks or detector changed: restarting from the last save point")
