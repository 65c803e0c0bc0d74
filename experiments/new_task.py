"""A new task from success examples only, added to a trained run: zero-shot, then
fine-tuned with collection for it (MT-Opt's new-task path; the real-robot path, where only
the detector knows the task).

    python -m experiments.new_task [--quick] [--seeds 0 1] [--work-dir DIR] [--name N]
        [KEY=VALUE ...]
    python -m experiments.new_task --write-examples DIR   # only reach_any's example folder

The protocol, fixed before any result was looked at:

- The task: `reach_any`, the gripper tip at the top of any of the three cubes (the union
  of the simulator's reach_red, reach_green and reach_blue, which the simulator does not
  define as a task). It is given only as an example folder: final observations of 120
  noisy scripted episodes per simulator task (seed 1000 + seed), judged by that union: up
  to 500 successes and 1200 failures.
- The trained run: `mtopt train --config configs/tabletop_state.py` (its defaults: six
  tasks, mixed mode, learned labels, 6000 learner steps), seed s.
- Adding it: a copy of that run, `mtopt tasks add reach_any --examples DIR --run-dir RUN`,
  then the same `mtopt train` command on RUN with 4000 more learner steps: the run
  relabels its replays, evaluates the new task zero-shot, sends `actors.new_task_share`
  (0.5) of its robots' attempts to it while it is behind, and fine-tunes.
- Evaluation (before fine-tuning and after): the run's greedy CEM policy, 50 episodes per
  task for all seven tasks from fixed start states (evaluation seed 20261203), success
  judged by the run's detector and by the simulator (for reach_any: the union above).
- Seeds 0 and 1 (the run's seed: data, detector, learner). No setting was tuned.
- Goals (issue 18): reach_any true success >= 0.80 after fine-tuning; the six other
  tasks' mean true success drops by no more than 0.05.

A second setting, fixed before its runs (2026-12-06): at d8df589 reach_any reached 0.47.
On seed 0's run the behaviour head's action for reach_any was the mean of its actions for
the three reach tasks (cosine 0.94 over 40 start states): one regressed action averages
the data's modes, and CEM searches only near it. `learner.network.behaviour_modes=4`
(multiple choice, CEM starting from all four) was run beside the default on fresh seeds 2
and 3 (the whole protocol, each its own base run); the tabletop default becomes 4 only if
there reach_any's true success after fine-tuning rises by >= 0.10 with the other tasks'
mean not lower by more than 0.03, and the offline tuning data (experiments.offline_tabletop
--dev, default block) does not fall by more than 0.02.

A third setting, fixed before its runs (2026-12-07): at 82eb910 (behaviour_modes 4) the
failures of seed 2's fine-tuned run came within 1-3 cm of a cube and then hopped between
cubes and up and down until the time limit, without stopping. CEM's second round fitted one
Gaussian to elites around several of the K priors, so its samples fell between the modes
and only the first round's best was used. CEM now refits around the best sample's prior
only. It is kept if, on seeds 0 and 1 (paired with the same protocol run at 5b999e1, which
only adds diagnostics to 82eb910), reach_any's true success after fine-tuning rises by
>= 0.05, and the six other tasks' mean true success, before (the default `mtopt train`
run) and after fine-tuning, is not lower by more than 0.03.

Results: results/new_task.{json,md} (or *_quick), stamped with the commit and config.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import numpy as np

from experiments import protocol
from mtopt import cli, envs
from mtopt.config import load_config

ROOT = protocol.ROOT
CONFIG = os.path.join(ROOT, "configs", "tabletop_state.py")
TASK, PARTS = "reach_any", ("reach_red", "reach_green", "reach_blue")
EVAL_SEED, PER_TASK, FINETUNE_STEPS = 20261203, 50, 4000
QUICK = ["--config.learner.num_steps=200", "--config.train.offline_episodes=60",
         "--config.train.eval_every=100", "--config.eval.episodes_per_task=2",
         "--config.train.detector_episodes_per_task=20", "--config.learner.batch_size=64"]


def write_examples(config, folder: str, episodes_per_task: int, seed: int) -> tuple[int, int]:
  """reach_any's example folder, judged by the union of the simulator's reach tasks."""
  from success_detectors.examples import write_example_folder
  from success_detectors.examples_from_sim import collect_rollouts
  with envs.make(config.env, seed=seed) as env:
    rollouts = collect_rollouts(env, episodes_per_task, seed=seed)
  cols = [rollouts.task_names.index(t) for t in PARTS if t in rollouts.task_names]
  truth = rollouts.truth[:, cols].any(1)
  rng = np.random.default_rng(seed)
  pos = rng.permutation(np.flatnonzero(truth))[:500]
  neg = rng.permutation(np.flatnonzero(~truth))[:1200]
  write_example_folder(folder, rollouts.take(pos).observations, rollouts.take(neg).observations,
                       name=TASK, description="the gripper tip at the top of any cube")
  return len(pos), len(neg)


def evaluate_run(run: str, per_task: int, eval_seed: int) -> dict:
  """task -> {"judged": bool [n], "true": bool [n]} for the run's latest checkpoint."""
  from actors.evaluator import evaluate_in_process
  from learners.policy import CEMPolicy
  from mtopt.serving.policy_source import RunPolicy
  from success_detectors.detector import SuccessDetector
  source = RunPolicy(run)
  step, params = source.load_params()
  policy = CEMPolicy(source.spec, source.registry.max_tasks, source.lcfg.network, params,
                     source.lcfg.cem, seed=0)
  detector = SuccessDetector.load(os.path.join(run, "detector"))
  tasks = source.registry.names
  slots = [source.registry.slot(t) for t in tasks]
  config = source.config
  with envs.make(config.env) as env:
    names = env.task_names()
  res = evaluate_in_process(lambda: envs.make(config.env), policy.act_batch, tasks, slots,
                            per_task, eval_seed)
  out = {"step": step}
  for t, k in zip(tasks, slots):
    r = res[t]
    true = (r["success"] if t in names else
            r["env_success"][:, [names.index(p) for p in PARTS if p in names]].any(1))
    judged = detector.predict(r["final"])[:, k] >= float(config.detector.threshold)
    out[t] = {"judged": judged.tolist(), "true": np.asarray(true).tolist()}
  return out


