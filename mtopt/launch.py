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

Modes (`train.mode`): `offline` trains only from an RLDS dataset (given, or collected
first by scripted noisy experts); `online` collects with the current Q while training;
`mixed` does both: the offline dataset in one replay, on-policy episodes in a second, and
`train.online_fraction` of every batch from the second once it has data (QT-Opt).

Resuming: the same command on an existing run directory continues it. Every episode the
replay acknowledged is in its episode log, so the replay comes back whole; the learner
and progress.json are saved together at every `learner.checkpoint_every` steps and every
evaluation (a "save point"), so they resume at the same step. The parts are in
`mtopt/program/`.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, NamedTuple

import numpy as np

from mtopt import envs
from mtopt.config import ConfigDict, ConfigError
from mtopt.program import (collection, dataset_source, new_tasks, nodes, offline_data, relabel,
                           reports)
from mtopt.program.checks import check_config
from mtopt.program.evaluation import Evaluation
from mtopt.program.run_dir import load_progress, open_run_dir, save_progress
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


def _steps_to_save_point(step: int, periods: list[int], total: int) -> int:
  return min([p - step % p for p in periods if p > 0] + [total - step])


RESTART = "restart"  # _train's answer when the run's tasks or detector changed under it.


def _collection_budget(config: ConfigDict, lcfg, replay, slots):
  """`train.episodes_per_step` > 0: on-policy collection tied to learner steps (see
  `collection.CollectionBudget`); None (as fast as the actors go) otherwise."""
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
  return collection.CollectionBudget.for_learner(
      rate, int(lcfg.publish_every), ready=ready, timeout=float(t.wait_for_data_seconds))


def train(config: ConfigDict, log=print) -> dict:
  """Trains from `config` until `learner.num_steps`; returns the final per-task success
  (`train.mode=goals`: goal-reaching success by goal kind, `program.goal_training`)."""
  if config.train.mode == "goals":
    check_config(config)
    from mtopt.program import goal_training
    return goal_training.train(config, log)
  while True:
    with contextlib.ExitStack() as stack:  # Shuts down what was built, also after an error.
      result = _train(config, log, stack)
    if result != RESTART:
      return result
    log("the run's tasks or detector changed: restarting from the last save point")


