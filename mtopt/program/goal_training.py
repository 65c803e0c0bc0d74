"""`train.mode = "goals"`: Actionable Models offline from any mtopt RLDS dataset.

    mtopt train --config configs/tabletop_goals.py     # collects a dataset if none is given
    mtopt eval --checkpoint RUN                         # goal-reaching success by goal kind

No rewards and no labels: every episode of the dataset is relabelled with its own later
states as goals and chained to its successors' (`replay.hindsight`); the goal-conditioned
Q-function is the task-conditioned learner over a goal input (`learners.goal_conditioned`).
The run directory is a normal one (config.json, checkpoints/, learner/ TensorBoard logs,
progress.json, results.json), so the same command resumes it.
"""

from __future__ import annotations

import os

import numpy as np

from mtopt import envs
from mtopt.config import ConfigDict, ConfigError
from mtopt.goals import GoalSpec

GOAL_KINDS = ("move", "lift", "two_cubes")


def goal_spec(config: ConfigDict) -> GoalSpec:
  if "goals" not in config:
    raise ConfigError("train.mode=goals needs a `goals` section (see configs/tabletop_goals.py)")
  return GoalSpec.from_config(config.goals)


def check(config: ConfigDict) -> list[str]:
  """The goal sections' problems, each naming its key (empty: fine)."""
  found = []
  try:
    goal_spec(config)
  except ConfigError as e:
    found.append(str(e))
  h = config.get("hindsight", {})
  for key in ("final_goal_prob", "chain_prob"):
    if not 0.0 <= float(h.get(key, 0.0)) <= 1.0:
      found.append(f"hindsight.{key} must be in [0, 1], got {h.get(key)}")
  unknown = sorted(set(h) - {"final_goal_prob", "chain_prob", "chain_return",
                             "chain_imitate"})
  if unknown:
    found.append(f"unknown key(s) in hindsight: {', '.join(unknown)}")
  kinds = list(config.eval.get("goal_kinds", GOAL_KINDS))
  bad = [k for k in kinds if k not in GOAL_KINDS]
  if bad or not kinds:
    found.append(f"eval.goal_kinds must name some of {GOAL_KINDS}, got {kinds}")
  if int(config.eval.get("goals_per_kind", 1)) < 1:
    found.append("eval.goals_per_kind must be >= 1")
  if config.env.name != "tabletop":
    found.append(f"train.mode=goals evaluates with tabletop's scripted goals; env.name is "
                 f"{config.env.name!r}")
  return found


def load_episodes(config: ConfigDict, data_dir: str, spec):
  """The dataset as `GoalEpisodes`."""
  from mtopt import rlds_format
  from replay.hindsight import GoalEpisodes
  return GoalEpisodes(rlds_format.read_episodes(data_dir), goal_spec(config), spec.terminate_dim)


def sampler(config: ConfigDict, data, max_tasks: int, seed: int, batch_size: int | None = None,
            chain_prob: float | None = None):
  from learners.config import LearnerConfig
  from learners.goal_conditioned import goal_slot
  from replay.hindsight import HindsightSampler
  h = config.get("hindsight", {})
  return HindsightSampler(
      data, batch_size or LearnerConfig.from_config(config).batch_size, goal_slot(max_tasks),
      final_goal_prob=float(h.get("final_goal_prob", 0.3)),
      chain_prob=float(h.get("chain_prob", 0.0) if chain_prob is None else chain_prob),
      chain_return=bool(h.get("chain_return", True)),
      chain_imitate=bool(h.get("chain_imitate", False)), seed=seed)


def goal_targets(config: ConfigDict, seed: int | None = None, per_kind: int | None = None
                 ) -> list[dict]:
  """The evaluation goals (`actors.goal_evaluation.make_goals`) of the config."""
  from actors.goal_evaluation import make_goals
  e = config.eval
  with envs.make(config.env, tasks=[], respawn_every=1, terminate_action=True) as env:
    return make_goals(env, goal_spec(config), list(e.get("goal_kinds", GOAL_KINDS)),
                      int(per_kind or e.get("goals_per_kind", 50)),
                      int(e.get("goal_seed", 20261203) if seed is None else seed))


def evaluate(config: ConfigDict, act_batch, targets: list[dict], max_tasks: int,
             env_seed: int = 0) -> dict:
  """Goal-reaching success of a task-slot policy's `act_batch` (CEM or BC): per goal, and
  the rate per kind."""
  from actors.goal_evaluation import evaluate_goals
  from learners.goal_conditioned import GoalActing
  goals = goal_spec(config)
  horizon = max(t["horizon"] for t in targets)
  reached = evaluate_goals(
      lambda: envs.make(config.env, tasks=[], respawn_every=1, max_episode_steps=horizon,
                        seed=env_seed),
      GoalActing(act_batch, goals, max_tasks), goals, targets)
  per_kind = {}
  for kind in dict.fromkeys(t["kind"] for t in targets):
    hits = reached[[t["kind"] == kind for t in targets]]
    per_kind[kind] = {"rate": float(hits.mean()), "reached": int(hits.sum()),
                      "goals": int(len(hits))}
  return {"reached": reached.tolist(), "per_kind": per_kind,
          "mean": float(np.mean([v["rate"] for v in per_kind.values()]))}


