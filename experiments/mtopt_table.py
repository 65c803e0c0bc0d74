"""The MT-Opt comparison on tabletop: does sharing + rebalancing let rare tasks learn?

    python -m experiments.mtopt_table [--quick] [--seeds 0 1 2] [--steps N] [--budget run|task]

One imbalanced offline dataset per seed (scripted, noisy experts; the `lift_*` tasks get
almost all episodes, the `reach_*` tasks a handful), labelled by a success detector
trained per seed from simulated examples. Then, with the same data, labels and learner
steps, four methods are trained in `mixed` mode (the offline data, then on-policy
episodes from one actor that keeps the same task imbalance) and evaluated by greedy CEM
in the simulator:

  single_task      one network per task, on that task's own episodes only (its actor
                   collects only that task: more on-policy data for a rare task than
                   the multi-task runs give it, which favours this baseline)
  naive_multitask  one network, no sharing, batches in the data's own proportions
  mtopt            one network, sharing `all`, rebalanced batches (MT-Opt)
  conservative     one network, sharing `conservative`, rebalanced batches

Learner budget (`--budget`): `run` gives every network --steps steps, so each single-task
network sees its task's rows len(TASKS) times as often as the multi-task network does;
`task` gives the multi-task networks --steps x len(TASKS) steps (as many rows per task as a
single-task network), as extra rows `METHOD_task_budget` in the same table.

Writes results/mtopt_table.{json,md}. The paper's reference (MT-Opt, real robots): rare
tasks 50% (MT-Opt) vs 18% (naive multi-task) vs 1% (single task); the most frequent task
89% vs 88%.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import numpy as np

from mtopt import launch
from mtopt.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FREQUENT = ["lift_red", "lift_green", "lift_blue"]
RARE = ["reach_red", "reach_green", "reach_blue"]
TASKS = RARE + FREQUENT
WEIGHTS = [0.01] * len(RARE) + [0.97 / len(FREQUENT)] * len(FREQUENT)
METHODS = {
    "single_task": ["replay.sharing=none"],
    "naive_multitask": ["replay.sharing=none", "train.rebalance=False"],
    "mtopt": ["replay.sharing=all"],
    "conservative": ["replay.sharing=conservative"],
}


def base_overrides(run_dir: str, seed: int, steps: int, episodes: int, eval_episodes: int,
                   labels: str) -> list[str]:
  return [
      f"run_dir={run_dir}", f"seed={seed}", f"env.tasks={TASKS!r}",
      "actors.scheduler=weighted", f"actors.task_weights={WEIGHTS!r}",
      f"train.offline_episodes={episodes}", "train.mode=mixed", f"train.labels={labels}",
      "actors.num_actors=1",
      f"learner.num_steps={steps}", f"train.eval_every={steps}",
      f"eval.episodes_per_task={eval_episodes}", "replay.min_size=1",
      "learner.checkpoint_every=0",
  ]


def run_method(name: str, seed_dir: str, common: list[str], log, steps: int,
               key: str) -> dict[str, float]:
  """Trains `name` for `steps` learner steps per network on the seed's shared dataset and
  detector, in `seed_dir/key`; returns task -> success."""
  def one(run_dir: str, extra: list[str]) -> dict[str, float]:
    os.makedirs(run_dir, exist_ok=True)
    for shared in ("tasks.json", "detector"):  # Same slots and labels for every method.
      src, dst = os.path.join(seed_dir, shared), os.path.join(run_dir, shared)
      if os.path.exists(src) and not os.path.exists(dst):
        (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, dst)
    config = load_config(os.path.join(ROOT, "configs", "tabletop_state.py"),
                         [*common, f"run_dir={run_dir}",
                          f"train.dataset_dir={os.path.join(seed_dir, 'data', 'offline')}",
                          f"learner.num_steps={steps}", f"train.eval_every={steps}", *extra])
    return launch.train(config, log=log)["success"]

  if name == "single_task":
    out = {}
    for task in TASKS:
      out.update(one(os.path.join(seed_dir, key, task), [*METHODS[name], f"train.tasks=['{task}']"]))
    return out
  return one(os.path.join(seed_dir, key), METHODS[name])


def summarize(per_seed: dict[str, dict[int, dict[str, float]]]) -> dict:
  table = {}
  for method, seeds in per_seed.items():
    rare = [np.mean([s[t] for t in RARE]) for s in seeds.values()]
    freq = [np.mean([s[t] for t in FREQUENT]) for s in seeds.values()]
    per_task = {t: float(np.mean([s[t] for s in seeds.values()])) for t in TASKS}
    table[method] = {"rare_mean": float(np.mean(rare)), "frequent_mean": float(np.mean(freq)),
                     "rare_std": float(np.std(rare)), "frequent_std": float(np.std(freq)),
                     "per_task": per_task, "seeds": sorted(seeds)}
  return table


def markdown(table: dict, meta: dict) -> str:
  lines = [f"# MT-Opt comparison on tabletop ({meta['note']})", "",
           "| method | rare tasks | frequent tasks | " + " | ".join(TASKS) + " |",
           "|---|---|---|" + "---|" * len(TASKS)]
  for m, r in table.items():
    cells = " | ".join(f"{r['per_task'][t]:.2f}" for t in TASKS)
    lines.append(f"| {m} | {r['rare_mean']:.2f} ± {r['rare_std']:.2f} | "
                 f"{r['frequent_mean']:.2f} ± {r['frequent_std']:.2f} | {cells} |")
  lines += ["", f"Seeds: {meta['seeds']}; learner steps per run: {meta['steps']} (rows "
            f"`*_task_budget`: {meta['steps']} x {len(TASKS)}, as many rows per task as a "
            f"single-task network gets); offline "
            f"episodes: {meta['episodes']}; evaluation episodes per task: "
            f"{meta['eval_episodes']}; labels: {meta['labels']}.",
            f"Rare tasks: {', '.join(RARE)} (weight {WEIGHTS[0]} each in collection); "
            f"frequent: {', '.join(FREQUENT)}."]
  return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true", help="one seed, tiny budget (a smoke run)")
  p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  p.add_argument("--steps", type=int, default=6000)
  p.add_argument("--episodes", type=int, default=600)
  p.add_argument("--eval-episodes", type=int, default=10)
  p.add_argument("--labels", default="learned", choices=["learned", "ground_truth"])
  p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
  p.add_argument("--budget", default="run", choices=["run", "task"],
                 help="run: every network gets --steps learner steps (single-task networks "
                      "then see each task's rows len(TASKS) times as often); task: the "
                      "multi-task networks get --steps x len(TASKS), so every task gets as "
                      "many rows as a single-task network (rows keyed METHOD_task_budget)")
  p.add_argument("--work-dir", default=os.path.join(ROOT, "runs", "mtopt_table"))
  p.add_argument("--out", default=os.path.join(ROOT, "results"))
  args = p.parse_args(argv)
  if args.quick:
    args.seeds, args.steps, args.episodes, args.eval_episodes = args.seeds[:1], 200, 120, 2
    args.work_dir += "_quick"
  start = time.time()
  quiet = lambda *a, **k: None  # noqa: E731
  # Results accumulate across invocations (run seeds one at a time, keep what finished).
  store = os.path.join(args.work_dir, "per_seed.json")
  # Every stored method is kept (and tabled), whichever --methods this invocation runs.
  per_seed: dict[str, dict[int, dict[str, float]]] = {}
  if os.path.exists(store):
    with open(store) as f:
      per_seed = {m: {int(k): v for k, v in seeds.items()} for m, seeds in json.load(f).items()}
  # method -> (stored key, learner steps per network).
  runs = {m: (m, args.steps) for m in args.methods}
  if args.budget == "task":
    runs.update({m: (f"{m}_task_budget", args.steps * len(TASKS))
                 for m in args.methods if m != "single_task"})
  for key, _ in runs.values():
    per_seed.setdefault(key, {})
  for seed in args.seeds:
    seed_dir = os.path.join(args.work_dir, f"seed{seed}")
    common = base_overrides(seed_dir, seed, args.steps, args.episodes, args.eval_episodes,
                            args.labels)
    # The seed's dataset and detector, made once: a run of 0 steps builds them.
    prep = load_config(os.path.join(ROOT, "configs", "tabletop_state.py"),
                       [*common, "learner.num_steps=0", "eval.episodes_per_task=1"])
    launch.prepare(prep, log=print)
    for method, (key, steps) in runs.items():
      t0 = time.time()
      if seed in per_seed[key]:
        continue  # Done by an earlier invocation.
      per_seed[key][seed] = run_method(method, seed_dir, common, quiet, steps, key)
      with open(store, "w") as f:
        json.dump(per_seed, f, indent=1)
      rates = per_seed[key][seed]
      print(f"seed {seed} {key:16s} rare {np.mean([rates[t] for t in RARE]):.2f} "
            f"frequent {np.mean([rates[t] for t in FREQUENT]):.2f} ({time.time() - t0:.0f} s)",
            flush=True)
  table = summarize(per_seed)
  all_seeds = sorted({k for v in per_seed.values() for k in v})
  meta = {"seeds": all_seeds, "steps": args.steps, "episodes": args.episodes,
          "eval_episodes": args.eval_episodes, "labels": args.labels,
          "minutes_this_invocation": (time.time() - start) / 60, "quick": args.quick,
          "note": "quick smoke run" if args.quick else "state observations"}
  os.makedirs(args.out, exist_ok=True)
  name = "mtopt_table_quick" if args.quick else "mtopt_table"
  with open(os.path.join(args.out, f"{name}.json"), "w") as f:
    json.dump({"methods": table, "meta": meta}, f, indent=1)
  md = markdown(table, meta)
  with open(os.path.join(args.out, f"{name}.md"), "w") as f:
    f.write(md)
  print(md)
  summary = {m: {"rare_mean": r["rare_mean"], "frequent_mean": r["frequent_mean"]}
             for m, r in table.items()}
  print(json.dumps(summary))
  return table


if __name__ == "__main__":
  main()
