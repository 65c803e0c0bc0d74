"""The MT-Opt comparison on tabletop: does sharing + rebalancing let rare tasks learn?

    python -m experiments.mtopt_table [--quick] [--seeds 0 1 2] [--blocks mixed/total ...]
                                      [--methods ...]

The protocol, fixed before any result of it was looked at (see `experiments/protocol.py`):

- Tasks (9). Frequent: reach_red, reach_green, reach_blue, lift_red, lift_green, lift_blue
  (the skills of the default run). Rare: place_red_in_bin, place_green_on_plate,
  push_blue_to_red: one of each other kind, on different objects. Each needs more than a
  frequent skill: placing is a lift, a carry and a release onto a target; pushing moves a
  cube along the table, which no frequent task does. And no frequent success implies a
  rare one: at the end of the scripted experts' episodes (20 per task) no reach or lift
  success satisfies a rare task's predicate, nor does any state at reset (300 scenes) or
  after a random policy (100 episodes) (`tests/test_mtopt_table.py` checks the experts'
  ends and the start states on 5 episodes per frequent task). The
  reverse holds for lift: a held, lifted cube also satisfies reach, so reach and lift are
  both frequent.
- Data, per seed: 1200 offline episodes from the config's scripted noisy experts
  (epsilon 0.3, early terminate 0.03 per step), the tasks drawn with weights 3% for each
  rare task and the rest split over the frequent ones (~15% each): ~36 episodes per rare
  task. At this noise the experts succeed at place_red_in_bin 3%, place_green_on_plate
  13%, push_blue_to_red 7% (30 episodes each; lift 73%), so the data holds a few rare
  successes. Labels: the success detector (`learned`), trained per seed from simulated
  examples; every method of a seed uses the same data, detector and task slots.
- Methods: `single_task` (one network per task, sharing none, rebalanced, its actor
  collects only its task); `naive_multitask` (one network, sharing none, batches in the
  data's own proportions, from the replays' live counts); `share_only` (sharing all, own
  proportions); `rebalance_only` (sharing none, rebalanced); `mtopt` (sharing all,
  rebalanced: MT-Opt); `conservative` (`replay.sharing=conservative`, rebalanced: other
  tasks' episodes are shared only as successes, by label; not CDS's Q-based rule).
- Gradient budget, `--blocks MODE/BUDGET`: `total` (primary) gives a multi-task network as
  many steps as all single-task networks together (6000 per task: 54000); `per_network`
  (secondary) gives every network 6000. Batches of 256 everywhere.
- On-policy budget (`mixed` mode; `train.episodes_per_step`): the same for every method
  and budget: 0.05 episodes per task-step, i.e. 2700 per seed, tied to learner steps, so
  neither wall time nor machine load changes it. A multi-task run collects them with the
  weighted scheduler's shares; single-task network k collects its task's share (w_k x
  2700), so every task gets as many on-policy episodes of its own in every method.
- Modes: `mixed` (offline data plus the on-policy replay, half of each batch from it once
  it has data) and `offline` (the dataset alone). Primary: mixed/total.
- Evaluation: greedy CEM on the final parameters, 50 episodes per task from fixed start
  states (evaluation seed 20261203: episode j of a task starts from the same scene for
  every method, budget and mode), success by the simulator's ground truth. Seeds 0, 1, 2
  (data, detector, learner initialisation; Reverb's sampling is not seedable). 95%
  intervals (Wilson per task; normal for the rare and frequent means, from per-task
  binomial variances), episodes pooled over seeds.
- Recorded beside each result: the on-policy episodes each network collected.
- Provenance: each (block, method, seed) result is stamped with the commit, the resolved
  configs of its runs and the sha256 of the seed's dataset and detector, and reused only
  by an identical run from a clean tree; a run that is redone starts from an empty run
  directory.

Results: results/mtopt_table.{json,md}: `methods` holds the primary block, `blocks` every
block run; `--quick` (one seed, tiny budgets, ground-truth labels, 4 episodes per task)
writes under runs/mtopt_table_quick/ only. The paper's reference (MT-Opt, real robots):
rare tasks 50% (MT-Opt) vs 18% (naive multi-task) vs 1% (single task); frequent 89% vs 88%.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import time

import numpy as np

from experiments import protocol
from mtopt import envs, launch
from mtopt.config import ConfigError, load_config

ROOT = protocol.ROOT
CONFIG = os.path.join(ROOT, "configs", "tabletop_state.py")
FREQUENT = ["reach_red", "reach_green", "reach_blue", "lift_red", "lift_green", "lift_blue"]
RARE = ["place_red_in_bin", "place_green_on_plate", "push_blue_to_red"]
TASKS = FREQUENT + RARE
RARE_WEIGHT = 0.03
WEIGHTS = [(1 - RARE_WEIGHT * len(RARE)) / len(FREQUENT)] * len(FREQUENT) + \
    [RARE_WEIGHT] * len(RARE)
METHODS = {
    "single_task": ["replay.sharing=none", "train.rebalance=True"],
    "naive_multitask": ["replay.sharing=none", "train.rebalance=False"],
    "share_only": ["replay.sharing=all", "train.rebalance=False"],
    "rebalance_only": ["replay.sharing=none", "train.rebalance=True"],
    "mtopt": ["replay.sharing=all", "train.rebalance=True"],
    "conservative": ["replay.sharing=conservative", "train.rebalance=True"],
}
MODES = ("mixed", "offline")
BUDGETS = ("total", "per_network")  # Primary first.
PRIMARY = "mixed/total"


@dataclasses.dataclass(frozen=True)
class Settings:
  episodes: int = 1200  # Offline episodes per seed.
  steps_per_task: int = 6000  # A single-task network's steps; see BUDGETS.
  on_policy_per_task_step: float = 0.05  # On-policy episodes = this x steps_per_task x tasks.
  episodes_per_task: int = protocol.MIN_EPISODES_PER_TASK  # Evaluation.
  eval_seed: int = 20261203
  labels: str = "learned"
  extra: tuple = ()  # Overrides for every run.

  @property
  def on_policy_episodes(self) -> float:
    return self.on_policy_per_task_step * self.steps_per_task * len(TASKS)


QUICK = Settings(episodes=120, steps_per_task=24, on_policy_per_task_step=0.1,
                 episodes_per_task=4, labels="ground_truth",
                 extra=("learner.batch_size=64", "learner.publish_every=8",
                        "train.detector_episodes_per_task=10"))


def common_overrides(s: Settings, seed: int, seed_dir: str) -> list[str]:
  return [f"seed={seed}", f"env.tasks={TASKS!r}", "actors.scheduler=weighted",
          f"actors.task_weights={WEIGHTS!r}", f"train.offline_episodes={s.episodes}",
          f"train.labels={s.labels}", "actors.num_actors=1", "replay.min_size=1",
          "learner.checkpoint_every=0", "eval.episodes_per_task=1", "eval.num_actors=1",
          f"train.dataset_dir={os.path.join(seed_dir, 'data', 'offline')}", *s.extra]


def network_runs(method: str, mode: str, budget: str, s: Settings) -> list[tuple[list, list]]:
  """(tasks it is evaluated on, overrides) of each network `method` trains in a block."""
  def run(tasks, steps, on_policy):
    rate = on_policy / steps if mode == "mixed" else 0.0
    return [f"train.mode={mode}", f"learner.num_steps={steps}", f"train.eval_every={steps}",
            f"train.episodes_per_step={rate!r}", *METHODS[method]] + (
                [f"train.tasks={tasks!r}"] if len(tasks) == 1 else [])
  if method == "single_task":
    return [([t], run([t], s.steps_per_task, s.on_policy_episodes * w))
            for t, w in zip(TASKS, WEIGHTS)]
  steps = s.steps_per_task * (len(TASKS) if budget == "total" else 1)
  return [(TASKS, run(TASKS, steps, s.on_policy_episodes))]


def prepare_seed(s: Settings, seed: int, seed_dir: str) -> dict[str, str]:
  """The seed's dataset, detector and task slots (made once); returns their hashes."""
  common = common_overrides(s, seed, seed_dir)
  config = load_config(CONFIG, [*common, f"run_dir={seed_dir}", "train.dataset_dir=",
                                "train.mode=mixed"])
  try:
    launch.prepare(config, log=print)
  except ConfigError as e:  # Data and detector made with other settings: never mixed in.
    raise ConfigError(f"{seed_dir} holds data made with other settings; remove it or use "
                      f"another --work-dir ({e})") from None
  data = {"offline": protocol.data_sha(os.path.join(seed_dir, "data", "offline"))}
  if os.path.isdir(os.path.join(seed_dir, "detector")):
    data["detector"] = protocol.data_sha(os.path.join(seed_dir, "detector"))
  return data


