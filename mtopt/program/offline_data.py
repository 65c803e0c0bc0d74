"""A run's offline dataset (given, or collected by scripted noisy experts) and its import
into the replay, through `replay.rlds_io.import_rlds` and its checks."""

from __future__ import annotations

import os

import numpy as np

from mtopt.config import ConfigDict
from mtopt.program import nodes
from mtopt.program.collection import collect_dataset
from mtopt.tasks import TaskRegistry


def offline_dataset(config: ConfigDict, ray, registry: TaskRegistry, run_dir: str, log=print
                    ) -> str:
  """`train.dataset_dir`, or a dataset of scripted noisy experts collected into the run."""
  if config.train.dataset_dir:
    return config.train.dataset_dir
  out = os.path.join(run_dir, "data", "offline")
  if os.path.exists(os.path.join(out, "dataset_info.json")):
    return out
  n = int(config.train.offline_episodes)
  log(f"collecting {n} offline episodes with {config.actors.num_actors} scripted, noisy actors")
  collect_dataset(config, ray, registry, out, n,
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
                   labeller, log=print) -> int:
  """Imports `data_dir` into `replay` (resuming an import a crash cut short: the replay's
  acknowledged episodes are the dataset's first ones); returns the episodes it holds from it.

  Episodes collected for tasks the run does not train are left out when it does not share
  (`replay.sharing=none`); stored labels made for the run's slots are used where they exist.
  """
  from replay.rlds_io import import_rlds
  stored = stored_labels(data_dir, registry) if config.train.labels == "learned" else {}
  if stored:
    log(f"using the detector labels stored with {data_dir} for {len(stored)} episodes")
  already = replay.acknowledged()
  if already:
    log(f"resuming the import of {data_dir} after {already} episodes")
  n = already + import_rlds(replay, data_dir, labeller=_stored_or(stored, labeller) if stored
                            else None, group=256, skip=already,
                            only_active_tasks=replay.sharing == "none")
  counts = replay.counts()
  held = ", ".join(f"{registry.name(k)} {counts[k]['success']}/"
                   f"{counts[k]['success'] + counts[k]['failure']}" for k in replay.slots)
  log(f"imported {n} episodes from {data_dir}; successes/items per task: {held}")
  return n
