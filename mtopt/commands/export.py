"""`mtopt export --run-dir RUN --out DIR [--step N]`: the policy for acting on a robot
without the server (see `mtopt/serving/export.py`)."""

from __future__ import annotations


def add_parser(sub):
  p = sub.add_parser("export", help="export a run's policy (jax.export program + params)")
  p.add_argument("--run-dir", required=True)
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
  p.set_defaults(func=_run)


def _run(args):
  from mtopt.config import ConfigError
  from mtopt.serving.export import export_policy
  try:
    meta = export_policy(args.run_dir, args.out, args.step)
  except FileNotFoundError as e:
    raise ConfigError(str(e)) from None
  print(f"export: policy version {meta['policy_version']} -> {args.out}")
