"""A run's offline dataset (given, or collected by scripted noisy experts) and its import
into the replay, through `replay.rlds_io.import_rlds` and its checks."""

from __future__ import annotations

import json
import os

import numpy as np

from mtopt.config import ConfigDict, ConfigError
from mtopt.program import nodes
from mtopt.program.collection import collect_dataset
from mtopt.tasks import TaskRegistry


def check_dataset(config: ConfigDict, spec, log=print) -> None:
  """`train.dataset_dir`, before any work: an mtopt dataset for this env spec and
  `max_tasks`, its shards whole (record headers walked; see `rlds_shards.check_framing`)."""
  from mtopt import rlds_format
  from replay import rlds_shards
  data_dir = config.train.dataset_dir
  if not data_dir or config.train.mode not in ("offline", "mixed"):
    return
  saved, max_tasks, _ = rlds_format.read_metadata(data_dir)
  if saved is None:
    raise ConfigError(f"train.dataset_dir {data_dir!r}: not an mtopt dataset (no env_spec in "
                      "metadata.json); external datasets go in a `dataset` section "
                      "(see configs/mt_opt_rlds.py)")
  if max_tasks != int(config.max_tasks):
    raise ConfigError(f"train.dataset_dir {data_dir!r} was written with max_tasks={max_tasks}, "
                      f"the config has max_tasks={config.max_tasks}")
  if saved.observation != spec.observation or saved.action.shape != spec.action.shape:
    raise ConfigError(f"train.dataset_dir {data_dir!r} holds episodes of another env spec "
                      f"(observations {_shapes(saved)}, action {saved.action.shape}) than "
                      f"the config's env ({_shapes(spec)}, action {spec.action.shape})")
  report = rlds_shards.ShardReport()
  n = rlds_shards.check_framing(data_dir, "train",
                                bool(config.train.get("skip_bad_episodes", False)), report)
  if report.bad:
    log(f"{data_dir}: {n} episodes readable; {report.summary()}")


def _shapes(spec) -> dict:
  return {k: tuple(s.shape) for k, s in spec.observation.items()}


def offline_dataset(config: ConfigDict, ray, registry: TaskRegistry, run_dir: str, log=print
                    ) -> str:
  """`train.dataset_dir`, or a dataset of scripted noisy experts collected into the run
  (`ray` None: Ray is started only if that collection is needed)."""
  if config.train.dataset_dir:
    return config.train.dataset_dir
  out = os.path.join(run_dir, "data", "offline")
  if os.path.exists(os.path.join(out, "dataset_info.json")):
    return out
  n = int(config.train.offline_episodes)
  log(f"collecting {n} offline episodes with {config.actors.num_actors} scripted, noisy actors")
  collect_dataset(config, ray or nodes.init_ray(config), registry, out, n,
                  nodes.scripted_actor_kwargs(config, registry, "scripted"))
  return out


def stored_labels(data_dir: str, registry: TaskRegistry) -> dict[int, np.ndarray]:
  """episode id -> labels from DATA_DIR/labels.npz (written by `mtopt tasks add` and bulk
  relabelling), if they were made for this registry's slots; else {} (the labeller runs)."""
  from success_detectors import label_store
  stored = label_store.read_labels(data_dir)
  if stored is None or stored.labels.shape[1] != registry.max_tasks:
    return {}
  if any(stored.task_names[t.slot] != t.name for t in registry.active()):
    return {}  # Labelled for other task slots: stale.
  return stored.by_episode()


def _stored_or(stored: dict[int, np.ndarray], labeller):
  """A labeller that takes stored labels where there are some and asks `labeller` for the rest."""
  def label(episodes):
    missing = [i for i, ep in enumerate(episodes) if ep.episode_id not in stored]
    out = np.zeros((len(episodes), len(next(iter(stored.values())))), np.float32)
    if missing:
      out[missing] = labeller([episodes[i] for i in missing])
    for i, ep in enumerate(episodes):
      if ep.episode_id in stored:
        out[i] = stored[ep.episode_id]
    return out
  return label


