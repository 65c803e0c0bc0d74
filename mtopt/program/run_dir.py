"""The run directory: what a run keeps so that the same command resumes it.

RUN/config.json is the resolved config of the run's first start. A later start on the same
directory must match it except for RESUMABLE keys (budgets, cadences, how many actors and
evaluators, where the nodes run): anything else (the env, the tasks, the networks, the
replay layout, the labels) would silently change what the stored data and checkpoints
mean, so it is refused, naming the keys. RUN/progress.json records the learner step it was saved at, the episodes
imported and collected (acknowledged by the replay), and the evaluations so far.
"""

from __future__ import annotations

import json
import os

from mtopt.config import ConfigDict, ConfigError
from mtopt.durable_files import write_json

# Keys (or prefixes ending in ".") that may differ when a run is resumed.
RESUMABLE = ("run_dir", "learner.num_steps", "learner.log_every", "learner.checkpoint_every",
             "learner.publish_every", "train.eval_every", "train.wait_for_data_seconds",
             "train.skip_bad_episodes", "eval.", "actors.num_actors", "actors.num_cpus",
             "actors.new_task_share", "review.",
             # Where the nodes run (`program.placement`): a run may move between machines.
             "program.", "labeller.", "replay.num_cpus", "replay.memory_gb", "replay.resources",
             "learner.num_cpus", "learner.num_gpus", "learner.memory_gb", "learner.resources")


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[prefix + k] = v
  return out


def _as_json(config: ConfigDict) -> dict:
  return json.loads(json.dumps(config.to_dict(), default=list))  # Tuples as saved: lists.


def config_differences(saved: dict, config: ConfigDict) -> dict[str, tuple]:
  """Dotted key -> (saved value, new value) for the keys a resume may not change."""
  old, new = _flat(saved), _flat(_as_json(config))
  missing = object()
  diff = {k: (old.get(k, missing), new.get(k, missing)) for k in sorted(set(old) | set(new))
          if old.get(k, missing) != new.get(k, missing)}
  return {k: tuple(None if x is missing else x for x in v) for k, v in diff.items()
          if not any(k == r or (r.endswith(".") and k.startswith(r)) for r in RESUMABLE)}


def open_run_dir(config: ConfigDict) -> str:
  """Creates or reopens `config.run_dir`; refuses a config incompatible with the saved one
  (ConfigError naming the keys); saves the config. Returns the absolute path."""
  run_dir = os.path.abspath(config.run_dir)
  path = os.path.join(run_dir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      diff = config_differences(json.load(f), config)
    if diff:
      keys = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in
                       ((k, *v) for k, v in list(diff.items())[:8]))
      more = f" and {len(diff) - 8} more" if len(diff) > 8 else ""
      raise ConfigError(f"{run_dir} was started with a different config ({keys}{more}); "
                        "resume it with the original values or use a new run_dir (only "
                        f"{', '.join(RESUMABLE)} may change on resume)")
  os.makedirs(run_dir, exist_ok=True)
  write_json(path, config.to_dict(), indent=2)
  return run_dir


def load_run_config(run_dir: str) -> ConfigDict:
  path = os.path.join(run_dir, "config.json")
  if not os.path.exists(path):
    raise ConfigError(f"{run_dir}: not a run directory (no config.json)")
  with open(path) as f:
    return ConfigDict(json.load(f))


def load_progress(run_dir: str) -> dict:
  path = os.path.join(run_dir, "progress.json")
  if not os.path.exists(path):
    return {"step": 0, "imported_episodes": 0, "collected_episodes": 0, "evaluations": []}
  with open(path) as f:
    return {"step": 0, **json.load(f)}


def save_progress(run_dir: str, progress: dict) -> None:
  write_json(os.path.join(run_dir, "progress.json"), progress, indent=1)
