"""Offline multi-task learning on tabletop: mtopt's Q-learning beside the baselines a user
would try, on the same data, batches, gradient budget and evaluation.

    python -m experiments.offline_tabletop [--quick] [--dev] [--seeds 0 1 2] [-- OVERRIDES]

The protocol, fixed before any result was looked at (see `experiments/protocol.py`):

- Data: `mtopt collect` with configs/tabletop_state.py's scripted noisy experts, 1200
  episodes over its six tasks (reach_* and lift_*), collection seed 0, by one robot actor
  (the same seed gives the same data; the report at e6ec4be collected with two, the one
  at 9379ce8 with one):
  `default`: the config's noise (epsilon 0.3; ~68% of episodes succeed at their task);
  `hard`: epsilon 0.7 (~24% succeed). Not in the default table, for how success falls
  with the data's noise between the two (`--blocks eps50 eps60`): `eps50`, `eps60`:
  epsilon 0.5 and 0.6 (tuning data at 0.6: 33% succeed, 25 lift successes per cube,
  against 9-12 at 0.7).
  Labels: the simulator's ground truth, and on `default` also the success detector's
  (`learned`: trained from simulated examples, as `mtopt train` does).
- Methods, each 6000 gradient steps at batch 256 from the same Reverb replay:
  `mtopt`: the QT-Opt learner with the config's settings (rebalanced batches, all-task
  sharing; ablations: `mtopt_negatives` adds 8 artificial negatives per row,
  `mtopt_no_mc_bound` drops the Monte-Carlo lower bound, `mtopt_no_state_labels` drops
  the state-label term (the config trains Q of terminating toward every sampled state's
  label, from its own head, and lets CEM score terminating; the states are labelled as the
  method's labels are: `ground_truth`: the simulator judges them; `learned`: the
  detector), `mtopt_unshared_terminations` trains the data's terminating rows into the
  terminate head only (the config trains the shared head there too), `mtopt_small_heads`
  gives the behaviour and terminate heads one layer of 128); `iql`: Implicit
  Q-Learning with its library defaults, on the same batches;
  `filtered_bc`: behaviour cloning of the rows of successful episodes (shared across
  tasks by label, as mtopt shares them); `bc`: behaviour cloning of every episode for the
  task it was collected for, in the data's own proportions.
- Acting variants (`--acting`): mtopt's trained parameters also act with other CEM
  settings (ACTING), on the same start states: rows `METHOD+NAME`, paired with METHOD's.
- Evaluation: greedy, 50 episodes per task from fixed start states (evaluation seed
  20261202) shared by every method; success is the simulator's ground truth at the end.
  Seeds 0, 1, 2 (the learner's initialisation and CEM noise; Reverb's sampling is not
  seedable). 95% intervals per task and for the mean, pooled over seeds.
- Tuning (`--dev`) uses other data (collection seed 1) and other start states (evaluation
  seed 7); the reported numbers never are.

Results: results/offline_tabletop.{json,md} (or *_dev / *_quick); each run's result is
kept under --work-dir, stamped, and reused only by an identical run (same commit, config,
data).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import time

import numpy as np

from experiments import protocol
from mtopt import envs
from mtopt.program import collection, nodes
from mtopt.config import load_config
from mtopt.tasks import TaskRegistry

ROOT = protocol.ROOT
CONFIG = os.path.join(ROOT, "configs", "tabletop_state.py")
METHODS = ("mtopt", "iql", "filtered_bc", "bc")
# mtopt with one setting changed: the ablations of its offline terms (learners/learning.py).
ABLATIONS = {"mtopt_negatives": ["learner.negative_actions=8"],
             "mtopt_no_mc_bound": ["learner.mc_lower_bound=False"],
             "mtopt_no_state_labels": ["learner.state_label_weight=0.0",
                                       "learner.network.terminate_sizes=()",
                                       "cem.score_terminate=False"],
             "mtopt_unshared_terminations": ["learner.shared_head_at_terminations=False"],
             # The learner-speed trade-off: one layer of 128 for the behaviour and terminate
             # heads instead of (256, 256) (benchmarks.learner --quick: 0.82 of the plain
             # update vs 0.58).
             "mtopt_small_heads": ["learner.network.behaviour_sizes=(128,)",
                                   "learner.network.terminate_sizes=(128,)"],
             # A constant step size. The tabletop default decays it along a cosine to a
             # tenth (adopted by a rule fixed before measuring, 0.733 -> 0.806 on the tuning
             # data: results/offline_tabletop_dev_cosine_lr.md).
             "mtopt_constant_lr": ["learner.final_learning_rate_fraction=1.0"],
             # CEM's search radius around the behaviour head's action, for the targets and
             # for acting: 0.2 of each dimension's half range, the tabletop default before
             # 0.1 was adopted from the tuning data (results/offline_tabletop_dev_prior.md).
             "mtopt_prior20": ["cem.prior_std=0.2"],
             # Learned labels: the terminate term's state labels as the detector's
             # probabilities, the default before 0/1 at 0.95 sure was adopted
             # (train.state_label_confidence; results/offline_tabletop_dev_state_confidence.md).
             "mtopt_soft_states": ["train.state_label_confidence=0.0"],
             # LayerNorm before each torso ReLU (learner.network.layer_norm).
             "mtopt_layer_norm": ["learner.network.layer_norm=True"],
             # Four behaviour-head actions for CEM to start from (multiple choice).
             "mtopt_modes4": ["learner.network.behaviour_modes=4"]}
# How the trained mtopt parameters act, beside the config's CEM (`--acting`): the same
# parameters, start states and episodes, so these rows pair with their method's. CEM's
# search radius around the behaviour head's action (`cem.prior_std`; tabletop: 0.1) and a
# stronger search (256 samples, 16 elites, 3 iterations instead of 64 / 6 / 2).
ACTING = {"act_prior20": {"prior_std": 0.2}, "act_prior10": {"prior_std": 0.1},
          "act_prior05": {"prior_std": 0.05},
          "act_strong": {"num_samples": 256, "num_elites": 16, "num_iterations": 3},
          # Acting switches the gripper where Q rates the other value higher by more than
          # the margin (`cem.switch_margin`; learners.learning.switch_discrete; tabletop
          # acts with 0.1, adopted on the tuning data: results/offline_tabletop_dev_switch.md).
          "act_switch05": {"switch_margin": 0.05}, "act_switch10": {"switch_margin": 0.10},
          "act_switch15": {"switch_margin": 0.15}, "act_no_switch": {"switch_margin": 1.0}}
DATASETS = {"default": [], "hard": ["actors.epsilon=0.7"], "eps50": ["actors.epsilon=0.5"],
            "eps60": ["actors.epsilon=0.6"]}
EPISODES = 1200
REPORT = {"collect_seed": 0, "eval_seed": 20261202}
DEV = {"collect_seed": 1, "eval_seed": 7}


def dataset(config, ray, registry, work_dir: str, name: str, collect_seed: int,
            episodes: int) -> str:
  """The named dataset, collected once into work_dir/data/NAME_seedS."""
  out = os.path.join(work_dir, "data", f"{name}_seed{collect_seed}_{episodes}")
  if not os.path.exists(os.path.join(out, "dataset_info.json")):
    print(f"collecting {episodes} episodes for {name!r}", flush=True)
    collection.collect_dataset(config, ray, registry, out, episodes,  # One actor: reproducible.
                               nodes.scripted_actor_kwargs(config, registry, "scripted"),
                               num_actors=1)
  return out


def labeller_dir(config, work_dir: str, block: str) -> str:
  """The block's run dir, where `nodes.make_labeller` keeps (and reuses) its detector: one per
  set of detector settings, so that a detector trained under others is never reused."""
  keys = {"detector": config.detector.to_dict(), "seed": config.seed,
          "train": {k: v for k, v in config.train.items() if k.startswith("detector_")}}
  h = hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()
  return os.path.join(work_dir, f"run_{block}_{h[:10]}")


def import_replays(config, spec, registry, labeller, data_dir: str):
  """The dataset in two replays: shared across tasks by label (mtopt, iql, filtered_bc)
  and each episode for its own task only (bc)."""
  from mtopt import rlds_format
  from replay.reverb_replay import ReverbReplay
  slots = [registry.slot(t) for t in registry.names]
  replays = {}
  for sharing in ("all", "none"):
    c = config.copy_and_resolve_references()
    c.replay.sharing = sharing
    replays[sharing] = ReverbReplay.from_config(c, spec, labeller=labeller, slots=slots)
  episodes = list(rlds_format.read_episodes(data_dir))
  labelled = replays["all"].prepare(episodes)  # Labels once for both.
  for r in replays.values():
    r.write_many([ep for ep, _ in labelled])
  return replays


def natural_sampler(replay, batch_size: int):
  """Batches in the data's own task and outcome proportions."""
  counts = replay.counts()
  shares = {k: c["success"] + c["failure"] for k, c in counts.items() if k in replay.slots}
  successes = sum(counts[k]["success"] for k in shares)
  return replay.sampler(batch_size, task_shares={k: float(v) for k, v in shares.items() if v},
                        success_fraction=successes / max(1, sum(shares.values())))


