"""The program's nodes, built from the config: Ray, the labeller, robot-actor arguments,
parameter-following policies, the replays and the learner's batch sampler."""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from mtopt.config import ConfigDict, ConfigError
from mtopt.parameter_server import ParameterServer, RemoteParameters
from mtopt.tasks import TaskRegistry


def init_ray(config: ConfigDict):
  """Joins the cluster named by RAY_ADDRESS / `ray job submit`, else starts a local Ray."""
  import ray
  if not ray.is_initialized():
    env_vars = {"TF_CPP_MIN_LOG_LEVEL": "2", "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}
    kwargs: dict[str, Any] = dict(runtime_env={"env_vars": env_vars}, log_to_driver=False)
    if not os.environ.get("RAY_ADDRESS"):
      kwargs.update(include_dashboard=False)
    ray.init(**kwargs)
  return ray


def make_labeller(config: ConfigDict, env, registry: TaskRegistry, run_dir: str, log=print):
  """The success labeller the replay applies to every episode.

  `train.labels`: `ground_truth` labels with the simulator's own success (an upper
  bound, for ablations); `learned` uses the detector in run_dir/detector, training it
  first from simulated examples (the simulator playing the person who gives examples).
  """
  source = config.train.labels
  if source == "ground_truth":
    def ground_truth(episodes):
      return np.stack([np.asarray(ep.success, np.float32) for ep in episodes])
    return ground_truth
  if source != "learned":
    raise ConfigError(f"train.labels must be learned or ground_truth, got {source!r}")
  from success_detectors.detector import DetectorConfig, SuccessDetector
  path = os.path.join(run_dir, "detector")
  if os.path.exists(path):
    return SuccessDetector.load(path)
  from success_detectors import examples_from_sim
  from success_detectors.examples import ExampleSet
  n = int(config.train.detector_episodes_per_task)
  log(f"training the success detector from {n} simulated episodes per task")
  rollouts = examples_from_sim.collect_rollouts(
      env, n, registry.names, seed=config.seed,
      midway_states=int(config.train.get("detector_midway_states", 0)))
  sets = []
  for task in registry.names:
    pos, neg = examples_from_sim.select_examples(rollouts, task, seed=config.seed)
    idx = np.concatenate([pos, neg])
    sets.append(ExampleSet(rollouts.take(idx).observations,
                           np.full(len(idx), registry.slot(task)),
                           np.arange(len(idx)) < len(pos)))
  dcfg = DetectorConfig.from_dict(config.detector)
  detector = SuccessDetector.create(env.spec(), registry.max_tasks, dcfg)
  detector.train(ExampleSet.concat(sets), {t.slot: t.name for t in registry.active()})
  detector.save(path)
  q = detector.quality()
  worst = min(min(v.get("precision", 1.0), v.get("recall", 1.0)) for v in q.values())
  log(f"detector trained: worst held-out precision/recall {worst:.3f}")
  return detector


def make_state_labeller(config: ConfigDict, env, registry: TaskRegistry, run_dir: str):
  """Labels single states for the learner's terminate term (`learner.state_label_weight`;
  None when it is 0): observation dict [B, ...] -> success probabilities [B, max_tasks].

  `ground_truth`: the env judges the states (`judge_states`: tabletop state observations);
  `learned`: the run's success detector (run_dir/detector, trained by `make_labeller`)
  applied to each state as to a final observation, as 0/1 at `train.state_label_confidence`
  where that is set. Each distinct state is labelled once (`success_detectors.state_labels`).
  """
  if not float(config.learner.get("state_label_weight", 0.0)):
    return None
  from success_detectors.state_labels import CachedStateLabels, confident
  if config.train.labels == "learned":
    from success_detectors.detector import SuccessDetector
    predict = SuccessDetector.load(os.path.join(run_dir, "detector")).predict
    return CachedStateLabels(confident(predict, config.train.get("state_label_confidence", 0)))
  if not hasattr(env, "judge_states") or config.env.observation != "state":
    raise ConfigError("learner.state_label_weight with train.labels=ground_truth needs an env "
                      "that judges state observations (tabletop, env.observation=state)")
  slots = [registry.slot(t) for t in env.task_names()]

  def ground_truth(observation):
    out = np.zeros((len(observation["state"]), registry.max_tasks), np.float32)
    out[:, slots] = env.judge_states(observation)
    return out
  return CachedStateLabels(ground_truth)


def state_labeller_for_run(config: ConfigDict, registry: TaskRegistry | None, run_dir: str):
  """`make_state_labeller` for a run's learner (registry None: the run's saved one)."""
  if not float(config.learner.get("state_label_weight", 0.0)):
    return None
  from mtopt import envs
  return make_state_labeller(config, envs.make(config.env), registry or TaskRegistry.load(run_dir),
                             run_dir)


def actor_kwargs(config: ConfigDict, registry: TaskRegistry, policy, tasks=None,
                 seed_offset: int = 0, **knobs) -> dict:
  """RobotActor arguments; `tasks` (default: all registered) are the ones it attempts."""
  a = config.actors
  tasks = list(tasks or registry.names)
  weights = []
  if a.scheduler == "weighted" and len(a.task_weights):
    # task_weights follow env.tasks (or the registry's first tasks); a task added since
    # (from examples) gets their mean.
    base = list(config.env.tasks) or registry.names
    if len(a.task_weights) != len(base):
      raise ConfigError(f"actors.task_weights: {len(a.task_weights)} weights for the "
                        f"{len(base)} tasks {base}")
    named = dict(zip(base, map(float, a.task_weights)))
    weights = [named.get(t, float(np.mean(list(named.values())))) for t in tasks]
  kwargs = dict(env_config=config.env.to_dict(), registry=registry.to_json(), policy=policy,
                scheduler=a.scheduler if weights or a.scheduler != "weighted" else "uniform",
                task_weights=weights, tasks=tasks, seed=config.seed + seed_offset)
  kwargs.update(knobs)
  return kwargs


def scripted_actor_kwargs(config: ConfigDict, registry: TaskRegistry, policy: str = "",
                          **overrides) -> dict:
  """RobotActor arguments for data collection: the config's `actors` policy and noise."""
  from mtopt import envs
  a = config.actors
  policy = policy or str(a.policy)
  if policy not in ("scripted", "random"):
    raise ConfigError(f"actors.policy={policy!r}: data collection supports scripted or random")
  with envs.make(config.env) as env:  # Scripted experts exist for the env's own tasks only.
    own = [t for t in registry.names if t in env.task_names()]
  kwargs = actor_kwargs(config, registry, policy, own, gaussian_std=float(a.gaussian_std),
                        epsilon=float(a.epsilon), sticky_prob=float(a.sticky_prob),
                        sticky_steps=int(a.sticky_steps),
                        early_terminate_prob=float(a.early_terminate_prob))
  kwargs.update(overrides)
  if kwargs["scheduler"] == "weighted" and len(kwargs["task_weights"]) != len(kwargs["tasks"]):
    raise ConfigError(f"actors.task_weights: {len(kwargs['task_weights'])} weights for "
                      f"{len(kwargs['tasks'])} tasks")
  return kwargs


def parameter_server(ray, options: dict | None = None):
  """The parameter server node (a Ray actor). Restarted by Ray (`options`, e.g.
  `placement.restart_options`), it comes back empty: readers keep the params they hold (a
  pull older than theirs returns none), calls in flight are retried on the new one, and the
  learner's next publication (every `learner.publish_every` steps; every evaluation
  publishes first) refills it."""
  return ray.remote(ParameterServer).options(**(options or {})).remote()


def pulled_cem_policy(ps, spec, max_tasks: int, lcfg, gaussian_std: float = 0.0,
                      epsilon: float = 0.0, seed: int = 0):
  """CEM over the newest published Q, as robot actors and evaluators run it."""
  from actors.parameter_client import PulledPolicy
  from learners.policy import CEMPolicy
  make = functools.partial(CEMPolicy, spec, max_tasks, lcfg.network, None, lcfg.cem,
                           gaussian_std=gaussian_std, epsilon=epsilon)
  return PulledPolicy(RemoteParameters(ps), make, spec.action, spec.terminate_dim, seed)


def online_fraction(config: ConfigDict) -> float:
  """`train.online_fraction` in `mixed` mode (0 otherwise): the on-policy replay's share."""
  t = config.train
  fraction = float(t.online_fraction) if t.mode == "mixed" else 0.0
  if not 0.0 <= fraction < 1.0:
    raise ConfigError(f"train.online_fraction must be in [0, 1), got {fraction}")
  return fraction


def make_replays(config: ConfigDict, spec, run_dir: str, labeller, slots):
  """(replay, online replay or None): `mixed` keeps on-policy episodes in their own replay
  under RUN/online, a fixed share of every batch."""
  from replay.reverb_replay import ReverbReplay
  fraction = online_fraction(config)
  replay = ReverbReplay.from_config(config, spec, run_dir=run_dir, labeller=labeller,
                                    slots=slots)
  online = (ReverbReplay.from_config(config, spec, run_dir=os.path.join(run_dir, "online"),
                                     labeller=labeller, slots=slots) if fraction else None)
  return replay, online


def batch_composition(config: ConfigDict) -> dict:
  """Sampler arguments: MT-Opt's rebalancing (equal task shares, `replay.success_fraction`)
  or, with `train.rebalance` off, the data's own proportions (the naive multi-task
  baseline): rows per (task, outcome) table follow its stored items, recomputed from the
  replay's live counts while training, not fixed when the sampler is built (an on-policy
  replay starts from a few episodes of the first, random policy)."""
  if config.train.rebalance:
    return {"success_fraction": float(config.replay.success_fraction)}
  return {"proportional": True}


def make_sampler(config: ConfigDict, batch_size: int, replay, online=None, offline=None):
  """The learner's batches: from `replay`, or `train.online_fraction` of each from `online`
  once it can be sampled. `offline` (a factory: batch size -> iterator of Batches, e.g. a
  dataset streamed from disk) takes the place of `replay`."""
  from replay.mixing import MixedBatches
  wait = float(config.train.wait_for_data_seconds)

  def sampler_of(r):
    return lambda size: r.sampler(size, wait_seconds=wait, **batch_composition(config))
  first = offline or sampler_of(replay)
  if online is None:
    return first(batch_size)
  min_size = int(config.replay.min_size)
  return MixedBatches(
      first, sampler_of(online), batch_size, float(config.train.online_fraction),
      online_ready=lambda: any(max(c.values()) >= min_size for c in online.counts().values()))