def _train(config: ConfigDict, log, stack: contextlib.ExitStack) -> dict:
  from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
  from learners.config import LearnerConfig
  from learners.learner import Learner

  t = config.train
  run_dir, env, registry, ray, labeller, data, spec, source = prepare(config, log)
  streamed = source is not None and source.stream
  progress = load_progress(run_dir)
  lcfg = LearnerConfig.from_config(config)
  tasks = list(t.tasks) or registry.names  # What this run trains and evaluates.
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
  if streamed:
    replay, online = None, nodes.make_replays(config, spec, run_dir, labeller, slots)[0] \
        if t.mode == "mixed" else None
  else:
    replay, online = nodes.make_replays(config, spec, run_dir, labeller, slots)
  replays = [r for r in (replay, online) if r is not None]
  for r in replays:
    stack.callback(r.close)  # Closed last (callbacks run last-in first-out).
  if data is not None and not streamed and not progress["imported_episodes"]:
    progress["imported_episodes"] = offline_data.import_offline(config, replay, registry,
                                                                data, labeller, log, source)
    replay.checkpoint()
    save_progress(run_dir, progress)

  ps = nodes.parameter_server(ray)
  stack.callback(ray.kill, ps)  # Several runs may share one Ray (experiments).
  collector = None
  served = config.actors.get("mode", "ray") == "served"  # Robots act through `mtopt serve`.
  budget = _collection_budget(config, lcfg, online or replay, slots)
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
  evaluation = None
  if env is not None and int(config.eval.episodes_per_task) > 0:
    evaluation = Evaluation(ray, config, registry, ps, spec, lcfg, tasks, run_dir, labeller,
                            env.task_names())
    stack.callback(evaluation.close)
  else:
    log("no simulator or no evaluation episodes (eval.episodes_per_task=0): not evaluating")
    evaluation = lambda params, step, progress: {}  # noqa: E731
  if streamed:
    disk = offline_data.disk_batches(config, source, registry, labeller, run_dir, slots, log)
    sampler = nodes.make_sampler(config, lcfg.batch_size, None, online, offline=disk)
  else:
    sampler = nodes.make_sampler(config, lcfg.batch_size, replay, online)
  stack.callback(sampler.close)  # Its in-flight reads end before the servers stop.
  learner = Learner(spec, registry.max_tasks, lcfg, sampler, run_dir=run_dir,
                    seed=config.seed, publish=lambda params, step: ps.publish.remote(params, step))
  stack.callback(learner.close)
  if t.mode in ("online", "mixed") and served:
    from mtopt.serving.fleet_mode import ServedFleet
    fleet = ServedFleet(ray, config, registry, tasks, learner, online or replay, log)
    stack.callback(fleet.shutdown)
    collector = fleet.collector
  if learner.steps < progress["step"]:
    raise ConfigError(f"{run_dir}: progress.json is at step {progress['step']} but the "
                      f"newest learner checkpoint at {learner.steps}; checkpoints were removed")
  progress["evaluations"] = [e for e in progress["evaluations"] if e["step"] <= learner.steps]
  attempts_before = dict(progress.get("attempts", {}))
  review_before = dict(progress.get("review", {}))

  def save_point(checkpoint_replays: bool):
    """Learner and progress at the same step; the replays' logs hold every episode, a
    checkpoint only compacts them (at evaluations: it copies the whole replay)."""
    learner.save()
    for r in replays if checkpoint_replays else ():
      r.checkpoint()
    progress["step"] = learner.steps
    if collector is not None:
      progress["collected_episodes"] = collector.collected
      progress["attempts"] = {t: attempts_before.get(t, 0) + collector.attempts[registry.slot(t)]
                              for t in tasks}  # Episodes collected per task, over the run.
      if collector.reviewer is not None:  # Labels near the detector's cut, and the queue.
        r = collector.reviewer
        progress["review"] = {"flagged": review_before.get("flagged", 0) + r.flagged,
                              "labelled": review_before.get("labelled", 0) + r.seen,
                              "queued": len(r.queue.pending())}
    save_progress(run_dir, progress)

  total, every = int(lcfg.num_steps), int(t.eval_every)
  evals = progress["evaluations"]
  last_rates = evals[-1]["success"] if evals else {}
  watch = new_tasks.Watch(run_dir)
  if learner.steps and learner.steps < total:
    # A save point writes the learner's checkpoint first: a kill before progress.json
    # followed leaves it one save point behind (that point's evaluation is then missing).
    behind = (f" (progress.json was saved at step {progress['step']})"
              if learner.steps > progress["step"] else "")
    log(f"resuming from step {learner.steps}{behind}")
  joined = new_tasks.added(tasks, progress)
  if joined:
    last_rates = new_tasks.zero_shot(evaluation, learner, progress, joined, log)
    save_point(checkpoint_replays=False)

  def steer(rates):
    if collector is not None and rates:  # Underperforming and new tasks get more attempts.
      collector.set_success_estimates(rates)
      collector.focus(new_tasks.focused(progress, rates), float(config.actors.new_task_share))
  steer(last_rates)
  with Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                transient=False) as bar:
    job = bar.add_task("train", total=total, completed=learner.steps, info="")
    periods = [every, int(lcfg.checkpoint_every)]
    if budget is not None:  # Checked at every publication: collection follows the policy.
      budget.start(collector.collected, learner.steps)
    while learner.steps < total:
      metrics = collection.run_learner(
          learner, _steps_to_save_point(learner.steps, periods, total), budget,
          check=collector.check if collector is not None else lambda: None,
          steps_per_check=int(lcfg.publish_every))
      if collector is not None:
        collector.check()
      evaluate_now = learner.steps % every == 0 or learner.steps == total
      if evaluate_now:
        last_rates = evaluation(learner.get_params(), learner.steps, progress)
        steer(last_rates)
      save_point(checkpoint_replays=evaluate_now)
      if watch.changed():
        return RESTART
      episodes = progress["imported_episodes"] + (collector.collected if collector else 0)
      info = (f"loss {float(metrics.get('loss', np.nan)):.3f}  success "
              f"{np.mean(list(last_rates.values()) or [np.nan]):.2f}  episodes {episodes}")
      bar.update(job, completed=learner.steps, info=info)
  if not evals or evals[-1]["step"] != learner.steps:
    last_rates = evaluation(learner.get_params(), learner.steps, progress)
    save_point(checkpoint_replays=True)
  if progress.get("review"):
    r = progress["review"]
    log(f"detector loop: {r['flagged']} of {r['labelled']} collected episodes were labelled "
        f"near the cut; {r['queued']} wait for review (`mtopt tasks review`)")
  return reports.write_results(run_dir, learner.steps, last_rates, progress["evaluations"])
