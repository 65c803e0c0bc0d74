"""Builds one training run's nodes from the config and a prepared run directory: the
replays (with the offline import), the parameter server, the collecting robot actors,
the evaluators, the learner's sampler and the learner. What is built is closed by the
caller's ExitStack, last built first."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, NamedTuple

from mtopt.config import ConfigDict, ConfigError
from mtopt.program import budget as budget_lib
from mtopt.program import collection, nodes, offline_data, placement, relabel
from mtopt.program.evaluation import Evaluation
from mtopt.program.run_dir import save_progress


class Run(NamedTuple):
  """The built nodes, as the training loop uses them."""
  tasks: list  # What this run trains and evaluates.
  replays: list  # Checkpointed at evaluations.
  collector: Any  # None without on-policy collection.
  evaluation: Callable  # (params, step, progress) -> per-task success.
  learner: Any
  lcfg: Any
  budget: Any  # `budget.CollectionBudget` or None.
  supervise: Callable[[], None]  # Reports nodes Ray restarted (`placement.Supervisor`).


def build(config: ConfigDict, prepared, progress: dict, stack: contextlib.ExitStack,
          log=print) -> Run:
  from learners.config import LearnerConfig
  t = config.train
  run_dir, env, registry, ray, labeller, data, spec, source = prepared
  labeller = placement.make_labeller(config, labeller, stack, log)
  streamed = source is not None and source.stream
  lcfg = LearnerConfig.from_config(config)
  tasks = list(t.tasks) or registry.names
  # Tasks the simulator has no ground truth for (all of them without a simulator).
  own = [x for x in tasks if env is None or x not in env.task_names()]
  if own and t.labels != "learned":
    raise ConfigError(f"task(s) {own} are defined by success examples only: the simulator "
                      f"has no ground truth for them; train with train.labels=learned")
  slots = [registry.slot(x) for x in tasks]
  if streamed:  # The dataset stays on disk; a replay only for on-policy episodes.
    dirs = [run_dir] if t.mode == "mixed" else []
  else:
    dirs = [run_dir] + ([os.path.join(run_dir, "online")] if t.mode == "mixed" else [])
  for d in dirs:
    relabel.ensure_labelled(config, spec, d, labeller, slots, log)  # After `tasks add`.
  make = lambda: placement.make_replays(config, spec, run_dir, labeller, slots, stack,
                                         log)  # noqa: E731
  if streamed:
    replay, online = None, make()[0] if t.mode == "mixed" else None
  else:
    replay, online = make()
  replays = [r for r in (replay, online) if r is not None]
  for r in replays:
    stack.callback(r.close)  # Closed last (callbacks run last-in first-out).
  if data is not None and not streamed and not progress["imported_episodes"]:
    progress["imported_episodes"] = offline_data.import_offline(config, replay, registry,
                                                                data, labeller, log, source)
    replay.checkpoint()
    save_progress(run_dir, progress)

  ps = nodes.parameter_server(ray, placement.restart_options(config))
  stack.callback(ray.kill, ps)  # Several runs may share one Ray (experiments).
  collector = None
  served = config.actors.get("mode", "ray") == "served"  # Robots act through `mtopt serve`.
  budget = budget_lib.from_config(config, lcfg, online or replay, slots)
  if t.mode in ("online", "mixed") and not served:
    policy = nodes.pulled_cem_policy(ps, spec, registry.max_tasks, lcfg,
                                     gaussian_std=t.explore_gaussian_std,
                                     epsilon=t.explore_epsilon, seed=config.seed)
    reviewer = (collection.Reviewer(config, run_dir, labeller,
                                    [registry.slot(x) for x in tasks if x not in own],
                                    seed=config.seed)
                if t.labels == "learned" else None)
    collector = collection.start_collector(ray, config, registry, policy, tasks,
                                           online or replay, reviewer, budget)
    stack.callback(collector.stop)
  if env is not None and int(config.eval.episodes_per_task) > 0:
    evaluation = Evaluation(ray, config, registry, ps, spec, lcfg, tasks, run_dir, labeller,
                            env.task_names())
    stack.callback(evaluation.close)
  else:
    log("no simulator or no evaluation episodes (eval.episodes_per_task=0): not evaluating")
    evaluation = lambda params, step, progress: {}  # noqa: E731
  disk = (offline_data.disk_batches(config, source, registry, labeller, run_dir, slots, log)
          if streamed else None)
  learner = placement.make_learner(config, spec, registry, lcfg, run_dir, ps, stack,
                                   replay, online, disk, log)
  if t.mode in ("online", "mixed") and served:
    from mtopt.serving.fleet_mode import ServedFleet
    fleet = ServedFleet(ray, config, registry, tasks, learner, online or replay, labeller,
                        log)
    stack.callback(fleet.shutdown)
    collector = fleet.collector
  if learner.steps < progress["step"]:
    raise ConfigError(f"{run_dir}: progress.json is at step {progress['step']} but the "
                      f"newest learner checkpoint at {learner.steps}; checkpoints were removed")
  progress["evaluations"] = [e for e in progress["evaluations"] if e["step"] <= learner.steps]
  return Run(tasks, replays, collector, evaluation, learner, lcfg, budget,
             placement.Supervisor(replays, learner, labeller, log))
