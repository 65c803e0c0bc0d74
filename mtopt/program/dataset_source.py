"""A config's `dataset` section: any RLDS/TFDS dataset on disk as a run's offline data.

    dataset.dir | dataset.tfds_name (+ dataset.data_dir)   where it is (never downloaded)
    dataset.split                                           which split
    dataset.mapping.{observation, action, task, episode_id, terminal, terminated, trim}
    dataset.tasks        {dataset task value (as str): mtopt task name}: the task table
    dataset.unmapped_tasks   error | skip (episodes of tasks not in the table)
    dataset.labels.source    field (the dataset's own reward / success field,
                             dataset.labels.field) | detector (dataset.labels.detector_dir,
                             or the run's detector)
    dataset.stream       true: batches are read from disk (`replay.disk_sampler`: an index
                         and a bounded cache); false: episodes are imported into the replay
    dataset.cache_mb, dataset.max_episode_steps, dataset.action_bounds

`from_config` checks all of it against the dataset's own TFDS feature spec and shards
before a run does any work; errors name the key or the field. `env.name = "none"` marks a
dataset without a simulator (MT-Opt's, RoboNet's): the spec and the tasks come from here,
the run is offline and nothing is evaluated in simulation.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from mtopt.config import ConfigDict, ConfigError
from mtopt.specs import EnvSpec

LABEL_SOURCES = ("field", "detector")
NO_ENV = "none"


@dataclasses.dataclass(frozen=True)
class DatasetSource:
  data_dir: str
  split: str
  mapping: object  # replay.rlds_io.FieldMapping, with slots in task-table order
  spec: EnvSpec
  task_names: tuple[str, ...]  # Slot order of a new run's registry.
  task_values: dict  # dataset task value (str) -> mtopt task name
  label_source: str
  detector_dir: str
  stream: bool
  cache_bytes: int
  skip_bad: bool

  def mapping_for(self, registry):
    """The mapping with the task table resolved to `registry`'s slots."""
    if not self.task_values:  # One task for every episode.
      return dataclasses.replace(self.mapping, task=registry.slot(self.task_names[0]))
    slots = {v: registry.slot(name) for v, name in self.task_values.items()}
    return dataclasses.replace(self.mapping, task_slots=slots)


def has_dataset(config: ConfigDict) -> bool:
  return "dataset" in config


def no_env(config: ConfigDict) -> bool:
  return config.env.get("name") == NO_ENV


def resolve_dir(d: ConfigDict) -> str:
  """`dataset.dir`, or the prepared directory of TFDS dataset `dataset.tfds_name`."""
  if bool(d.get("dir")) == bool(d.get("tfds_name")):
    raise ConfigError("dataset: set exactly one of dataset.dir (a dataset directory) and "
                      f"dataset.tfds_name (a TFDS name); got dir={d.get('dir')!r}, "
                      f"tfds_name={d.get('tfds_name')!r}")
  if d.get("dir"):
    path = os.path.abspath(os.path.expanduser(d.dir))
    where = f"dataset.dir {d.dir!r}"
  else:
    import tensorflow_datasets as tfds
    try:
      builder = tfds.builder(d.tfds_name, data_dir=d.get("data_dir") or None)
    except Exception as e:  # Unknown names, bad configs: TFDS raises many types.
      raise ConfigError(f"dataset.tfds_name {d.tfds_name!r}: {type(e).__name__}: {e}") from None
    path, where = os.fspath(builder.data_dir), f"dataset.tfds_name {d.tfds_name!r}"
  if not os.path.exists(os.path.join(path, "dataset_info.json")):
    raise ConfigError(f"{where}: no prepared dataset at {path} (no dataset_info.json); mtopt "
                      "never downloads: prepare it with `tfds build` or copy it there, and "
                      "point dataset.data_dir at its root")
  return path


def from_config(config: ConfigDict, log=print) -> DatasetSource | None:
  """The checked dataset of a config with a `dataset` section (None without one)."""
  if not has_dataset(config):
    return None
  from replay import rlds_shards
  d = config.dataset
  data_dir = resolve_dir(d)
  info = rlds_shards.builder(data_dir).info
  split = str(d.get("split", "train"))
  if split not in info.splits:
    raise ConfigError(f"dataset.split {split!r}: {data_dir} has splits {sorted(info.splits)}")
  mapping, spec, names, values = build_mapping(config, info.features, data_dir)
  label = d.labels
  source = str(label.get("source", ""))
  detector_dir = str(label.get("detector_dir", "") or "")
  if source == "detector" and detector_dir and not os.path.isdir(detector_dir):
    raise ConfigError(f"dataset.labels.detector_dir {detector_dir!r} does not exist")
  if no_env(config) and source == "detector" and not detector_dir:
    raise ConfigError("dataset.labels.source=detector without a simulator (env.name=none) "
                      "needs dataset.labels.detector_dir: a detector trained for this "
                      "dataset's observations (`mtopt tasks train`)")
  skip_bad = bool(config.train.get("skip_bad_episodes", False))
  report = rlds_shards.ShardReport()
  found = rlds_shards.check_framing(data_dir, split, skip_bad, report)
  if report.bad:
    log(f"{data_dir}: {found} episodes readable; {report.summary()}")
  return DatasetSource(data_dir, split, mapping, spec, names,
                       values if isinstance(mapping.task, str) else {},
                       source, detector_dir, bool(d.get("stream", True)),
                       int(float(d.get("cache_mb", 256)) * (1 << 20)), skip_bad)


