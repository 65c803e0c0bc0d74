"""`mtopt robots add NAME --run-dir RUN` (prints the robot's token) and `mtopt robots list`.

Tokens are stored hashed in RUN/serving/robots.json; a running server reads changes.
"""

from __future__ import annotations


def add_parser(sub):
  p = sub.add_parser("robots", help="register robots (tokens) for `mtopt serve`")
  verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
  add = verbs.add_parser("add", help="register a robot, or give it a new token")
  add.add_argument("name")
  add.add_argument("--run-dir", required=True)
  add.set_defaults(func=_add)
  ls = verbs.add_parser("list", help="registered robots")
  ls.add_argument("--run-dir", required=True)
  ls.set_defaults(func=_list)


def _add(args):
  from mtopt.config import ConfigError
  from mtopt.serving import auth
  try:
    token = auth.add_robot(args.run_dir, args.name)
  except auth.AuthError as e:
    raise ConfigError(str(e)) from None
  print(token)


def _list(args):
  from mtopt.serving import auth
  for name, r in sorted(auth.load_robots(args.run_dir).items(), key=lambda x: x[1]["index"]):
    print(f"{r['index']:4d}  {name}")
