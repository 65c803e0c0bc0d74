"""`mtopt collect`: a fleet of simulated robots collects episodes into an RLDS dataset.

    mtopt collect --config configs/tabletop_state.py --episodes 500 --out data/tt500 \
        --actors 2 --mixture reach_red=4,push_blue_to_red=0.2 --config.actors.epsilon=0.2

The dataset loads with `tfds.builder_from_directory(OUT)`; task and robot ids are in each
episode's metadata, and the task names (by slot) in the dataset's metadata.
"""

from __future__ import annotations

import collections
import os
import time


from mtopt import cli
from mtopt.config import ConfigError


def add_parser(sub):
  p = sub.add_parser("collect", help="collect episodes with a fleet of robot actors into "
                                     "an RLDS dataset")
  cli.add_config_arg(p)
  p.add_argument("--episodes", type=int, required=True, help="number of episodes to collect")
  p.add_argument("--out", required=True, help="new dataset directory")
  p.add_argument("--actors", type=int, default=None,
                 help="number of robot actors (default: config actors.num_actors); with 1 "
                      "the dataset is a function of the config's seed")
  p.add_argument("--mixture", default="",
                 help="task weights NAME=W,...; unlisted tasks get weight 1 (implies the "
                      "weighted scheduler); e.g. lift_red=0.05 makes lift_red rare")
  p.add_argument("--episodes-per-call", type=int, default=4,
                 help="episodes an actor runs per request (a crash drops at most these)")
  p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
  p.add_argument("--no-progress", action="store_true", help="no live progress display")
  p.set_defaults(func=run)


def parse_mixture(text: str, tasks: list[str]) -> list[float]:
  """"a=2,b=0.1" -> one weight per task (default 1); ConfigError naming a bad entry."""
  weights = dict.fromkeys(tasks, 1.0)
  for item in filter(None, (s.strip() for s in text.split(","))):
    name, sep, value = item.partition("=")
    if not sep:
      raise ConfigError(f"--mixture entry {item!r}: expected NAME=WEIGHT")
    if name.strip() not in weights:
      raise ConfigError(f"--mixture: unknown task {name.strip()!r}; known: {', '.join(tasks)}")
    try:
      w = float(value)
    except ValueError:
      raise ConfigError(f"--mixture entry {item!r}: weight is not a number") from None
    if w < 0:
      raise ConfigError(f"--mixture entry {item!r}: weight must be >= 0")
    weights[name.strip()] = w
  if sum(weights.values()) <= 0:
    raise ConfigError("--mixture: all weights are zero")
  return [weights[t] for t in tasks]


def run(args) -> int:
  from mtopt import envs
  from mtopt.program import collection, nodes
  from mtopt.tasks import TaskRegistry

  config = args.config
  if args.episodes < 1:
    raise ConfigError(f"--episodes must be >= 1, got {args.episodes}")
  num_actors = args.actors if args.actors is not None else int(config.actors.num_actors)
  if num_actors < 1:
    raise ConfigError(f"number of actors must be >= 1, got {num_actors}")
  env_config = config.env.to_dict()
  try:
    probe = envs.make(env_config)
  except envs.EnvError as e:
    raise ConfigError(f"env: {e}") from None
  tasks = probe.task_names()
  probe.close()
  registry = TaskRegistry.from_names(int(config.max_tasks), tasks)
  overrides = {"tasks": tasks}
  if args.mixture:
    overrides.update(scheduler="weighted", task_weights=parse_mixture(args.mixture, tasks))
  kwargs = nodes.scripted_actor_kwargs(config, registry, **overrides)
  ray = nodes.init_ray(config)
  stats = _Stats(tasks, registry)
  with _progress(stats, args.episodes, disabled=args.no_progress) as update:
    written, lost = collection.collect_dataset(
        config, ray, registry, args.out, args.episodes, kwargs, num_actors,
        args.episodes_per_call, args.overwrite,
        on_episode=lambda ep: (stats.add(ep), update()))
  print(stats.summary())
  if lost:
    print(f"{len(lost)} episode(s) dropped by actor crashes (ids {lost[:10]}"
          f"{'...' if len(lost) > 10 else ''}); collection continued")
  print(f"wrote {written} episodes to {os.path.abspath(args.out)}")
  return 0


class _Stats:
  """Episodes and ground-truth successes per task, for the progress display."""

  def __init__(self, tasks: list[str], registry):
    self.tasks, self.registry = tasks, registry
    self.attempts = collections.Counter()
    self.successes = collections.Counter()
    self.total = 0
    self.start = time.monotonic()

  def add(self, ep) -> None:
    name = self.registry.name(ep.task_id)
    self.attempts[name] += 1
    if ep.success is not None and ep.success[ep.task_id]:
      self.successes[name] += 1
    self.total += 1

  @property
  def rate(self) -> float:
    return self.total / max(time.monotonic() - self.start, 1e-9)

  def table(self):
    from rich.table import Table
    t = Table(box=None, pad_edge=False)
    t.add_column("task")
    t.add_column("episodes", justify="right")
    t.add_column("successes", justify="right")
    t.add_column("rate", justify="right")
    for name in self.tasks:
      n, s = self.attempts[name], self.successes[name]
      t.add_row(name, str(n), str(s), f"{s / n:.0%}" if n else "-")
    return t

  def summary(self) -> str:
    s = sum(self.successes.values())
    lines = [f"{self.total} episodes in {time.monotonic() - self.start:.1f} s "
             f"({self.rate:.1f} episodes/s), {s} successes ({s / max(self.total, 1):.0%})"]
    for name in self.tasks:
      n, k = self.attempts[name], self.successes[name]
      lines.append(f"  {name:28s} {n:6d} episodes  {k:6d} successes"
                   + (f"  {k / n:5.0%}" if n else ""))
    return "\n".join(lines)


class _progress:
  """A live progress bar (episodes, rate) above a per-task success table."""

  def __init__(self, stats: _Stats, total: int, disabled: bool = False):
    self.stats, self.total, self.disabled = stats, total, disabled

  def __enter__(self):
    if self.disabled:
      return lambda: None
    from rich.console import Group
    from rich.live import Live
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
        TimeElapsedColumn
    self._bar = Progress(TextColumn("collecting"), BarColumn(), MofNCompleteColumn(),
                         TextColumn("{task.fields[rate]:.1f} episodes/s"),
                         TextColumn("{task.fields[succ]} successes"), TimeElapsedColumn())
    self._task = self._bar.add_task("collect", total=self.total, rate=0.0, succ=0)
    self._live = Live(Group(self._bar, self.stats.table()), refresh_per_second=4,
                      transient=True)
    self._live.__enter__()
    self._last = 0.0

    def update():
      now = time.monotonic()
      if now - self._last < 0.25 and self.stats.total < self.total:
        return
      self._last = now
      self._bar.update(self._task, completed=self.stats.total, rate=self.stats.rate,
                       succ=sum(self.stats.successes.values()))
      self._live.update(Group(self._bar, self.stats.table()))
    return update

  def __exit__(self, *exc):
    if not self.disabled:
      self._live.__exit__(*exc)
