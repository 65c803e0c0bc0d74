"""`mtopt eval --checkpoint RUN_DIR`: per-task success of a run's latest checkpoint."""

import json


def add_parser(sub):
  p = sub.add_parser("eval", help="evaluate a run's checkpoint: per-task success")
  p.add_argument("--checkpoint", required=True, help="the run directory of `mtopt train`")
  p.add_argument("--episodes", type=int, default=None, help="episodes per task")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--json", action="store_true", help="print JSON instead of a table")
  p.set_defaults(func=_run)


def _run(args):
  from rich.console import Console
  from mtopt.program import goal_training
  from mtopt.program.evaluation import evaluate_checkpoint
  from mtopt.program.reports import goal_table, success_table
  from mtopt.program.run_dir import load_run_config
  goals = load_run_config(args.checkpoint).train.mode == "goals"
  if goals:  # --episodes: goals per kind.
    results = goal_training.evaluate_checkpoint(args.checkpoint, args.episodes, args.step)
  else:
    results = evaluate_checkpoint(args.checkpoint, args.episodes, args.step)
  if args.json:
    print(json.dumps(results))
  else:
    Console().print(goal_table(results) if goals else success_table(results, "evaluation"))
