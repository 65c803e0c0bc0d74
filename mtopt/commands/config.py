"""`mtopt config show`: prints the resolved config (file plus overrides)."""

from mtopt import cli
from mtopt.config import to_yaml


def add_parser(sub):
  p = sub.add_parser("config", help="show the resolved experiment config")
  verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
  show = verbs.add_parser("show", help="print the config after overrides, as YAML")
  cli.add_config_arg(show)
  show.set_defaults(func=_show)


def _show(args):
  print(to_yaml(args.config), end="")
