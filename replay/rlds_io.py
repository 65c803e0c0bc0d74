"""RLDS datasets in and out of the replay.

Import: an RLDS (or other TFDS) dataset on disk, read with `tfds.builder_from_directory`,
goes through a `FieldMapping` (its fields -> our Episode), a success labeller (any callable
`labeller(episodes) -> float32 [N, max_tasks]`) and into the replay. An mtopt dataset
(written by `export_rlds` / `mtopt.rlds_format.DatasetWriter`) needs no mapping and keeps
its labels. Export: the replay's stored episodes, labels included, back out as a
TFDS-loadable dataset through `mtopt.rlds_format.DatasetWriter`.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from mtopt import rlds_format
from mtopt.episode import Episode, EpisodeError
from mtopt.specs import ArraySpec, BoundedArraySpec, EnvSpec
from mtopt.tf_setup import tf
from replay import rlds_shards

import tensorflow_datasets as tfds  # noqa: E402

Labeller = Callable[[Sequence[Episode]], np.ndarray]


class MappingError(rlds_format.DatasetError):
  """A field mapping does not fit a dataset; the message names the field."""


@dataclasses.dataclass(frozen=True)
class FieldMapping:
  """Where an external dataset keeps what an Episode needs.

  Paths are '/'-joined keys into one example; fields under `steps/` are per step (stacked
  over time), other sequence fields (e.g. RoboNet's `video`) are per episode [L, ...].

  Attributes:
    observation: our observation name -> path, e.g. {"image": "steps/observation/image"}.
    action: paths concatenated (flattened, cast to float32) into our action vector.
    task: a constant task slot, or a path to a per-episode field (string or int) looked up
      in `task_slots`.
    task_slots: task field value -> slot (strings as str, ints as int or as str).
    skip_unmapped_tasks: leave out episodes whose task value is not in `task_slots`
      (`example_to_episode` returns None); otherwise they are an error.
    success: optional path to the dataset's own outcome (a per-step reward, or a success
      flag or score per step or episode): the episode is labelled a success for its task
      where any value is > 0, and a failure for every other task (`label_slots` wide).
    episode_id: optional path to an int (or string: hashed) per-episode id.
    terminated: whether imported episodes end in a terminal state (without `terminal`).
    terminal: optional path to a per-step bool (RLDS `steps/is_terminal`); an episode is
      terminated where its last value is true.
    trim: cut observation fields to a common length L and actions to L-1 (datasets whose
      fields differ in length); otherwise mismatched lengths are an error.
    action_bounds: (minimum, maximum) for the action spec.
  """

  observation: Mapping[str, str]
  action: Sequence[str]
  task: int | str = 0
  task_slots: Mapping = dataclasses.field(default_factory=dict)
  episode_id: str | None = None
  terminated: bool = True
  terminal: str | None = None
  trim: bool = False
  skip_unmapped_tasks: bool = False
  success: str | None = None
  label_slots: int = 0
  action_bounds: tuple[float, float] = (-np.inf, np.inf)


def _feature_at(features, path: str):
  """The TFDS feature at `path` (a tensor), and whether it is a per-step field."""
  try:
    node, per_step = rlds_shards.feature_at(features, path)
  except rlds_format.DatasetError as e:
    raise MappingError(str(e)) from None
  if isinstance(node, tfds.features.Dataset):
    raise MappingError(f"{path}: is a nested dataset, not a tensor")
  return node, per_step


def _step_shape(feature, per_step: bool, path: str) -> tuple[tuple[int, ...], np.dtype]:
  shape, dtype = tuple(feature.shape), np.dtype(feature.np_dtype)
  if not per_step:  # A per-episode sequence: drop its time axis.
    if not shape or shape[0] is not None:
      raise MappingError(f"{path}: expected a per-step field or a sequence [None, ...], "
                         f"got shape {shape}")
    shape = shape[1:]
  if any(d is None for d in shape):
    raise MappingError(f"{path}: variable shape {shape} per step; need a fixed shape")
  return shape, dtype


def observation_layout(shape: tuple, dtype: np.dtype) -> tuple[tuple[int, ...], np.dtype]:
  """What an observation field becomes per step: uint8 images [H, W, C] stay; everything
  else (scalars, bools, matrices) becomes a float32 vector, as the networks read it."""
  if np.dtype(dtype) == np.uint8 and len(shape) == 3:
    return tuple(shape), np.dtype(np.uint8)
  return (int(np.prod(shape, dtype=int)),), np.dtype(np.float32)


def _as_observation(v: np.ndarray) -> np.ndarray:
  """[L, ...] per-step values in `observation_layout`."""
  if v.dtype == np.uint8 and v.ndim == 4:
    return v
  return v.reshape(len(v), -1).astype(np.float32)


def mapped_spec(features, mapping: FieldMapping, max_episode_steps: int) -> EnvSpec:
  """The EnvSpec that `mapping` yields for a dataset with TFDS `features`.

  Checks every mapped path against the dataset's own feature spec.
  """
  obs = {}
  for name, path in mapping.observation.items():
    shape, dtype = _step_shape(*_feature_at(features, path), path)
    obs[name] = ArraySpec(*observation_layout(shape, dtype), name)
  dim = 0
  for path in mapping.action:
    shape, dtype = _step_shape(*_feature_at(features, path), path)
    if not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
      raise MappingError(f"{path}: action fields must be numeric or bool, got {dtype}")
    dim += int(np.prod(shape, dtype=int))
  if not mapping.action or dim == 0:
    raise MappingError("action: map at least one non-empty field")
  if isinstance(mapping.task, str):
    _feature_at(features, mapping.task)
  for path in (mapping.episode_id, mapping.terminal, mapping.success):
    if path:
      _feature_at(features, path)
  if mapping.success and mapping.label_slots < 1:
    raise MappingError("success: set label_slots (the label vector's width, max_tasks)")
  lo, hi = mapping.action_bounds
  return EnvSpec(obs, BoundedArraySpec((dim,), np.float32, "action", lo, hi), max_episode_steps)


def _get(ex: Mapping, path: str):
  node = ex
  for key in path.split("/"):
    node = node[key]
  return node


def _stack_steps(ex):
  """Stacks an example's nested `steps` dataset into tensors [T, ...] inside tf.data."""
  if "steps" in ex and isinstance(ex["steps"], tf.data.Dataset):
    return {**ex, "steps": ex["steps"].batch(1 << 20).get_single_element()}
  return ex