def import_offline(config: ConfigDict, replay, registry: TaskRegistry, data_dir: str,
                   labeller, log=print, source=None) -> int:
  """Imports `data_dir` into `replay` (resuming an import a crash cut short: the replay's
  acknowledged episodes are the dataset's first ones); returns the episodes it holds from it.

  Episodes collected for tasks the run does not train are left out when it does not share
  (`replay.sharing=none`); stored labels made for the run's slots are used where they exist.
  A replay node (`RemoteReplay`) runs the import itself, where it is.
  """
  if hasattr(replay, "import_offline"):  # A RemoteReplay: the node imports (see above).
    return replay.import_offline(config, registry, data_dir, log, source)
  from replay.rlds_io import import_rlds
  from replay.rlds_shards import ShardReport
  stored = stored_labels(data_dir, registry) if config.train.labels == "learned" else {}
  if stored:
    log(f"using the detector labels stored with {data_dir} for {len(stored)} episodes")
  already = replay.acknowledged()
  if already:
    log(f"resuming the import of {data_dir} after {already} episodes")
  report = ShardReport()
  mapping = source.mapping_for(registry) if source is not None else None
  if mapping is not None and not stored:
    stored_or = labeller
  else:
    stored_or = _stored_or(stored, labeller) if stored else None
  n = already + import_rlds(replay, data_dir, mapping, labeller=stored_or, group=256,
                            skip=already, split=source.split if source else "train",
                            only_active_tasks=replay.sharing == "none",
                            skip_bad=bool(config.train.get("skip_bad_episodes", False)),
                            report=report)
  if report.bad:
    log(f"{data_dir}: {report.summary()}")
  counts = replay.counts()
  held = ", ".join(f"{registry.name(k)} {counts[k]['success']}/"
                   f"{counts[k]['success'] + counts[k]['failure']}" for k in replay.slots)
  log(f"imported {n} episodes from {data_dir}; successes/items per task: {held}")
  return n


def disk_batches(config: ConfigDict, source, registry: TaskRegistry, labeller, run_dir: str,
                 slots, log=print):
  """A sampler factory (batch size -> `replay.disk_sampler.DiskSampler`) over the config's
  dataset, streamed from disk. Its index (where each episode lies, its task and success
  bits) is built once and kept in RUN/dataset_index.npz for a resumed run."""
  from replay.disk_sampler import DiskSampler, EpisodeIndex
  from mtopt.program import relabel
  from mtopt.durable_files import write_json
  path = os.path.join(run_dir, "dataset_index.npz")
  mapping = source.mapping_for(registry)
  # The index holds success bits: made again when another labeller (a retrained or
  # extended detector, `mtopt tasks add`) or another dataset would label it.
  made_by = {"data_dir": source.data_dir, "split": source.split,
             "labels": relabel.stamp(labeller) if labeller is not None
             else {"field": mapping.success}}
  stamp_path = os.path.join(run_dir, "dataset_index.json")
  saved = None
  if os.path.exists(stamp_path):
    with open(stamp_path) as f:
      saved = json.load(f)
  if os.path.exists(path) and saved == json.loads(json.dumps(made_by)):
    index = EpisodeIndex.load(path)
    log(f"dataset index: {index.size} episodes (from {path})")
  else:
    if os.path.exists(path):
      log(f"{path} was made with another labeller or dataset: indexing again")
    def labels_of(episodes):
      missing = [i for i, ep in enumerate(episodes) if ep.labels is None]
      if missing and labeller is None:
        raise ConfigError(f"{source.data_dir}: episodes without labels and no detector")
      out = np.zeros((len(episodes), registry.max_tasks), np.float32)
      if missing:
        out[missing] = labeller([episodes[i] for i in missing])
      for i, ep in enumerate(episodes):
        if ep.labels is not None:
          out[i] = ep.labels
      return out
    from replay.rlds_shards import ShardReport
    report = ShardReport()
    log(f"indexing {source.data_dir} (one pass; labels from {source.label_source})")
    index = EpisodeIndex.build(source.data_dir, mapping, source.spec, registry.max_tasks,
                               labels_of, source.split, float(config.detector.threshold),
                               source.skip_bad, report, log=log)
    if report.bad:
      log(f"{source.data_dir}: {report.summary()}")
    index.save(path)
    write_json(stamp_path, made_by, indent=1)
  if index.size == 0:
    raise ConfigError(f"{source.data_dir}: no episode of the run's tasks to train from")
  success = index.successes(registry.max_tasks)
  held = ", ".join(f"{registry.name(k)} {int(success[index.task == k, k].sum())}/"
                   f"{int((index.task == k).sum())}" for k in slots)
  log(f"streaming {index.size} episodes from {source.data_dir}; own-task successes/episodes: "
      f"{held}")
  r = config.replay

  def make(batch_size: int):
    return DiskSampler(source.data_dir, index, source.spec, registry.max_tasks, mapping,
                       batch_size, slots, rule=r.sharing, **nodes.batch_composition(config),
                       transitions_per_sample=int(r.transitions_per_sample),
                       min_size=int(r.min_size), cache_bytes=source.cache_bytes,
                       seed=int(config.seed))
  return make
