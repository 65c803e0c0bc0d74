"""Greedy evaluation: during training (evaluator actors following the parameter server,
their results in progress and TensorBoard) and of a run's saved checkpoint."""

from __future__ import annotations

import os
import time

import numpy as np

from mtopt import envs
from mtopt.config import ConfigDict, ConfigError
from mtopt.program import nodes
from mtopt.tasks import TaskRegistry

EVALUATOR_IDS = 1000  # Robot ids of evaluator actors start here.


def evaluator_actors(ray, config: ConfigDict, registry: TaskRegistry, ps, spec, lcfg):
  """`eval.num_actors` robot actors acting by greedy CEM over the parameter server's Q."""
  from actors.robot_actor import remote_robot_actor
  greedy = nodes.pulled_cem_policy(ps, spec, registry.max_tasks, lcfg)
  cls = remote_robot_actor(ray, num_cpus=0)
  return [cls.remote(robot_id=EVALUATOR_IDS + i,
                     **nodes.actor_kwargs(config, registry, greedy))
          for i in range(int(config.eval.num_actors))]


class Evaluation:
  """Evaluates the learner's current params on `tasks` and records the result: success as
  the run's labeller judges it (what the scheduler acts on), and the simulator's ground
  truth beside it for the tasks the simulator defines."""

  def __init__(self, ray, config: ConfigDict, registry: TaskRegistry, ps, spec, lcfg,
               tasks, run_dir: str, labeller, true_tasks):
    from tensorboardX import SummaryWriter
    self._ray, self._ps, self._tasks = ray, ps, list(tasks)
    self._episodes = int(config.eval.episodes_per_task)
    self._labeller, self._threshold = labeller, float(config.detector.threshold)
    self._true_tasks = [t for t in self._tasks if t in true_tasks]  # The simulator's own.
    self._actors = evaluator_actors(ray, config, registry, ps, spec, lcfg)
    self._tb = SummaryWriter(os.path.join(run_dir, "eval"))

  def __call__(self, params, step: int, progress: dict) -> dict[str, float]:
    """Publishes `params` at `step`, evaluates, appends to progress["evaluations"];
    returns the judged rates."""
    from actors.evaluator import judge, run_evaluation
    self._ray.get(self._ps.publish.remote(params, step))
    episodes = run_evaluation(self._ray, self._actors, self._tasks, self._episodes)
    rates = judge(episodes, self._labeller, self._threshold, self._true_tasks)
    progress["evaluations"].append({"step": step, **rates, "time": time.time()})
    for kind, tag in (("success", "success"), ("true", "true_success")):
      for task, r in rates[kind].items():
        self._tb.add_scalar(f"{tag}/{task}", r, step)
      if rates[kind]:
        self._tb.add_scalar(f"{tag}/mean", float(np.mean(list(rates[kind].values()))), step)
    return rates["success"]

  def close(self) -> None:
    for actor in self._actors:  # Several runs may share one Ray (experiments).
      self._ray.kill(actor)
    self._tb.close()


def evaluate_checkpoint(run_dir: str, episodes_per_task: int | None = None,
                        step: int | None = None) -> dict:
  """Per-task success of a run's checkpoint (greedy CEM), judged by the run's detector
  (ground truth in a `train.labels=ground_truth` run), and the simulator's where it
  defines the task."""
  from actors.evaluator import judge, run_evaluation
  from mtopt.serving.policy_source import RunPolicy, checkpoint_steps

  run = RunPolicy(run_dir)  # The run's config, tasks, spec and network, as `mtopt serve`'s.
  if not checkpoint_steps(run_dir):
    raise ConfigError(f"{run_dir}: no checkpoint to evaluate")
  config, registry, spec, lcfg = run.config, run.registry, run.spec, run.lcfg
  step, params = run.load_params(step)
  ray = nodes.init_ray(config)
  ps = nodes.parameter_server(ray)
  ray.get(ps.publish.remote(params, step))
  actors = evaluator_actors(ray, config, registry, ps, spec, lcfg)
  n = episodes_per_task or int(config.eval.episodes_per_task)
  episodes = run_evaluation(ray, actors, registry.names, n)
  for actor in [*actors, ps]:
    ray.kill(actor)
  with envs.make(config.env) as env:
    true_tasks = env.task_names()
  rates = judge(episodes, run_labeller(config, run_dir), float(config.detector.threshold),
                true_tasks)
  return {"step": step, "success": rates["success"], "true_success": rates["true"],
          "mean_success": float(np.mean(list(rates["success"].values())))}


def run_labeller(config: ConfigDict, run_dir: str):
  """The labeller a finished run judged with: its detector, or None (ground truth)."""
  if config.train.labels != "learned":
    return None
  from success_detectors.labeller import load_labeller
  path = os.path.join(run_dir, "detector")
  if not os.path.exists(os.path.join(path, "detector.json")):
    raise ConfigError(f"{run_dir}: a learned-labels run without a detector in {path}")
  return load_labeller(path)