def run_seed(seed: int, work: str, quick: bool, finetune_steps: int = FINETUNE_STEPS,
             settings=()) -> dict:
  overrides = [f"--config.seed={seed}"] + (QUICK if quick else []) + [
      f"--config.{s}" for s in settings]
  config = load_config(CONFIG, [o[len("--config."):] for o in overrides])
  base = os.path.join(work, f"seed{seed}", "base")
  run = os.path.join(work, f"seed{seed}", "run" if finetune_steps == FINETUNE_STEPS
                     else f"run_ft{finetune_steps}")
  examples = os.path.join(work, f"seed{seed}", "examples")
  timings = {}
  t0 = time.time()
  if not os.path.exists(os.path.join(base, "results.json")):
    assert cli.main(["train", "--config", CONFIG, f"--config.run_dir={base}", *overrides]) == 0
  timings["base_train_s"] = time.time() - t0
  if not os.path.isdir(examples):
    counts = write_examples(config, examples, 4 if quick else 120, 1000 + seed)
    print(f"{examples}: {counts[0]} successes, {counts[1]} failures")
  shutil.rmtree(run, ignore_errors=True)
  shutil.copytree(base, run)
  t0 = time.time()
  assert cli.main(["tasks", "add", TASK, "--examples", examples, "--run-dir", run,
                   "--config", CONFIG, *overrides]) == 0
  timings["add_task_s"] = time.time() - t0
  per_task = 5 if quick else PER_TASK
  before = evaluate_run(run, per_task, EVAL_SEED)
  steps = int(config.learner.num_steps) + (100 if quick else finetune_steps)
  t0 = time.time()
  assert cli.main(["train", "--config", CONFIG, f"--config.run_dir={run}", *overrides,
                   f"--config.learner.num_steps={steps}"]) == 0
  timings["finetune_s"] = time.time() - t0
  after = evaluate_run(run, per_task, EVAL_SEED)
  with open(os.path.join(run, "progress.json")) as f:
    progress = json.load(f)
  return {"before": before, "after": after, "timings": timings,
          "attempts": progress.get("attempts", {}),
          "run_evaluations": progress["evaluations"], "config": config.to_dict()}


def _rates(per_seed: dict, when: str, kind: str) -> dict:
  return protocol.summarize({s: {t: v[kind] for t, v in r[when].items() if t != "step"}
                             for s, r in per_seed.items()})


