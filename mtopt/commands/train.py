"""`mtopt train`: one MT-Opt run from a config (see mtopt/launch.py); resumes its run_dir."""

from mtopt import cli


def add_parser(sub):
  p = sub.add_parser("train", help="train a multi-task Q-function (offline, online or mixed)")
  cli.add_config_arg(p)
  p.set_defaults(func=_run)


def _run(args):
  from rich.console import Console
  from mtopt import launch
  from mtopt.program.reports import goal_table, success_table
  console = Console()
  results = launch.train(args.config, log=console.print)
  console.print(goal_table(results) if "per_kind" in results else success_table(results))
  console.print(f"run directory: {args.config.run_dir} (TensorBoard logs, checkpoints, "
                f"results.json, success.png)")
