"""`mtopt pin --run-dir RUN --step N` (or `--latest`): what `mtopt serve` serves.

Pins (or rolls back) a running server to checkpoint step N within its poll period;
`--latest` goes back to following the learner's newest checkpoint.
"""

from __future__ import annotations


def add_parser(sub):
  p = sub.add_parser("pin", help="pin or roll back the served policy to a checkpoint step")
  p.add_argument("--run-dir", required=True)
  g = p.add_mutually_exclusive_group(required=True)
  g.add_argument("--step", type=int, help="serve this checkpoint step")
  g.add_argument("--latest", action="store_true", help="follow the newest checkpoint again")
  p.set_defaults(func=_run)


def _run(args):
  from mtopt.config import ConfigError
  from mtopt.serving import policy_source
  steps = policy_source.checkpoint_steps(args.run_dir)
  if args.step is not None and args.step not in steps:
    # A server that served the step before still holds it; say so rather than refuse.
    print(f"pin: note: no checkpoint at step {args.step} on disk (have {steps}); a server "
          "serves it only if it has served it before")
    if not steps:
      raise ConfigError(f"{args.run_dir}: no checkpoints")
  policy_source.write_pin(args.run_dir, None if args.latest else args.step)
  print("pin: following the newest checkpoint" if args.latest else f"pin: step {args.step}")