def train_and_evaluate(run_dir: str, seed_dir: str, config, tasks, s: Settings,
                       seed: int) -> tuple[dict[str, list[bool]], int]:
  """Trains one network from an empty run directory; (the paired evaluation of its final
  parameters on `tasks`, the on-policy episodes it collected)."""
  from mtopt.program.run_dir import load_progress
  from actors.evaluator import evaluate_in_process
  from learners.policy import CEMPolicy
  from mtopt.serving.policy_source import RunPolicy
  if os.path.exists(run_dir):
    shutil.rmtree(run_dir)  # Never resume a run made by other code or settings.
  os.makedirs(run_dir)
  for shared in ("tasks.json", "detector"):  # Same slots and labels for every method.
    src = os.path.join(seed_dir, shared)
    if os.path.exists(src):
      (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, os.path.join(run_dir, shared))
  launch.train(config, log=lambda *a, **k: None)
  run = RunPolicy(run_dir)
  _, params = run.load_params()
  policy = CEMPolicy(run.spec, run.registry.max_tasks, run.lcfg.network, params,
                     run.lcfg.cem, seed=seed)
  out = evaluate_in_process(lambda: envs.make(config.env, seed=[seed, 1]), policy.act_batch,
                            tasks, [run.registry.slot(t) for t in tasks], s.episodes_per_task,
                            s.eval_seed)
  return ({t: v["success"].tolist() for t, v in out.items()},
          int(load_progress(run_dir)["collected_episodes"]))