def train_and_act(method: str, config, spec, registry, replays, seed: int,
                  state_labeller=None, acting=()):
  """Trains `method` for the config's steps; returns ({"": act_batch, and for mtopt one
  per `acting` variant (ACTING)}, seconds)."""
  from learners.baselines import BaselineConfig, BaselineLearner
  from learners.config import LearnerConfig
  from learners.learner import Learner
  from learners.policy import CEMPolicy
  lcfg = LearnerConfig.from_config(config)
  bs = lcfg.batch_size
  if method == "mtopt":
    sampler = replays["all"].sampler(bs)
  elif method == "iql":
    sampler = replays["all"].sampler(bs)
  elif method == "filtered_bc":
    sampler = replays["all"].sampler(bs, success_fraction=1.0)
  elif method == "bc":
    sampler = natural_sampler(replays["none"], bs)
  else:
    raise ValueError(f"unknown method {method!r}; known: {METHODS}")
  t0 = time.time()
  try:
    if method == "mtopt":
      learner = Learner(spec, registry.max_tasks, lcfg, sampler, seed=seed,
                        state_labeller=state_labeller)
      learner.run(lcfg.num_steps)
      params = learner.get_params()
      act = {name: CEMPolicy(spec, registry.max_tasks, lcfg.network, params,
                             dataclasses.replace(lcfg.cem, **ACTING.get(name, {})),
                             seed=seed).act_batch
             for name in ["", *acting]}
    else:
      bcfg = BaselineConfig(method=method, batch_size=bs)
      learner = BaselineLearner(spec, registry.max_tasks, bcfg, sampler, seed=seed,
                                discrete_dims=tuple(config.cem.discrete_dims))
      learner.run(lcfg.num_steps)
      act = {"": learner.act_batch}
  finally:
    sampler.close()
  return act, time.time() - t0