def make_learner(config: ConfigDict, spec, max_tasks: int, batches, run_dir: str | None = None,
                 seed: int = 0, init_params=None):
  """The goal-conditioned QT-Opt learner (`Learner` over `goal_env_spec`)."""
  from learners.config import LearnerConfig
  from learners.goal_conditioned import goal_env_spec
  from learners.learner import Learner
  return Learner(goal_env_spec(spec, goal_spec(config)), max_tasks,
                 LearnerConfig.from_config(config), batches, run_dir=run_dir, seed=seed,
                 init_params=init_params)


def cem_act(config: ConfigDict, spec, max_tasks: int, params, seed: int = 0):
  """CEM over Q(s, a, g) with `params`: a task-slot `act_batch`."""
  from learners.config import LearnerConfig
  from learners.goal_conditioned import goal_env_spec
  from learners.policy import CEMPolicy
  lcfg = LearnerConfig.from_config(config)
  return CEMPolicy(goal_env_spec(spec, goal_spec(config)), max_tasks, lcfg.network, params,
                   lcfg.cem, seed=seed).act_batch


def train(config: ConfigDict, log=print) -> dict:
  """Trains Q(s, a, g) for `learner.num_steps` from the run's dataset, then evaluates it on
  the config's goals; writes results.json. Resumes from the run's newest checkpoint."""
  from mtopt.program import offline_data
  from mtopt.durable_files import write_json
  from mtopt.program.run_dir import load_progress, open_run_dir, save_progress
  from mtopt.tasks import TaskRegistry
  with envs.make(config.env) as env:
    spec, names = env.spec(), list(config.env.tasks) or env.task_names()
  run_dir = open_run_dir(config)
  registry = TaskRegistry.load_or_create(run_dir, int(config.max_tasks), names)
  data_dir = offline_data.offline_dataset(config, None, registry, run_dir, log)
  data = load_episodes(config, data_dir, spec)
  log(f"goal-conditioned training on {data.num_episodes} episodes ({len(data.rows)} "
      f"transitions; {data.chained_fraction():.0%} have a successor to chain goals to)")
  num_steps = int(config.learner.num_steps)
  with make_learner(config, spec, registry.max_tasks,
                    sampler(config, data, registry.max_tasks, int(config.seed)),
                    run_dir=run_dir, seed=int(config.seed)) as learner:
    remaining = num_steps - learner.steps
    if remaining > 0:
      log(f"training from step {learner.steps} to {num_steps}")
      learner.run(remaining)
      learner.save()
    step, params = learner.steps, learner.get_params()
  progress = load_progress(run_dir)
  progress["step"] = step
  save_progress(run_dir, progress)
  result = evaluate(config, cem_act(config, spec, registry.max_tasks, params, int(config.seed)),
                    goal_targets(config), registry.max_tasks)
  result["step"] = step
  write_json(os.path.join(run_dir, "results.json"), result, indent=1)
  log(f"goal reaching at step {step}: mean {result['mean']:.2f}; " + ", ".join(
      f"{k} {v['rate']:.2f}" for k, v in result["per_kind"].items()))
  return result


def evaluate_checkpoint(run_dir: str, goals_per_kind: int | None = None,
                        step: int | None = None) -> dict:
  """`mtopt eval` of a goals run: goal-reaching success of its checkpoint, by kind."""
  import jax
  from learners import learning, networks
  from learners.checkpointing import Checkpointer
  from learners.config import LearnerConfig
  from learners.goal_conditioned import goal_env_spec
  from mtopt.program.run_dir import load_run_config
  from mtopt.tasks import TaskRegistry
  config = load_run_config(run_dir)
  registry = TaskRegistry.load(run_dir)
  spec = envs.make(config.env).spec()
  lcfg = LearnerConfig.from_config(config)
  gspec = goal_env_spec(spec, goal_spec(config))
  network = networks.make_q_network(gspec, registry.max_tasks, lcfg.network)
  like = jax.eval_shape(lambda: learning.init_training_state(network, gspec, lcfg,
                                                             jax.random.PRNGKey(0)))
  ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"))
  try:
    if ckpt.latest_step() is None:
      raise ConfigError(f"{run_dir}: no checkpoint to evaluate")
    state = ckpt.restore(like, step)
  finally:
    ckpt.close()
  params = jax.device_get(state.params)
  result = evaluate(config, cem_act(config, spec, registry.max_tasks, params),
                    goal_targets(config, per_kind=goals_per_kind), registry.max_tasks)
  result["step"] = int(state.step)
  return result