def _scalar(v):
  v = np.asarray(v)
  if v.dtype.kind in "SO":
    return v.item().decode() if isinstance(v.item(), bytes) else str(v.item())
  return v.item()


def example_to_episode(ex: Mapping, mapping: FieldMapping, index: int = 0) -> Episode | None:
  """One decoded (numpy) example, steps stacked, as an Episode (without labels); None for
  a task left out by `skip_unmapped_tasks`."""
  obs = {name: _as_observation(np.asarray(_get(ex, path)))
         for name, path in mapping.observation.items()}
  parts = [np.asarray(_get(ex, p)) for p in mapping.action]
  parts = [p.reshape(p.shape[0], -1).astype(np.float32) for p in parts]
  lengths = {len(v) for v in obs.values()}
  act_lengths = {len(p) for p in parts}
  if mapping.trim:
    n = min(lengths | {a + 1 for a in act_lengths})
    obs = {k: v[:n] for k, v in obs.items()}
    parts = [p[:n - 1] for p in parts]
  elif len(lengths) != 1 or len(act_lengths) != 1:
    raise MappingError(f"example {index}: observation lengths {sorted(lengths)} and action "
                       f"lengths {sorted(act_lengths)} differ; set trim=True to cut them")
  n_obs = len(next(iter(obs.values())))
  actions = np.concatenate(parts, axis=1)
  if len(actions) == n_obs:  # RLDS: the last step's action is not taken.
    actions = actions[:-1]
  if len(actions) != n_obs - 1:
    raise MappingError(f"example {index}: {len(actions)} actions for {n_obs} observations")
  if isinstance(mapping.task, str):
    key = _scalar(_get(ex, mapping.task))
    slot = mapping.task_slots.get(key, mapping.task_slots.get(str(key)))  # Config keys: str.
    if slot is None:
      if mapping.skip_unmapped_tasks:
        return None
      raise MappingError(f"example {index}: task {key!r} has no slot in task_slots "
                         f"(known: {sorted(map(str, mapping.task_slots))[:20]})")
    task = int(slot)
  else:
    task = int(mapping.task)
  episode_id = index
  if mapping.episode_id:
    v = _scalar(_get(ex, mapping.episode_id))
    episode_id = int(v) if isinstance(v, (int, np.integer)) else \
        int.from_bytes(str(v).encode()[-7:].rjust(7, b"\0"), "big")
  terminated = (bool(np.asarray(_get(ex, mapping.terminal)).reshape(-1)[-1])
                if mapping.terminal else mapping.terminated)
  labels = None
  if mapping.success:
    value = np.asarray(_get(ex, mapping.success), np.float32).reshape(-1)
    labels = np.zeros(mapping.label_slots, np.float32)
    labels[task] = float(value.size > 0 and value.max() > 0)
  return Episode(observations=obs, actions=actions, task_id=task, episode_id=episode_id,
                 terminated=terminated, labels=labels)