def markdown(results: dict, meta: dict) -> str:
  lines = ["# Offline multi-task learning on tabletop", "",
           f"{meta['episodes_per_task']} paired episodes per task and seed, seeds "
           f"{meta['seeds']}, {meta['steps']} gradient steps at batch {meta['batch_size']} for "
           f"every method; 95% intervals pooled over seeds. Commit {meta['commit'][:10]}"
           f"{' (dirty tree)' if meta['dirty'] else ''}.", ""]
  for name, block in results.items():
    tasks = list(next(iter(block["methods"].values()))["per_task"])
    lines += [f"## {name} (data success rate {block['data_success']:.2f}, labels "
              f"{block['labels']})", "",
              "| method | mean [95% CI] | seed means | " + " | ".join(tasks) + " |",
              "|---|---|---|" + "---|" * len(tasks)]
    for method, r in block["methods"].items():
      lines.append(f"| {method} | {r['mean']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] | "
                   + ", ".join(f"{v:.2f}" for v in r["seed_means"].values()) + " | "
                   + " | ".join(f"{r['per_task'][t]['rate']:.2f}" for t in tasks) + " |")
    lines.append("")
  return "\n".join(lines)


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true", help="tiny budget: a smoke run of the path")
  p.add_argument("--dev", action="store_true", help="tuning data and start states")
  p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  p.add_argument("--methods", nargs="+", default=list(METHODS),
                 choices=[*METHODS, *ABLATIONS])
  p.add_argument("--blocks", nargs="+", default=["default", "hard", "default_learned"],
                 help="dataset blocks: default, hard, eps50, eps60 (and NAME_learned for the "
                      "detector's labels); BLOCK:m1,m2 runs only "
                      "those of --methods there")
  p.add_argument("--acting", nargs="+", default=[], choices=list(ACTING),
                 help="also evaluate mtopt's trained parameters with these CEM settings "
                      "(rows METHOD+NAME, paired with METHOD's)")
  p.add_argument("--work-dir", default=os.path.join(ROOT, "runs", "offline_tabletop"))
  p.add_argument("--out", default=os.path.join(ROOT, "results"))
  p.add_argument("overrides", nargs="*", help="config overrides for every method, key=value")
  args = p.parse_args(argv)
  blocks = []  # (block, dataset name, labels, the methods it runs), checked before any work.
  for block_arg in args.blocks:
    block, _, only = block_arg.partition(":")
    name, _, labels = block.partition("_")
    if name not in DATASETS or labels not in ("", "learned"):
      p.error(f"unknown block {block_arg!r}; known: {', '.join(DATASETS)}, each optionally "
              "NAME_learned")
    blocks.append((block, name, labels or "ground_truth",
                   [m for m in args.methods if not only or m in only.split(",")]))
  which = DEV if args.dev else REPORT
  episodes, per_task = EPISODES, protocol.MIN_EPISODES_PER_TASK
  overrides = list(args.overrides)
  if args.quick:
    episodes, per_task, args.seeds = 120, 4, args.seeds[:1]
    overrides += ["learner.num_steps=40", "replay.min_size=1", "learner.batch_size=64"]
  suffix = "_quick" if args.quick else "_dev" if args.dev else ""
  work_dir = args.work_dir + suffix
  os.makedirs(work_dir, exist_ok=True)
  results, stamps = {}, {}
  ray = None
  for block, name, labels, methods in blocks:
    # Offline: one behaviour action (the tabletop default's 4 is for runs that collect;
    # configs/tabletop_state.py).
    settings = ["learner.network.behaviour_modes=1", *overrides, *DATASETS[name],
                f"train.labels={labels}",
                f"seed={which['collect_seed']}"]
    settings.append(f"run_dir={labeller_dir(load_config(CONFIG, settings), work_dir, block)}")
    config = load_config(CONFIG, settings)
    env = envs.make(config.env)
    spec = env.spec()
    registry = TaskRegistry.from_names(int(config.max_tasks), list(config.env.tasks))
    ray = ray or nodes.init_ray(config)
    data_dir = dataset(config, ray, registry, work_dir, name, which["collect_seed"], episodes)
    sha = protocol.data_sha(data_dir)
    os.makedirs(config.run_dir, exist_ok=True)
    labeller = nodes.make_labeller(config, env, registry, config.run_dir)
    replays = None
    block_results, data_success = {}, None
    for method in methods:
      mconfig = load_config(CONFIG, [*settings, *ABLATIONS.get(method, [])])
      acting = args.acting if method.startswith("mtopt") else []
      per_seed, per_seed_acting = {}, {name: {} for name in acting}
      for seed in args.seeds:
        path = os.path.join(work_dir, block, method, f"seed{seed}.json")
        want = protocol.stamp(mconfig.to_dict(), {name: sha})
        want["config"].update(method=method, seed=seed, eval_seed=which["eval_seed"],
                              episodes_per_task=per_task)
        if acting:  # Stamped only when used, so that earlier results stay reusable.
          want["config"]["acting"] = {a: ACTING[a] for a in acting}
        saved = protocol.load_if_same(path, want)
        if saved is None:
          if replays is None:
            replays = import_replays(config, spec, registry, labeller, data_dir)
          acts, seconds = train_and_act(
              method.split("_")[0] if method in ABLATIONS else method, mconfig, spec,
              registry, replays, seed,
              nodes.make_state_labeller(mconfig, env, registry, config.run_dir), acting)
          success = {}
          for name, act in acts.items():
            evals = _evaluate(mconfig, act, registry, per_task, which["eval_seed"], seed)
            success[name] = {t: v["success"].tolist() for t, v in evals.items()}
            rate = np.mean([np.mean(v) for v in success[name].values()])
            print(f"{block} {method}{'+' + name if name else ''} seed {seed}: mean "
                  f"{rate:.3f} ({seconds:.0f} s training)", flush=True)
          saved = {"success": success.pop(""), "acting": success, "train_seconds": seconds,
                   "meta": want}
          os.makedirs(os.path.dirname(path), exist_ok=True)
          with open(path, "w") as f:
            json.dump(saved, f)
        per_seed[seed] = saved["success"]
        for name in acting:
          per_seed_acting[name][seed] = saved["acting"][name]
        stamps[block] = want
      block_results[method] = protocol.summarize(per_seed)
      for name, runs in per_seed_acting.items():
        block_results[f"{method}+{name}"] = protocol.summarize(runs)
    if replays is not None:
      counts = replays["none"].counts()
      data_success = (sum(c["success"] for c in counts.values())
                      / max(1, sum(c["success"] + c["failure"] for c in counts.values())))
      for r in replays.values():
        r.close()
    results[block] = {"methods": block_results, "labels": labels,
                      "data_success": data_success if data_success is not None
                      else _data_success(data_dir)}
  first = next(iter(results.values()))
  any_stamp = next(iter(stamps.values()))
  lcfg = any_stamp["config"]["learner"]
  meta = {"commit": any_stamp["commit"], "dirty": any_stamp["dirty"],
          "config": {b: s["config"] for b, s in stamps.items()},
          "data_sha": {b: s["data_sha"] for b, s in stamps.items()},
          "seeds": args.seeds, "episodes_per_task": per_task, "steps": lcfg["num_steps"],
          "batch_size": lcfg["batch_size"], "eval_seed": which["eval_seed"],
          "collect_seed": which["collect_seed"], "overrides": overrides}
  out = {"methods": first["methods"], "blocks": results, "meta": meta}
  os.makedirs(args.out, exist_ok=True)
  base = os.path.join(args.out, "offline_tabletop" + suffix)
  with open(base + ".json", "w") as f:
    json.dump(out, f, indent=1)
  md = markdown(results, meta)
  with open(base + ".md", "w") as f:
    f.write(md)
  print(md)
  print(json.dumps({b: {m: round(r["mean"], 3) for m, r in v["methods"].items()}
                    for b, v in results.items()}))
  return out


def _evaluate(config, act, registry, per_task: int, eval_seed: int, seed: int) -> dict:
  from actors.evaluator import evaluate_in_process
  tasks = list(config.env.tasks)
  return evaluate_in_process(lambda: envs.make(config.env, seed=[seed, 1]), act, tasks,
                             [registry.slot(t) for t in tasks], per_task, eval_seed)


def _data_success(data_dir: str) -> float:
  from mtopt import rlds_format
  own = [bool(ep.success[ep.task_id]) for ep in rlds_format.read_episodes(data_dir)]
  return float(np.mean(own))


if __name__ == "__main__":
  main()