def build_mapping(config: ConfigDict, features, where: str = "the dataset"):
  """(FieldMapping, EnvSpec, task names, task table) of `config.dataset`, checked against a
  dataset's TFDS `features` (its own feature spec: no data needed)."""
  from replay import rlds_io
  d, m = config.dataset, config.dataset.mapping
  table = {str(k): str(v) for k, v in dict(d.get("tasks", {}) or {}).items()}
  # ConfigDict keeps keys sorted as strings; slots follow the values' natural order.
  values = dict(sorted(table.items(), key=lambda kv: (not kv[0].lstrip("-").isdigit(),
                                                      int(kv[0]) if kv[0].lstrip("-").isdigit()
                                                      else 0, kv[0])))
  names = tuple(dict.fromkeys(values.values()))
  if len(names) > int(config.max_tasks):
    raise ConfigError(f"dataset.tasks names {len(names)} tasks, more than max_tasks="
                      f"{config.max_tasks}")
  unmapped = str(d.get("unmapped_tasks", "error"))
  if unmapped not in ("error", "skip"):
    raise ConfigError(f"dataset.unmapped_tasks must be error or skip, got {unmapped!r}")
  task = str(m.get("task", "") or "")
  if task and not values:
    raise ConfigError(f"dataset.mapping.task is {task!r}: dataset.tasks must map its values "
                      "to task names")
  if not task and len(names) != 1:
    raise ConfigError("dataset.mapping.task is empty: dataset.tasks must name exactly one "
                      "task (every episode's), e.g. {'0': 'pick'}")
  label = d.labels
  source = str(label.get("source", ""))
  if source not in LABEL_SOURCES:
    raise ConfigError(f"dataset.labels.source must be one of {', '.join(LABEL_SOURCES)}, "
                      f"got {source!r}")
  field = str(label.get("field", "") or "")
  if source == "field" and not field:
    raise ConfigError("dataset.labels.source=field needs dataset.labels.field (a reward or "
                      "success field of the dataset, e.g. steps/reward)")
  lo, hi = (list(d.get("action_bounds", ())) or [-np.inf, np.inf])[:2]
  mapping = rlds_io.FieldMapping(
      observation=dict(m.observation), action=list(m.action), task=task or 0,
      task_slots={v: names.index(n) for v, n in values.items()} if task else {},
      episode_id=m.get("episode_id") or None, terminal=m.get("terminal") or None,
      terminated=bool(m.get("terminated", True)), trim=bool(m.get("trim", False)),
      action_bounds=(float(lo), float(hi)), skip_unmapped_tasks=unmapped == "skip",
      success=field if source == "field" else None, label_slots=int(config.max_tasks))
  try:
    spec = rlds_io.mapped_spec(features, mapping, int(d.max_episode_steps))
  except rlds_io.MappingError as e:
    raise ConfigError(f"dataset.mapping does not fit {where}: {e}") from None
  return mapping, spec, names, values


def check_spec(source: DatasetSource, spec: EnvSpec) -> None:
  """A dataset trained beside a simulator must give what the simulator's robots see and do."""
  got = {k: (tuple(v.shape), str(v.dtype)) for k, v in source.spec.observation.items()}
  want = {k: (tuple(v.shape), str(v.dtype)) for k, v in spec.observation.items()}
  if got != want or source.spec.action.shape != spec.action.shape:
    raise ConfigError(f"dataset.mapping gives observations {got} and actions "
                      f"{source.spec.action.shape}; the env has {want} and "
                      f"{spec.action.shape}")


def check_against_config(config: ConfigDict, source: DatasetSource) -> None:
  """What a dataset run cannot do: without a simulator it is offline only."""
  if no_env(config) and config.train.mode != "offline":
    raise ConfigError(f"train.mode={config.train.mode!r} needs a simulator or robots; with "
                      "env.name=none (a dataset only) use train.mode=offline")
  if config.train.get("dataset_dir"):
    raise ConfigError("set the dataset in one place: dataset.* or train.dataset_dir, not both")


def labeller(config: ConfigDict, source: DatasetSource, run_labeller):
  """Labels for the dataset's episodes: its own field (already on every episode), or a
  detector (`dataset.labels.detector_dir`, else the run's labeller)."""
  if source.label_source == "field":
    return None
  if source.detector_dir:
    from success_detectors.detector import SuccessDetector
    detector = SuccessDetector.load(source.detector_dir)
    if detector.spec.observation != source.spec.observation:
      raise ConfigError(f"dataset.labels.detector_dir {source.detector_dir!r}: the detector "
                        "was trained for other observations than the dataset mapping gives")
    return detector
  return run_labeller