def run_block_method(block: str, method: str, seed: int, s: Settings, work_dir: str,
                     data: dict) -> dict:
  """One method's evaluation in one block and seed: stored if identical, else made."""
  mode, budget = block.split("/")
  seed_dir = os.path.join(work_dir, f"seed{seed}")
  # Single-task networks are the same in both budgets: one result serves both.
  key = method if method == "single_task" else f"{method}@{budget}"
  path = os.path.join(work_dir, mode, key, f"seed{seed}.json")
  runs = network_runs(method, mode, budget, s)
  common = common_overrides(s, seed, seed_dir)
  configs, dirs = [], []
  for tasks, overrides in runs:
    d = os.path.join(work_dir, mode, key, f"seed{seed}_run",
                     tasks[0] if len(tasks) == 1 else "all")
    configs.append(load_config(CONFIG, [*common, f"run_dir={d}", *overrides]))
    dirs.append(d)
  want = protocol.stamp({"runs": [c.to_dict() for c in configs]}, data)
  want["config"].update(method=method, mode=mode, budget=budget, seed=seed,
                        eval_seed=s.eval_seed, episodes_per_task=s.episodes_per_task)
  saved = protocol.load_if_same(path, want)
  if saved is not None:
    return saved
  t0 = time.time()
  success, collected = {}, {}
  for (tasks, _), config, d in zip(runs, configs, dirs):
    rates, collected[os.path.basename(d)] = train_and_evaluate(d, seed_dir, config, tasks, s,
                                                                seed)
    success.update(rates)
  saved = {"success": {t: success[t] for t in TASKS}, "on_policy_episodes": collected,
           "train_seconds": time.time() - t0, "meta": want}
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(saved, f)
  print(f"{block} {method} seed {seed}: rare {np.mean([np.mean(success[t]) for t in RARE]):.2f}"
        f" frequent {np.mean([np.mean(success[t]) for t in FREQUENT]):.2f} "
        f"({time.time() - t0:.0f} s)", flush=True)
  return saved


def summarize(per_seed: dict[int, dict[str, list[bool]]]) -> dict:
  """The issue's row: rare / frequent means and 95% intervals, per-task rates, seeds."""
  rare = protocol.summarize({k: {t: v[t] for t in RARE} for k, v in per_seed.items()})
  freq = protocol.summarize({k: {t: v[t] for t in FREQUENT} for k, v in per_seed.items()})
  both = protocol.summarize(per_seed)
  return {"rare_mean": rare["mean"], "rare_ci": rare["ci"], "frequent_mean": freq["mean"],
          "frequent_ci": freq["ci"], "per_task": both["per_task"], "seeds": sorted(per_seed),
          "seed_means": {"rare": rare["seed_means"], "frequent": freq["seed_means"]}}


