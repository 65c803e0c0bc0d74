"""The `mtopt` command line. Each subcommand lives in `mtopt/commands/NAME.py` and defines
`add_parser(subparsers)`, which registers it and sets `func` to run it."""

from __future__ import annotations

import argparse
import importlib
import sys

from mtopt.config import ConfigError, load_config, split_overrides
from mtopt.dataset_errors import DatasetError
from mtopt.episode import EpisodeError
from mtopt.tasks import TaskError

# Only subcommands that work are listed here.
COMMANDS = ["config", "collect", "tasks", "train", "eval", "replay", "serve", "pin", "robots",
            "export", "convert"]


def add_config_arg(parser: argparse.ArgumentParser, default: str = "configs/tabletop_state.py"):
  parser.add_argument("--config", default=default,
                      help="experiment config file (get_config()); override keys with "
                           "--config.SECTION.KEY=VALUE")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="mtopt", description="Multi-task robot reinforcement learning (QT-Opt / MT-Opt).")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
  for name in COMMANDS:
    importlib.import_module(f"mtopt.commands.{name}").add_parser(sub)
  return parser


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = build_parser()
  try:
    rest, overrides = split_overrides(argv)
    args = parser.parse_args(rest)
    if hasattr(args, "config") and isinstance(args.config, str):
      args.config = load_config(args.config, overrides)
    elif overrides:
      raise ConfigError(f"{args.command} takes no --config overrides")
    return int(args.func(args) or 0)
  except (ConfigError, DatasetError, EpisodeError, TaskError) as e:
    print(f"mtopt: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("mtopt: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
