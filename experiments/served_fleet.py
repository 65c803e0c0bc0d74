"""The simulated fleet through the policy server beside the same run on Ray actors.

    python -m experiments.served_fleet [--quick] [--seeds 0 1 2] [-- OVERRIDES]

The protocol, fixed before any result was looked at (see `experiments/protocol.py`):
- Runs: `mtopt train --config configs/tabletop_state.py` as `make demo` runs it (mixed
  mode, learned labels, its own 400 scripted offline episodes), once with
  `actors.mode=ray` (robot actors pull params from the parameter server) and once with
  `actors.mode=served` (robot actors act through `mtopt serve` on a loopback port with
  `mtopt.robot_client` and upload their episodes to it), same seeds (`seed`: the data,
  the learner, the robots' noise).
- Evaluation: each run's final checkpoint, greedy CEM, 50 episodes per task from fixed start
  states (evaluation seed 20261202) shared by both modes; success is the simulator's ground
  truth at the end. 95% intervals per task and for the mean, pooled over seeds.
- What differs by design: served robots act with the params of the last checkpoint (saved
  at each evaluation, `train.eval_every`), Ray robots with the last publication.

Results: results/served_fleet.{json,md} (or *_quick); each run is kept under --work-dir,
stamped, and reused only by an identical run (same commit, config).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from experiments import protocol

ROOT = protocol.ROOT
CONFIG = os.path.join(ROOT, "configs", "tabletop_state.py")
MODES = ("ray", "served")
EVAL_SEED = 20261202


def _evaluate(run_dir: str, per_task: int, seed: int) -> dict:
  import jax
  from actors.evaluator import evaluate_in_process
  from learners.policy import CEMPolicy
  from mtopt import envs
  from mtopt.serving.policy_source import RunPolicy
  run = RunPolicy(run_dir)
  step, params = run.load_params(None)
  policy = CEMPolicy(run.spec, run.registry.max_tasks, run.lcfg.network,
                     jax.device_put(params), run.lcfg.cem, seed=seed)
  tasks = list(run.config.env.tasks) or list(run.registry.names)
  evals = evaluate_in_process(lambda: envs.make(run.config.env, seed=[seed, 1]),
                              policy.act_batch, tasks, [run.registry.slot(t) for t in tasks],
                              per_task, EVAL_SEED)
  return {"step": step, "success": {t: v["success"].tolist() for t, v in evals.items()}}


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true", help="tiny budget: a smoke run of the path")
  p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  p.add_argument("--work-dir", default=os.path.join(ROOT, "runs", "served_fleet"))
  p.add_argument("--out", default=os.path.join(ROOT, "results"))
  p.add_argument("overrides", nargs="*", help="config overrides for both modes, key=value")
  args = p.parse_args(argv)
  from mtopt.config import load_config
  overrides, per_task = list(args.overrides), protocol.MIN_EPISODES_PER_TASK
  if args.quick:
    per_task, args.seeds = 4, args.seeds[:1]
    overrides += ["learner.num_steps=60", "train.eval_every=30", "train.offline_episodes=24",
                  "train.detector_episodes_per_task=20", "eval.episodes_per_task=2",
                  "replay.min_size=8", "learner.batch_size=32"]
  suffix = "_quick" if args.quick else ""
  work_dir = args.work_dir + suffix
  results, stamps, shas = {}, {}, {}
  for mode in MODES:
    per_seed = {}
    for seed in args.seeds:
      run_dir = os.path.join(work_dir, f"{mode}_seed{seed}")
      settings = [*overrides, f"actors.mode={mode}", f"seed={seed}", f"run_dir={run_dir}"]
      config = load_config(CONFIG, settings)
      want = protocol.stamp(config.to_dict(), {})
      want["config"].update(mode=mode, seed=seed, eval_seed=EVAL_SEED,
                            episodes_per_task=per_task)
      path = os.path.join(work_dir, f"{mode}_seed{seed}.json")
      saved = protocol.load_if_same(path, want)
      if saved is None:
        import shutil
        shutil.rmtree(run_dir, ignore_errors=True)  # A fresh run, not a continued one.
        os.makedirs(work_dir, exist_ok=True)
        t0 = time.time()
        cmd = [sys.executable, "-m", "mtopt.cli", "train", "--config", CONFIG,
               *[f"--config.{s}" for s in settings]]
        with open(run_dir + ".log", "w") as log:
          subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        seconds = time.time() - t0
        data = os.path.join(run_dir, "data")  # The run's own offline episodes.
        saved = {**_evaluate(run_dir, per_task, seed), "train_seconds": seconds, "meta": want,
                 "offline_data_sha": protocol.data_sha(data) if os.path.isdir(data) else None}
        with open(path, "w") as f:
          json.dump(saved, f)
        rate = np.mean([np.mean(v) for v in saved["success"].values()])
        print(f"{mode} seed {seed}: mean {rate:.3f} ({seconds:.0f} s training)", flush=True)
      per_seed[seed] = saved["success"]
      stamps[mode] = saved["meta"]
      shas.setdefault(mode, {})[seed] = saved["offline_data_sha"]
    results[mode] = protocol.summarize(per_seed)
  first = stamps[MODES[0]]
  meta = {"commit": first["commit"], "dirty": first["dirty"],
          "config": {m: s["config"] for m, s in stamps.items()},
          "data_sha": shas,  # Per mode and seed: each run collects its own offline data.
          "seeds": args.seeds, "episodes_per_task": per_task, "eval_seed": EVAL_SEED,
          "overrides": overrides}
  out = {"methods": results, "meta": meta}
  os.makedirs(args.out, exist_ok=True)
  base = os.path.join(args.out, "served_fleet" + suffix)
  with open(base + ".json", "w") as f:
    json.dump(out, f, indent=1)
  tasks = list(next(iter(results.values()))["per_task"])
  lines = ["# The simulated fleet: through the policy server vs Ray actors", "",
           f"`mtopt train` as `make demo` runs it; {per_task} paired episodes per task and "
           f"seed, seeds {args.seeds}; 95% intervals pooled over seeds. Commit "
           f"{meta['commit'][:10]}{' (dirty tree)' if meta['dirty'] else ''}.", "",
           "| robots | mean [95% CI] | seed means | " + " | ".join(tasks) + " |",
           "|---|---|---|" + "---|" * len(tasks)]
  for mode, r in results.items():
    lines.append(f"| {mode} | {r['mean']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] | "
                 + ", ".join(f"{v:.2f}" for v in r["seed_means"].values()) + " | "
                 + " | ".join(f"{r['per_task'][t]['rate']:.2f}" for t in tasks) + " |")
  md = "\n".join(lines) + "\n"
  with open(base + ".md", "w") as f:
    f.write(md)
  print(md)
  print(json.dumps({m: round(r["mean"], 3) for m, r in results.items()}))
  return out


if __name__ == "__main__":
  main()