def markdown(blocks: dict, meta: dict) -> str:
  lines = [f"# MT-Opt comparison on tabletop{' (quick smoke run)' if meta['quick'] else ''}",
           "", f"Rare: {', '.join(RARE)}; frequent: {', '.join(FREQUENT)}. "
           f"{meta['episodes_per_task']} paired evaluation episodes per task and seed, seeds "
           f"{meta['seeds']}; 95% intervals pooled over seeds. Commit {meta['commit'][:10]}"
           f"{' (dirty tree)' if meta['dirty'] else ''}. Primary block: {PRIMARY}.", ""]
  for block, methods in blocks.items():
    lines += [f"## {block}", "", "| method | rare [95% CI] | frequent [95% CI] | "
              + " | ".join(TASKS) + " |", "|---|---|---|" + "---|" * len(TASKS)]
    for m, r in methods.items():
      lines.append(f"| {m} | {r['rare_mean']:.2f} [{r['rare_ci'][0]:.2f}, {r['rare_ci'][1]:.2f}]"
                   f" | {r['frequent_mean']:.2f} [{r['frequent_ci'][0]:.2f}, "
                   f"{r['frequent_ci'][1]:.2f}] | "
                   + " | ".join(f"{r['per_task'][t]['rate']:.2f}" for t in TASKS) + " |")
    lines.append("")
  return "\n".join(lines)


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true", help="one seed, tiny budgets: a smoke run")
  p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
  p.add_argument("--blocks", nargs="+", choices=[f"{m}/{b}" for m in MODES for b in BUDGETS],
                 help="MODE/BUDGET blocks (default: all four; with --quick the primary)")
  p.add_argument("--work-dir", default=os.path.join(ROOT, "runs", "mtopt_table"))
  p.add_argument("--out", default=os.path.join(ROOT, "results"))
  args = p.parse_args(argv)
  s = Settings()
  if args.quick:
    s, args.seeds = QUICK, args.seeds[:1]
    args.work_dir += "_quick"
    args.out = args.work_dir
  args.blocks = args.blocks or ([PRIMARY] if args.quick else
                                [f"{m}/{b}" for m in MODES for b in BUDGETS])
  start = time.time()
  blocks: dict[str, dict] = {b: {} for b in args.blocks}
  stamps, data_sha = {}, {}
  for seed in args.seeds:
    data_sha[seed] = prepare_seed(s, seed, os.path.join(args.work_dir, f"seed{seed}"))
  for block in args.blocks:
    for method in args.methods:
      per_seed = {}
      for seed in args.seeds:
        saved = run_block_method(block, method, seed, s, args.work_dir, data_sha[seed])
        per_seed[seed] = saved["success"]
        stamps[(block, method)] = saved["meta"]
      blocks[block][method] = summarize(per_seed)
  first = next(iter(stamps.values()))
  if any(v["commit"] != first["commit"] or v["dirty"] for v in stamps.values()):
    print("warning: results from more than one commit or a dirty tree", flush=True)
  meta = {"commit": first["commit"], "dirty": any(v["dirty"] for v in stamps.values()),
          "config": {f"{b} {m}": v["config"] for (b, m), v in stamps.items()},
          "rare_tasks": RARE, "frequent_tasks": FREQUENT, "task_weights": dict(zip(TASKS, WEIGHTS)),
          "episodes_per_task": s.episodes_per_task,
          "budget": {"primary": PRIMARY, "steps_per_task": s.steps_per_task,
                     "total": f"a multi-task network gets {len(TASKS)} x steps_per_task, as "
                              "many as all single-task networks together",
                     "per_network": "every network gets steps_per_task",
                     "on_policy_episodes": s.on_policy_episodes},
          "data_sha": {str(k): v for k, v in data_sha.items()}, "seeds": args.seeds,
          "eval_seed": s.eval_seed, "offline_episodes": s.episodes, "labels": s.labels,
          "quick": args.quick, "minutes": (time.time() - start) / 60}
  out = {"methods": blocks.get(PRIMARY, next(iter(blocks.values()))), "blocks": blocks,
         "meta": meta}
  os.makedirs(args.out, exist_ok=True)
  base = os.path.join(args.out, "mtopt_table" + ("_quick" if args.quick else ""))
  with open(base + ".json", "w") as f:
    json.dump(out, f, indent=1)
  md = markdown(blocks, meta)
  with open(base + ".md", "w") as f:
    f.write(md)
  print(md)
  return out


if __name__ == "__main__":
  main()
