"""Every config value checked before a run does any work.

`check_config` runs first in `mtopt train` (before the run directory, Ray, the detector or
any data): a bad value found only after minutes of detector training and collection costs
those minutes. It collects every problem and raises one ConfigError listing them, each
naming its key. What can be checked only against data (a dataset's feature spec, its
shards) is checked by `mtopt.program.dataset_source` right after, still before Ray.
"""

from __future__ import annotations

import os

from mtopt.config import ConfigDict, ConfigError

MODES = ("offline", "online", "mixed", "goals")
LABELS = ("learned", "ground_truth")
SCHEDULERS = ("uniform", "weighted", "underperforming")
POLICIES = ("scripted", "random", "cem")
ACTOR_MODES = ("ray", "served")
SHARING = ("none", "all", "conservative")


class _Problems:
  def __init__(self, config: ConfigDict):
    self.config, self.found = config, []

  def get(self, key: str, default=None):
    node = self.config
    for part in key.split("."):
      if not hasattr(node, "keys") or part not in node:
        return default
      node = node[part]
    return node

  def need(self, key: str, ok, what: str, when: bool = True) -> None:
    """Records `key: must be WHAT, got VALUE` unless `ok(value)` (a missing key is skipped:
    configs need not have every section)."""
    value = self.get(key, _MISSING)
    if not when or value is _MISSING:
      return
    try:
      good = bool(ok(value))
    except (TypeError, ValueError):
      good = False
    if not good:
      self.found.append(f"{key} must be {what}, got {value!r}")

  def one_of(self, key: str, choices, when: bool = True) -> None:
    self.need(key, lambda v: v in choices, f"one of {', '.join(choices)}", when)


_MISSING = object()


def _at_least(lo):
  return lambda v: v >= lo


def _in(lo, hi, hi_open=False):
  return lambda v: lo <= v < hi if hi_open else lo <= v <= hi


def check_config(config: ConfigDict) -> None:
  """Raises one ConfigError listing every bad value of a train config, each by its key."""
  p = _Problems(config)
  p.need("max_tasks", _at_least(1), ">= 1")
  mode = p.get("train.mode")
  p.one_of("train.mode", MODES)
  p.one_of("train.labels", LABELS)
  p.need("train.online_fraction", _in(0.0, 1.0, hi_open=True), "in [0, 1)",
         when=mode == "mixed")
  p.need("train.eval_every", _at_least(1), ">= 1")
  p.need("train.offline_episodes", _at_least(1), ">= 1",
         when=mode in ("offline", "mixed", "goals") and not p.get("train.dataset_dir"))
  p.need("train.detector_episodes_per_task", _at_least(1), ">= 1")
  p.need("train.detector_midway_states", _at_least(0), ">= 0")
  p.need("train.wait_for_data_seconds", _at_least(0), ">= 0")
  p.need("train.explore_gaussian_std", _at_least(0), ">= 0")
  p.need("train.explore_epsilon", _in(0, 1), "in [0, 1]")
  dataset_dir = p.get("train.dataset_dir")
  if dataset_dir and not os.path.exists(os.path.join(dataset_dir, "dataset_info.json")):
    p.found.append(f"train.dataset_dir {dataset_dir!r} is not an RLDS/TFDS dataset "
                   "(no dataset_info.json there)")
  # Replay.
  p.need("replay.max_size", _at_least(1), ">= 1")
  p.need("replay.min_size", _at_least(1), ">= 1")
  p.need("replay.min_size", lambda v: v <= p.get("replay.max_size"),
         f"<= replay.max_size ({p.get('replay.max_size')})")
  p.need("replay.max_episodes", _at_least(0), ">= 0")
  p.need("replay.samples_per_insert", _at_least(0), ">= 0")
  p.one_of("replay.sharing", SHARING)
  p.need("replay.success_fraction", _in(0, 1), "in [0, 1]")
  p.need("replay.transitions_per_sample", _at_least(1), ">= 1")
  p.need("detector.threshold", _in(0, 1, hi_open=True), "in [0, 1)")
  p.need("train.state_label_confidence", _in(0, 1, hi_open=True), "in [0, 1)")
  # Actors and evaluation (the collecting robots of online / mixed runs, scripted
  # collection of offline data, the evaluators).
  p.need("actors.num_actors", _at_least(1), ">= 1")
  p.need("actors.num_cpus", _at_least(0), ">= 0")
  p.one_of("actors.mode", ACTOR_MODES)
  p.one_of("actors.scheduler", SCHEDULERS)
  p.one_of("actors.policy", POLICIES)
  for key in ("actors.epsilon", "actors.sticky_prob", "actors.early_terminate_prob"):
    p.need(key, _in(0, 1), "in [0, 1]")
  p.need("actors.gaussian_std", _at_least(0), ">= 0")
  p.need("actors.sticky_steps", _at_least(1), ">= 1")
  p.need("actors.task_weights", lambda w: all(x >= 0 for x in w) and (not w or sum(w) > 0),
         "weights >= 0 with a positive sum")
  p.need("learner.state_label_weight", lambda v: v == 0 or (
      p.get("env.name") == "tabletop" and p.get("env.observation") == "state"),
      "0 unless the env judges its states (tabletop, env.observation=state)",
      when=p.get("train.labels") == "ground_truth")
  p.need("eval.num_actors", _at_least(1), ">= 1")
  p.need("eval.episodes_per_task", _at_least(0), ">= 0")
  _check_sections(config, p)
  if mode == "goals":
    from mtopt.program import goal_training
    p.found += goal_training.check(config)
  if p.found:
    raise ConfigError("bad config value(s): " + "; ".join(p.found))


def _check_sections(config: ConfigDict, p: _Problems) -> None:
  """The learner, CEM and detector sections, through their own dataclasses' checks."""
  from learners.config import LearnerConfig
  try:
    LearnerConfig.from_config(config)
  except (ConfigError, TypeError, ValueError) as e:
    p.found.append(str(e))
  if p.get("train.labels") == "learned" and "detector" in config:
    from success_detectors.detector import DetectorConfig
    try:
      DetectorConfig.from_dict(config.detector)
    except (TypeError, ValueError) as e:
      p.found.append(f"detector: {e}")
