"""`mtopt replay info|export|import`: a run's replay, restored from its checkpoint.

The replay lives in `RUN_DIR/replay` (Reverb checkpoints); each verb restores it into an
in-process server, so run it while training is stopped.
"""

from __future__ import annotations

import functools
import os
import sys

from mtopt import cli


def _clean_errors(func):
  """Bad datasets and replay input end the command with one line, exit status 2."""
  @functools.wraps(func)
  def run(args):
    from mtopt.rlds_format import DatasetError
    from replay.base import ReplayError
    from replay.rlds_io import MappingError
    try:
      return func(args)
    except (DatasetError, MappingError, ReplayError) as e:
      print(f"mtopt: error: {e}", file=sys.stderr)
      return 2
  return run


def add_parser(sub):
  p = sub.add_parser("replay", help="inspect, export or import a run's replay")
  verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
  info = verbs.add_parser("info", help="episodes and items per task and outcome")
  cli.add_config_arg(info)
  info.set_defaults(func=_info)
  export = verbs.add_parser("export", help="write the replay's episodes as an RLDS dataset")
  export.add_argument("out", help="new dataset directory")
  cli.add_config_arg(export)
  export.set_defaults(func=_export)
  imp = verbs.add_parser("import", help="add an mtopt RLDS dataset's episodes to the replay")
  imp.add_argument("data", help="dataset directory (written by `mtopt replay export` or "
                                "`mtopt collect`)")
  imp.add_argument("--skip-bad-episodes", action="store_true",
                   help="leave corrupt, truncated or mismatched episodes out and report them "
                        "(default: stop with an error naming the file and episode)")
  cli.add_config_arg(imp)
  imp.set_defaults(func=_import)


def _open(config, with_labeller: bool = False):
  """The run's env, task registry and replay (restored from RUN_DIR/replay)."""
  from mtopt import envs
  from mtopt.tasks import TaskRegistry
  from replay.reverb_replay import ReverbReplay
  run_dir = os.path.abspath(config.run_dir)
  env = envs.make(config.env)
  registry = TaskRegistry.load_or_create(run_dir, int(config.max_tasks),
                                         list(config.env.tasks) or env.task_names())
  labeller = None
  if with_labeller:  # Built only if some episode has no labels (it may train a detector).
    made = []

    def labeller(episodes):
      if not made:
        from mtopt.program.nodes import make_labeller
        made.append(make_labeller(config, env, registry, run_dir))
      return made[0](episodes)
  replay = ReverbReplay.from_config(config, env.spec(), run_dir=run_dir, labeller=labeller,
                                    slots=registry.slots)
  return registry, replay


@_clean_errors
def _info(args):
  registry, replay = _open(args.config)
  with replay:
    counts = replay.counts()
    print(f"{replay.num_episodes()} episodes stored; sharing={replay.sharing}")
    print(f"{'slot':>4}  {'task':24s} {'success':>8s} {'failure':>8s}")
    for task in registry.active():
      c = counts[task.slot]
      print(f"{task.slot:4d}  {task.name:24s} {c['success']:8d} {c['failure']:8d}")


@_clean_errors
def _export(args):
  from replay.rlds_io import export_rlds
  registry, replay = _open(args.config)
  with replay:
    names = [registry.name(s) if s in registry.slots else "" for s in range(registry.max_tasks)]
    n = export_rlds(replay, args.out, names)
  print(f"exported {n} episodes to {os.path.abspath(args.out)}")


@_clean_errors
def _import(args):
  from replay.rlds_io import import_rlds
  from replay.rlds_shards import ShardReport
  registry, replay = _open(args.config, with_labeller=True)
  report = ShardReport()
  with replay:
    try:
      n = import_rlds(replay, args.data, skip_bad=args.skip_bad_episodes, report=report)
    finally:  # Whatever was written before an error is kept (and checkpointed).
      replay.checkpoint()
    print(f"imported {n} episodes; replay holds {replay.num_episodes()} episodes")
    if report.bad:
      print(report.summary())