def report(per_seed: dict) -> tuple[dict, str]:
  out = {}
  for when in ("before", "after"):
    for kind in ("true", "judged"):
      out[f"{when}_{kind}"] = _rates(per_seed, when, kind)
  others = lambda d: float(np.mean([v["rate"] for t, v in d["per_task"].items() if t != TASK]))
  summary = {
      "new_task_true_before": out["before_true"]["per_task"][TASK]["rate"],
      "new_task_true_after": out["after_true"]["per_task"][TASK]["rate"],
      "new_task_true_after_ci": out["after_true"]["per_task"][TASK]["ci"],
      "new_task_judged_before": out["before_judged"]["per_task"][TASK]["rate"],
      "new_task_judged_after": out["after_judged"]["per_task"][TASK]["rate"],
      "others_true_before": others(out["before_true"]),
      "others_true_after": others(out["after_true"]),
  }
  summary["others_drop"] = summary["others_true_before"] - summary["others_true_after"]
  lines = ["| task | before: true | before: judged | after: true | after: judged |",
           "|---|---|---|---|---|"]
  for t in out["after_true"]["per_task"]:
    cells = []
    for key in ("before_true", "before_judged", "after_true", "after_judged"):
      r = out[key]["per_task"][t]
      cells.append(f"{r['rate']:.2f} [{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]")
    lines.append(f"| {t} | " + " | ".join(cells) + " |")
  md = "\n".join(lines) + "\n\n" + "\n".join(f"- {k}: {v}" for k, v in summary.items())
  return {"per_task": out, "summary": summary}, md


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true", help="a tiny smoke run (minutes)")
  p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
  p.add_argument("--work-dir", default="/tmp/mtopt_new_task")
  p.add_argument("--finetune-steps", type=int, default=FINETUNE_STEPS,
                 help=f"learner steps after the task is added (protocol: {FINETUNE_STEPS}; "
                      "other budgets are reported as such, beside it)")
  p.add_argument("--name", default="new_task", help="results/NAME[_quick][_ftN].{json,md}")
  p.add_argument("overrides", nargs="*",
                 help="config overrides for every run (key=value; use their own --work-dir)")
  p.add_argument("--write-examples", metavar="DIR", default=None,
                 help="only write reach_any's example folder to DIR (the tutorial's step)")
  args = p.parse_args(argv)
  if args.write_examples:
    counts = write_examples(load_config(CONFIG), args.write_examples, 120, seed=1000)
    print(f"{args.write_examples}: {counts[0]} successes, {counts[1]} failures")
    return
  work = args.work_dir + ("_quick" if args.quick else "")
  stamp = protocol.commit()  # Before the runs: the code that runs, not what follows.
  per_seed = {s: run_seed(s, work, args.quick, args.finetune_steps, args.overrides)
              for s in args.seeds}
  results, md = report(per_seed)
  meta = {**stamp, "config": per_seed[args.seeds[0]]["config"], "seeds": args.seeds,
          "episodes_per_task": 5 if args.quick else PER_TASK, "eval_seed": EVAL_SEED,
          "finetune_steps": args.finetune_steps, "overrides": args.overrides,
          "task": TASK, "parts": PARTS,
          "data": "each run collects its own (scripted noisy experts, seed = the run's seed); "
                  "examples from seed 1000 + seed"}
  out = {**results, "seeds": {s: {k: v for k, v in r.items() if k != "config"}
                              for s, r in per_seed.items()}, "meta": meta}
  suffix = ("_quick" if args.quick else "") + (
      f"_ft{args.finetune_steps}" if args.finetune_steps != FINETUNE_STEPS else "")
  base = os.path.join(ROOT, "results", args.name + suffix)
  with open(base + ".json", "w") as f:
    json.dump(out, f, indent=1, default=list)
  with open(base + ".md", "w") as f:
    f.write(f"# New task from examples: {TASK}\n\ncommit {meta['commit']}"
            f"{' (dirty)' if meta['dirty'] else ''}, seeds {args.seeds}, "
            f"{args.finetune_steps} fine-tuning steps, "
            f"{'overrides ' + ' '.join(args.overrides) + ', ' if args.overrides else ''}"
            f"{meta['episodes_per_task']} episodes per task\n\n{md}\n")
  print(md)
  print(json.dumps(results["summary"]))


if __name__ == "__main__":
  main()