def unflatten(flat: Mapping[str, np.ndarray]) -> dict:
  """{"steps/observation/x": v} -> {"steps": {"observation": {"x": v}}}."""
  out: dict = {}
  for path, v in flat.items():
    node = out
    *parents, leaf = path.split("/")
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = v
  return out


def located_examples(source, split: str = "train", paths: Sequence[str] | None = None,
                     skip_bad: bool = False, report: rlds_shards.ShardReport | None = None
                     ) -> Iterator[tuple[rlds_shards.Record | None, dict]]:
  """(where it lies, decoded numpy example with `steps` stacked) from a dataset directory
  (read shard by shard: a bad shard names its file and episode, see `rlds_shards`) or a
  tf.data.Dataset of examples (where: None)."""
  if isinstance(source, (str, os.PathLike)):
    for record, flat in rlds_shards.read_decoded(os.fspath(source), split, paths, skip_bad,
                                                 report):
      yield record, unflatten(flat)
    return
  ds = source.map(_stack_steps, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  for ex in tfds.as_numpy(ds.prefetch(2)):
    yield None, ex


def examples(source, split: str = "train") -> Iterator[dict]:
  """Decoded numpy examples with `steps` stacked, from a dataset dir or a tf.data.Dataset."""
  for _, ex in located_examples(source, split):
    yield ex


def mapping_paths(mapping: FieldMapping) -> list[str]:
  """The feature paths a mapping reads."""
  paths = list(mapping.observation.values()) + list(mapping.action)
  if isinstance(mapping.task, str):
    paths.append(mapping.task)
  paths += [p for p in (mapping.episode_id, mapping.terminal, mapping.success) if p]
  return list(dict.fromkeys(paths))


def read_mapped(source, mapping: FieldMapping | None, split: str = "train",
                limit: int | None = None, spec: EnvSpec | None = None, max_tasks: int = 0,
                skip_bad: bool = False, report: rlds_shards.ShardReport | None = None
                ) -> Iterator[Episode]:
  """Episodes of a dataset through `mapping` (None: an mtopt dataset, read losslessly).

  With `spec`, every episode is validated against it here, so that one that does not fit
  is an error naming its file and episode (or, with `skip_bad`, is left out and reported).
  """
  for _, ep in located_episodes(source, mapping, split, limit, spec, max_tasks, skip_bad,
                                report):
    yield ep


def located_episodes(source, mapping: FieldMapping | None, split: str = "train",
                     limit: int | None = None, spec: EnvSpec | None = None,
                     max_tasks: int = 0, skip_bad: bool = False,
                     report: rlds_shards.ShardReport | None = None
                     ) -> Iterator[tuple[rlds_shards.Record | None, Episode]]:
  """`read_mapped`'s episodes with where each lies (a `rlds_shards.Record`, or None for a
  tf.data source)."""
  report = report if report is not None else rlds_shards.ShardReport()
  paths = None if mapping is None else mapping_paths(mapping)
  for i, (where, ex) in enumerate(located_examples(source, split, paths, skip_bad, report)):
    if limit is not None and i >= limit:
      return
    try:
      ep = (rlds_format.rlds_to_episode(ex) if mapping is None
            else example_to_episode(ex, mapping, i if where is None else where.episode))
      if ep is None:
        continue
      if spec is not None:
        ep.validate(spec, max_tasks)
    except (MappingError, EpisodeError) as e:
      if where is None:
        raise
      shard = rlds_shards.shards(os.fspath(source), split)[where.shard]
      rlds_shards.bad_episode(str(e), shard, where.index, skip_bad, report)
      continue
    yield where, ep


def _grouped(items: Iterable, n: int) -> Iterator[list]:
  """Lists of n; a dataset error hands on the group read before it, then raises."""
  group = []
  try:
    for x in items:
      group.append(x)
      if len(group) == n:
        yield group
        group = []
  except rlds_format.DatasetError:
    if group:
      yield group
    raise
  if group:
    yield group


def import_rlds(replay, source, mapping: FieldMapping | None = None,
                labeller: Labeller | None = None, split: str = "train",
                limit: int | None = None, group: int = 32, skip: int = 0,
                only_active_tasks: bool = False, skip_bad: bool = False,
                report: rlds_shards.ShardReport | None = None) -> int:
  """Writes a dataset's episodes into `replay`; returns how many (not counting `skip`).

  Args:
    replay: a `replay.base.Replay`.
    source: a dataset directory (or a tf.data.Dataset of examples, with a mapping).
    mapping: for external datasets; None reads an mtopt dataset as written by `export_rlds`.
    labeller: success probabilities for every task; applied to episodes without labels
      (all of them for an external dataset). Without it, the replay's own labeller is used.
    group: episodes per `write_many`. A bad episode raises and stops the import; its group
      is not written, earlier groups stay.
    skip: the first `skip` episodes that would be written are not (an import resumed after
      a crash: the replay acknowledged those already).
    only_active_tasks: leave out episodes collected for a task slot the replay does not
      train (`replay.slots`); otherwise they are an error.
    skip_bad: a corrupt, truncated or mismatched shard record (or an episode that does not
      fit the replay's spec) is left out and added to `report` instead of raising a
      `rlds_shards.ShardError` naming its file and episode. What was written before an
      error stays in the replay.
  """
  if mapping is None:
    if not isinstance(source, (str, os.PathLike)):
      raise MappingError("a tf.data source needs a FieldMapping")
    rlds_format.load_builder(os.fspath(source))  # A clear error if it is not a dataset.
    spec, max_tasks, _ = rlds_format.read_metadata(os.fspath(source))
    if spec is None:
      raise MappingError(f"{source}: not an mtopt dataset (no env_spec in metadata.json); "
                         "pass a FieldMapping")
    if max_tasks != replay.max_tasks:
      raise MappingError(f"{source}: written with max_tasks={max_tasks}, "
                         f"replay has {replay.max_tasks}")
  episodes = read_mapped(source, mapping, split, limit, replay.spec, replay.max_tasks,
                         skip_bad, report)
  if only_active_tasks:
    episodes = (ep for ep in episodes if ep.task_id in replay.slots)
  if skip:
    episodes = itertools.islice(episodes, skip, None)
  n = 0
  for batch in _grouped(episodes, group):
    todo = [i for i, ep in enumerate(batch) if ep.labels is None]
    if todo and labeller is not None:
      probs = np.asarray(labeller([batch[i] for i in todo]), np.float32)
      if probs.shape != (len(todo), replay.max_tasks):
        raise MappingError(f"labeller returned shape {probs.shape}, expected "
                           f"({len(todo)}, {replay.max_tasks})")
      for j, i in enumerate(todo):
        batch[i] = batch[i].with_labels(probs[j])
    replay.write_many(batch)
    n += len(batch)
  return n


def export_rlds(replay, out_dir: str, task_names: Sequence[str] = (),
                episodes_per_shard: int = 500) -> int:
  """Writes every episode stored in `replay` to a new RLDS dataset; returns how many."""
  n = 0
  with rlds_format.DatasetWriter(out_dir, replay.spec, replay.max_tasks, task_names,
                                 episodes_per_shard=episodes_per_shard) as writer:
    for ep in replay.episodes():
      writer.write(ep)
      n += 1
  return n
