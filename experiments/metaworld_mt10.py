"""Meta-World MT10 offline: one task-conditioned Q-function from noisy-expert data.

    python -m experiments.metaworld_mt10 [--quick] [--seeds 0 1 2] [--steps N] [-- OVERRIDES]

Per seed, `mtopt train --config configs/metaworld_mt10.py` in `offline` mode: scripted
experts with epsilon-random actions (mixed success and failure) collect a dataset, the
replay rebalances it per task and outcome, the learner trains, and greedy CEM is evaluated
in the simulator. Extra `key=value` config overrides apply to every seed. Each seed's
result is kept in WORK_DIR/seedN/result.json, so seeds can run in separate invocations
(also at once) and a later invocation only runs the missing ones; the table over
`--seeds` goes to results/metaworld_mt10.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from mtopt import launch
from mtopt.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "metaworld_mt10.py")


def markdown(per_seed: dict[int, dict[str, float]], meta: dict) -> str:
  tasks = list(next(iter(per_seed.values())))
  means = [float(np.mean(list(r.values()))) for r in per_seed.values()]
  lines = [f"# Meta-World MT10, offline ({meta['note']})", "",
           "| seed | mean | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks)]
  for seed, r in sorted(per_seed.items()):
    lines.append(f"| {seed} | {np.mean(list(r.values())):.2f} | "
                 + " | ".join(f"{r[t]:.2f}" for t in tasks) + " |")
  lines.append(f"| **mean** | **{np.mean(means):.2f} ± {np.std(means):.2f}** | "
               + " | ".join(f"{np.mean([r[t] for r in per_seed.values()]):.2f}"
                            for t in tasks) + " |")
  lines += ["", f"Data: {meta['episodes']} episodes of Meta-World's scripted experts with "
            f"epsilon={meta['epsilon']} random actions, labels: {meta['labels']}; learner "
            f"steps per run: {meta['steps']} (negatives "
            f"{meta.get('negative_actions')} x {meta.get('negative_weight')}); greedy CEM evaluation episodes per task: "
            f"{meta['eval_episodes']}; overrides: {meta['overrides'] or 'none'}."]
  return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true", help="one seed, tiny budget (a smoke run)")
  p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  p.add_argument("--steps", type=int, default=0, help="learner steps (default: the config's)")
  p.add_argument("--work-dir", default=os.path.join(ROOT, "runs", "metaworld_mt10"))
  p.add_argument("--out", default=os.path.join(ROOT, "results"))
  p.add_argument("overrides", nargs="*", help="config overrides, key=value")
  args = p.parse_args(argv)
  overrides = list(args.overrides)
  if args.quick:
    args.seeds = args.seeds[:1]
    overrides += ["learner.num_steps=100", "train.eval_every=100", "train.offline_episodes=40",
                  "eval.episodes_per_task=1", "replay.min_size=1", "learner.batch_size=64"]
    args.work_dir += "_quick"
  elif args.steps:
    overrides += [f"learner.num_steps={args.steps}"]
  per_seed: dict[int, dict[str, float]] = {}
  quiet = lambda *a, **k: None  # noqa: E731
  config = None
  for seed in args.seeds:
    run_dir = os.path.join(args.work_dir, f"seed{seed}")
    store = os.path.join(run_dir, "result.json")
    if os.path.exists(store):  # Done by an earlier invocation.
      with open(store) as f:
        saved = json.load(f)
      if saved["overrides"] != overrides:  # Never average runs of different settings.
        raise SystemExit(f"{store} was run with overrides {saved['overrides']}, not "
                         f"{overrides}; choose another --work-dir")
      per_seed[seed] = saved["success"]
      continue
    t0 = time.time()
    config = load_config(CONFIG, [*overrides, f"seed={seed}", f"run_dir={run_dir}"])
    per_seed[seed] = launch.train(config, log=quiet)["success"]
    with open(store, "w") as f:
      json.dump({"overrides": overrides, "success": per_seed[seed]}, f, indent=1)
    print(f"seed {seed}: mean success {np.mean(list(per_seed[seed].values())):.2f} "
          f"({time.time() - t0:.0f} s)", flush=True)
  config = config or load_config(CONFIG, overrides)
  means = [float(np.mean(list(r.values()))) for r in per_seed.values()]
  meta = {"seeds": sorted(per_seed), "steps": int(config.learner.num_steps),
          "episodes": int(config.train.offline_episodes), "epsilon": float(config.actors.epsilon),
          "labels": config.train.labels,
          "negative_actions": int(config.learner.negative_actions),
          "negative_weight": float(config.learner.negative_weight),
          "eval_episodes": int(config.eval.episodes_per_task), "overrides": overrides,
          "quick": args.quick, "note": "quick smoke run" if args.quick else "state observations"}
  result = {"mean_success": float(np.mean(means)), "mean_success_std": float(np.std(means)),
            "per_task": {t: float(np.mean([r[t] for r in per_seed.values()]))
                         for t in next(iter(per_seed.values()))},
            "per_seed": per_seed, "meta": meta}
  name = "metaworld_mt10_quick" if args.quick else "metaworld_mt10"
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, f"{name}.json"), "w") as f:
    json.dump(result, f, indent=1)
  md = markdown(per_seed, meta)
  with open(os.path.join(args.out, f"{name}.md"), "w") as f:
    f.write(md)
  print(md)
  print(json.dumps({"mean_success": result["mean_success"], "seeds": meta["seeds"]}))
  return result


if __name__ == "__main__":
  main()
