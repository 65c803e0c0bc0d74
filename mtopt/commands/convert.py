"""`mtopt convert from-lerobot SRC OUT` / `mtopt convert to-lerobot SRC OUT`: LeRobotDataset
v3 (Parquet and MP4) to and from mtopt's RLDS datasets (`replay/lerobot_io.py`).

A converted dataset trains like any mtopt dataset (`--config.train.dataset_dir=OUT`, or a
config's `dataset.dir`); its spec and task names travel in its metadata.
"""

from __future__ import annotations

import sys


def _pairs(values, what: str) -> dict[str, str] | None:
  if not values:
    return None
  out = {}
  for v in values:
    key, sep, value = v.rpartition("=")
    if not sep or not key or not value:
      raise SystemExit(f"mtopt: error: {what} {v!r}: expected KEY=VALUE")
    out[key] = value
  return out


def add_parser(sub):
  p = sub.add_parser("convert", help="LeRobotDataset v3 to and from mtopt RLDS datasets")
  verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
  imp = verbs.add_parser("from-lerobot", help="a LeRobot v3 dataset -> a new mtopt dataset")
  imp.add_argument("src", help="LeRobot dataset directory (meta/info.json, data/...)")
  imp.add_argument("out", help="new mtopt dataset directory")
  imp.add_argument("--observation", action="append", metavar="NAME=KEY",
                   help="mtopt observation NAME from LeRobot feature KEY (repeatable; "
                        "default state=observation.state and image=<the one image feature>)")
  imp.add_argument("--action", default="action", help="the action feature (default action)")
  imp.add_argument("--task", action="append", metavar="STRING=NAME",
                   help="LeRobot task STRING is mtopt task NAME (repeatable; default: every "
                        "task string as a name)")
  imp.add_argument("--success-field", default=None,
                   help="per-frame feature whose last value > 0 means success at the "
                        "episode's own task (e.g. next.success); default none: label with "
                        "the detector")
  imp.add_argument("--terminal-field", default=None,
                   help="per-frame bool feature true at a terminal end (default next.done "
                        "where the dataset has it)")
  imp.add_argument("--max-tasks", type=int, default=16, help="task slots (default 16)")
  imp.set_defaults(func=_from_lerobot)
  exp = verbs.add_parser("to-lerobot", help="an mtopt dataset -> a new LeRobot v3 dataset")
  exp.add_argument("src", help="mtopt dataset directory (mtopt collect / replay export)")
  exp.add_argument("out", help="new LeRobot dataset directory")
  exp.add_argument("--fps", type=int, default=10, help="frames per second (default 10)")
  exp.add_argument("--video", choices=["av1", "h264"], default=None,
                   help="write image observations as lossy MP4 video with this codec (av1: "
                        "LeRobot's own); default: lossless PNG in the Parquet rows")
  exp.set_defaults(func=_to_lerobot)


def _from_lerobot(args):
  from replay import lerobot_io
  mapping = lerobot_io.LeRobotMapping(
      observation=_pairs(args.observation, "--observation"), action=args.action,
      tasks=_pairs(args.task, "--task"), success_field=args.success_field,
      terminal_field=args.terminal_field)
  try:
    lerobot_io.convert_from_lerobot(args.src, args.out, mapping, args.max_tasks)
  except lerobot_io.LeRobotError as e:
    print(f"mtopt: error: {e}", file=sys.stderr)
    return 2
  return 0


def _to_lerobot(args):
  from mtopt import rlds_format
  from replay import lerobot_io
  try:
    spec, _, names = rlds_format.read_metadata(args.src)
    if spec is None:
      raise lerobot_io.LeRobotError(f"{args.src}: not an mtopt dataset (no metadata.json)")
    lerobot_io.export_lerobot(rlds_format.read_episodes(args.src), names, args.out, args.fps,
                              video=args.video)
  except rlds_format.DatasetError as e:
    print(f"mtopt: error: {e}", file=sys.stderr)
    return 2
  return 0
