"""Rebalanced batches streamed from an RLDS dataset on disk, in bounded memory.

A dataset far larger than memory (MT-Opt's 800,000 episodes) cannot go through the
in-memory replay. `EpisodeIndex.build` reads it once (shard by shard, through
`rlds_io.located_episodes`, so a bad shard is named or skipped) and keeps per episode only
where it lies (shard, byte offset), its length, its task slot and its success bits per
task: ~20 bytes, nothing of its observations. `DiskSampler` then draws every batch with the
replay's composition (`balanced_sampler.make_plan`: task shares, success fraction, the
same sharing rules), picking episodes of each (task, outcome) cell from the index in
proportion to their length (transitions uniform, as the replay's priorities make them),
reading their records at random from the shard files (TFRecord random access, CRC checked)
through a bounded LRU cache of raw records, decoding them in tf.data with TFDS's own
decoders, and taking `transitions_per_sample` rows from each, as `balanced_sampler` does.
Memory is the index plus the cache plus a few batches in flight, whatever the dataset size.
"""

from __future__ import annotations

import collections
import os
import threading
from typing import Iterator, Mapping, NamedTuple, Sequence

import numpy as np

from mtopt.batch import Batch
from mtopt.specs import EnvSpec
from mtopt.tf_setup import tf
from replay import rlds_io, rlds_shards, sharing
from replay.balanced_sampler import _transition_picker, make_plan, proportional_plan, to_batch



class EpisodeIndex(NamedTuple):
  """Where every readable episode of a split lies, and what it is (one row each)."""
  shard: np.ndarray  # int32 [N]
  offset: np.ndarray  # int64 [N], byte offset of its record
  steps: np.ndarray  # int32 [N], transitions
  task: np.ndarray  # int16 [N], the slot it was collected for
  success: np.ndarray  # uint8 [N, ceil(max_tasks / 8)], packed label >= threshold bits
  files: tuple  # shard paths

  @property
  def size(self) -> int:
    return len(self.shard)

  def successes(self, max_tasks: int) -> np.ndarray:
    return np.unpackbits(self.success, axis=1, count=max_tasks).astype(bool)

  def save(self, path: str) -> None:
    tmp = path + ".tmp.npz"
    np.savez(tmp, shard=self.shard, offset=self.offset, steps=self.steps, task=self.task,
             success=self.success, files=np.array(self.files))
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: str) -> "EpisodeIndex":
    with np.load(path) as z:
      return cls(z["shard"], z["offset"], z["steps"], z["task"], z["success"],
                 tuple(str(f) for f in z["files"]))

  @classmethod
  def build(cls, data_dir: str, mapping: rlds_io.FieldMapping | None, spec: EnvSpec,
            max_tasks: int, labels_of, split: str = "train", threshold: float = 0.5,
            skip_bad: bool = False, report: rlds_shards.ShardReport | None = None,
            group: int = 256, log=None) -> "EpisodeIndex":
    """One pass over the split. `labels_of(episodes) -> float32 [n, max_tasks]` gives the
    success labels (a detector, or the dataset's own field); only bits are kept."""
    cols = collections.defaultdict(list)
    pending: list = []

    def flush():
      probs = np.asarray(labels_of([ep for _, ep in pending]), np.float32)
      if probs.shape != (len(pending), max_tasks):
        raise ValueError(f"labels of shape {probs.shape}, expected ({len(pending)}, {max_tasks})")
      for (where, ep), p in zip(pending, probs):
        cols["shard"].append(where.shard)
        cols["offset"].append(where.offset)
        cols["steps"].append(ep.num_steps)
        cols["task"].append(ep.task_id)
      cols["success"].append(np.packbits(probs >= threshold, axis=1))
      pending.clear()

    for where, ep in rlds_io.located_episodes(data_dir, mapping, split, spec=spec,
                                              max_tasks=max_tasks, skip_bad=skip_bad,
                                              report=report):
      pending.append((where, ep))
      if len(pending) == group:
        flush()
        if log and len(cols["shard"]) % (group * 40) == 0:
          log(f"indexed {len(cols['shard'])} episodes of {data_dir}")
    if pending:
      flush()
    files = tuple(s.path for s in rlds_shards.shards(data_dir, split))
    nbytes = (max_tasks + 7) // 8
    return cls(np.asarray(cols["shard"], np.int32), np.asarray(cols["offset"], np.int64),
               np.asarray(cols["steps"], np.int32), np.asarray(cols["task"], np.int16),
               np.concatenate(cols["success"]) if cols["success"]
               else np.zeros((0, nbytes), np.uint8), files)


def cells(index: EpisodeIndex, max_tasks: int, slots: Sequence[int], rule: str
          ) -> dict[tuple[int, bool], np.ndarray]:
  """(slot, is_success) -> episode rows, by the replay's sharing rule (`replay.sharing`)."""
  sharing.get_rule(rule)  # A clear error for an unknown rule.
  success = index.successes(max_tasks)
  own = index.task[:, None] == np.asarray(slots)[None, :]  # [N, S]
  out = {}
  for j, k in enumerate(slots):
    s = success[:, k]
    for outcome in (True, False):
      if rule == "all":
        mask = s == outcome
      elif rule == "none":
        mask = own[:, j] & (s == outcome)
      else:  # conservative: the own task both ways, other tasks' successes only.
        mask = (own[:, j] & (s == outcome)) | (outcome & s & ~own[:, j])
      out[(k, outcome)] = np.flatnonzero(mask).astype(np.int32)
  return out


class RecordCache:
  """Raw records by (shard, offset), least recently used first out, within `max_bytes`.

  Records are read with plain positioned reads (os.pread: a few microseconds; TensorFlow's
  random reader fills a large buffer per read, ~0.5 ms). Their CRCs were checked when the
  index was built; a record changed since fails to parse and is named then."""

  def __init__(self, files: Sequence[str], max_bytes: int):
    self.files, self.max_bytes = list(files), int(max_bytes)
    self._fds = [os.open(f, os.O_RDONLY) for f in self.files]
    self._lru: collections.OrderedDict = collections.OrderedDict()
    self._bytes, self._lock = 0, threading.Lock()
    self.hits = self.misses = 0

  def _read(self, shard: int, offset: int) -> bytes:
    fd = self._fds[shard]
    header = os.pread(fd, 12, offset)
    n = int.from_bytes(header[:8], "little") if len(header) == 12 else -1
    data = os.pread(fd, n, offset + 12) if n >= 0 else b""
    if n < 0 or len(data) != n:
      raise rlds_shards.ShardError(f"{self.files[shard]}: record at byte {offset} cannot be "
                                   "read (the file changed since it was indexed)")
    return data

  def get(self, shard: int, offset: int) -> bytes:
    key = (shard, offset)
    with self._lock:
      data = self._lru.get(key)
      if data is not None:
        self._lru.move_to_end(key)
        self.hits += 1
        return data
      self.misses += 1
    data = self._read(shard, offset)
    if len(data) <= self.max_bytes:
      with self._lock:
        if key not in self._lru:
          self._lru[key] = data
          self._bytes += len(data)
        while self._bytes > self.max_bytes:
          _, old = self._lru.popitem(last=False)
          self._bytes -= len(old)
    return data

  @property
  def bytes(self) -> int:
    return self._bytes

  def close(self) -> None:
    for fd in self._fds:
      os.close(fd)
    self._fds = []


def _batched_steps(features, mapping: rlds_io.FieldMapping, spec: EnvSpec):
  """serialized [R] -> the layout of `_mapped_steps`, [R, L, ...], in one vectorised parse
  (`tf.io.parse_example`: ~7 us an episode where one parse per episode costs ~45 us), for
  mappings of numeric tensors and PNG/JPEG images (per step, or per-episode sequences such
  as RoboNet's); None for any other feature type (then `_mapped_steps` per episode)."""
  import tensorflow_datasets as tfds
  length, dim = spec.max_episode_steps + 1, spec.action.shape[0]
  paths = list(dict.fromkeys([*mapping.observation.values(), *mapping.action,
                              *([mapping.terminal] if mapping.terminal else [])]))
  from tensorflow_datasets.core import example_parser
  serialized = example_parser.ExampleParser(features.get_serialized_info()).flat_feature_specs
  kinds, specs = {}, {}
  for path in paths:
    if path not in serialized:
      return None
    feature, per_step = rlds_shards.feature_at(features, path)
    shape = tuple(feature.shape) if per_step else tuple(feature.shape)[1:]
    if not per_step and (not feature.shape or feature.shape[0] is not None):
      return None  # Not a sequence.
    if isinstance(feature, (tfds.features.Image, tfds.features.Video)):
      if not per_step and not isinstance(feature, tfds.features.Video):
        return None
      kinds[path] = ("image", shape)
      specs[path] = tf.io.RaggedFeature(tf.string)
    elif (type(feature) in (tfds.features.Tensor, tfds.features.Scalar)
          and np.dtype(feature.np_dtype).kind in "fiub" and np.dtype(feature.np_dtype).itemsize > 1
          or np.dtype(feature.np_dtype) == np.bool_):
      if any(d is None for d in shape) or serialized[path].dtype == tf.string:
        return None  # Tensors stored as bytes (TFDS's `encoding=`) decode per episode.
      kinds[path] = ("numeric", shape)
      kind = np.dtype(feature.np_dtype).kind
      specs[path] = tf.io.RaggedFeature(tf.float32 if kind == "f" else tf.int64)
    else:
      return None

  def seq(d, path):
    r = d[path]
    kind, shape = kinds[path]
    if kind == "image":
      frames = tf.map_fn(lambda b: tf.ensure_shape(
          tf.io.decode_image(b, channels=shape[-1], expand_animations=False), shape),
          r.values, fn_output_signature=tf.TensorSpec(shape, tf.uint8))
      return tf.RaggedTensor.from_row_lengths(frames, r.row_lengths())
    n = int(np.prod(shape, dtype=int))
    return tf.RaggedTensor.from_row_lengths(tf.reshape(r.values, [-1, *shape]),
                                            r.row_lengths() // max(n, 1))

  def fn(serialized):
    d = tf.io.parse_example(serialized, specs)
    seqs = {p: seq(d, p) for p in paths}
    n_obs = tf.reduce_min(tf.stack([seqs[p].row_lengths()
                                    for p in mapping.observation.values()]), 0)
    act_len = tf.reduce_min(tf.stack([seqs[p].row_lengths() for p in mapping.action]), 0)
    if mapping.trim:
      n_obs = tf.minimum(n_obs, act_len + 1)
    t = n_obs - 1  # Transitions per episode.
    obs_mask = tf.sequence_mask(n_obs, length)
    obs = {}
    for name, path in mapping.observation.items():
      s = spec.observation[name]
      v = seqs[path].to_tensor(shape=[None, length, *kinds[path][1]])
      if s.dtype != np.uint8:  # As `rlds_io.observation_layout`.
        v = tf.reshape(tf.cast(v, tf.float32), [-1, length, *s.shape])
      mask = tf.reshape(obs_mask, [-1, length] + [1] * (v.shape.rank - 2))
      obs[name] = tf.where(mask, v, tf.zeros_like(v))
    parts = [tf.reshape(tf.cast(seqs[p].to_tensor(shape=[None, length, *kinds[p][1]]),
                                tf.float32), [-1, length, int(np.prod(kinds[p][1], dtype=int))])
             for p in mapping.action]
    action = tf.concat(parts, -1)
    if mapping.terminal:
      term = seqs[mapping.terminal]
      terminated = tf.cast(tf.gather(term.to_tensor(), term.row_lengths() - 1, batch_dims=1),
                           tf.float32)
      terminated = tf.reshape(terminated, [-1])
    else:
      terminated = tf.fill(tf.shape(t), float(mapping.terminated))
    last = tf.concat([terminated[:, None], tf.zeros([tf.shape(t)[0], dim - 1])], 1)
    action = tf.where(tf.sequence_mask(t, length)[..., None], action, float("nan"))
    action = tf.where(tf.one_hot(t, length, on_value=True, off_value=False)[..., None],
                      last[:, None, :], action)
    return {"observation": obs, "action": action}
  return fn


def _mapped_steps(decoder: rlds_shards.Decoder, mapping: rlds_io.FieldMapping, spec: EnvSpec):
  """serialized -> {"observation": {name: [T+1, ...]}, "action": [T+1, A]} in tf.data, the
  replay's item layout: the row after the last action holds [terminated, 0, ...]."""
  names = list(mapping.observation)

  def fn(serialized):
    d = decoder.decode(serialized)
    obs = {}
    for n in names:  # As `rlds_io.observation_layout`: images stay, the rest float vectors.
      v = d[mapping.observation[n]]
      s = spec.observation[n]
      obs[n] = v if s.dtype == np.uint8 else tf.reshape(tf.cast(v, tf.float32),
                                                         [tf.shape(v)[0], *s.shape])
    parts = [tf.cast(tf.reshape(d[p], [tf.shape(d[p])[0], -1]), tf.float32)
             for p in mapping.action]
    n_obs = tf.reduce_min(tf.stack([tf.shape(v)[0] for v in obs.values()]))
    if mapping.trim:
      n_obs = tf.minimum(n_obs, tf.reduce_min(tf.stack([tf.shape(p)[0] for p in parts])) + 1)
    obs = {n: v[:n_obs] for n, v in obs.items()}
    actions = tf.concat([p[:n_obs - 1] for p in parts], 1)
    if mapping.terminal:
      terminated = tf.cast(tf.reshape(d[mapping.terminal], [-1])[-1], tf.float32)
    else:
      terminated = tf.constant(float(mapping.terminated))
    dim, length = spec.action.shape[0], spec.max_episode_steps + 1
    last = tf.concat([[terminated], tf.zeros([dim - 1], tf.float32)], 0)[None]
    action = tf.concat([actions, last], 0)
    # Padded to a fixed length (the index checked every episode fits): obs with 0, actions
    # with NaN, as `balanced_sampler`'s items are.
    pad = length - tf.shape(action)[0]
    obs = {n: tf.pad(v, [[0, length - tf.shape(v)[0]]] + [[0, 0]] * (v.shape.rank - 1))
           for n, v in obs.items()}
    action = tf.pad(action, [[0, pad], [0, 0]], constant_values=float("nan"))
    return {"observation": {n: tf.ensure_shape(v, [length, *spec.observation[n].shape])
                            for n, v in obs.items()},
            "action": tf.ensure_shape(action, [length, dim])}
  return fn


def mtopt_mapping(spec: EnvSpec) -> rlds_io.FieldMapping:
  """An mtopt dataset (`rlds_format`) as a mapping: what the streamed reader reads of it."""
  return rlds_io.FieldMapping(
      observation={n: f"steps/observation/{n}" for n in spec.observation},
      action=["steps/action"], task="episode_metadata/task_id",
      episode_id="episode_metadata/episode_id", terminal="steps/is_terminal")


class DiskSampler:
  """An endless iterator of rebalanced `Batch`es read from a dataset's shard files.

  Attributes:
    plan: rows per (slot, is_success) cell in every batch: rebalanced (equal task shares,
      `success_fraction`), or with `proportional` each cell's share of the episodes.
    batches_per_draw: batches whose episodes are drawn and decoded together (a block is
      `transitions_per_sample` times as many batches).
    report: task slots with `no_successes`, `no_failures` or `no_data`, as the replay's.
    cache: the bounded record cache (its `hits`, `misses`, `bytes`).
  """

  def __init__(self, data_dir: str, index: EpisodeIndex, spec: EnvSpec, max_tasks: int,
               mapping: rlds_io.FieldMapping | None, batch_size: int, slots: Sequence[int],
               rule: str = "all", task_shares: Mapping[int, float] | None = None,
               success_fraction: float = 0.5, proportional: bool = False,
               transitions_per_sample: int = 16,
               min_size: int = 1, cache_bytes: int = 256 << 20, batches_per_draw: int = 8,
               threads: int | None = None, seed: int = 0, prefetch: int = 1,
               block_bytes: int = 64 << 20, vectorised: bool = True):
    self.spec, self.batch_size = spec, batch_size
    mapping = mapping or mtopt_mapping(spec)
    self._cells = cells(index, max_tasks, slots, rule)
    counts = {k: {"success": self._cells[(k, True)].size,
                  "failure": self._cells[(k, False)].size} for k in slots}
    shares = dict(task_shares or {k: 1.0 for k in slots})
    # proportional: the data's own composition (`train.rebalance=false`). A dataset on disk
    # does not grow, so its plan is fixed once, where the replay's follows its live counts.
    self.plan, self.report = (proportional_plan(batch_size, shares, counts, min_size)
                              if proportional else
                              make_plan(batch_size, shares, success_fraction, counts, min_size))
    if not self.plan:
      raise ValueError(f"{data_dir}: no (task, outcome) cell has {min_size} episodes to "
                       f"sample for slots {list(slots)}")
    self.cache = RecordCache(index.files, cache_bytes)
    decoder = rlds_shards.Decoder(rlds_shards.builder(data_dir).info.features,
                                  rlds_io.mapping_paths(mapping))
    # Batches per draw: up to `batches_per_draw`, fewer where a block of decoded episodes
    # (draw x batch_size episodes, padded) would pass `block_bytes` (images).
    length = spec.max_episode_steps + 1
    episode_bytes = length * (sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
                                  for v in spec.observation.values())
                              + 4 * int(spec.action.shape[0]))
    draw = int(np.clip(block_bytes // (batch_size * episode_bytes), 1, batches_per_draw))
    self.batches_per_draw = draw
    features = rlds_shards.builder(data_dir).info.features
    batched = _batched_steps(features, mapping, spec) if vectorised else None
    self.vectorised = batched is not None
    self._ds = self._dataset(index, batched or _mapped_steps(decoder, mapping, spec),
                             transitions_per_sample, draw, threads, seed, prefetch,
                             batched is not None)
    self._it = None
    self._block, self._next = None, 0

  def _records(self, index: EpisodeIndex, rows: np.ndarray, draw: int, seed: int
               ) -> Iterator[np.ndarray]:
    """Draws of `draw` random records of one cell, each episode drawn in proportion to its
    transitions (so transitions are uniform, as the replay's priorities make them)."""
    weights = np.cumsum(index.steps[rows], dtype=np.int64)
    rng = np.random.default_rng(seed)
    shard, offset = index.shard[rows], index.offset[rows]
    while True:
      pick = np.searchsorted(weights, rng.integers(0, weights[-1], draw), side="right")
      yield np.array([self.cache.get(int(shard[i]), int(offset[i])) for i in pick], object)

  def _dataset(self, index, decode, k, s, threads, seed, prefetch, batched: bool
               ) -> tf.data.Dataset:
    length = self.spec.max_episode_steps + 1
    signature = {"observation": {n: tf.TensorSpec([length, *v.shape], v.dtype)
                                 for n, v in self.spec.observation.items()},
                 "action": tf.TensorSpec([length, self.spec.action.shape[0]], tf.float32)}
    parts = []
    for j, ((slot, success), rows) in enumerate(sorted(self.plan.items())):
      members = self._cells[(slot, success)]
      ds = tf.data.Dataset.from_generator(
          lambda m=members, n=s * rows, sd=seed * 1000 + j: self._records(index, m, n, sd),
          output_signature=tf.TensorSpec([s * rows], tf.string))
      # One map per draw (per-element maps cost more than decoding a small episode).
      ds = ds.map(decode if batched else
                  lambda x: tf.map_fn(decode, x, fn_output_signature=signature),
                  num_parallel_calls=2, deterministic=False)
      parts.append(ds.map(_transition_picker(slot, success, k, s)))
    ds = tf.data.Dataset.zip(tuple(parts))
    ds = ds.map(lambda *xs: tf.nest.map_structure(lambda *v: tf.concat(v, 1), *xs))
    options = tf.data.Options()
    # Half the cores: the learner's update shares the host (as `balanced_sampler`).
    options.threading.private_threadpool_size = threads or max(1, len(os.sched_getaffinity(0)) // 2)
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options).prefetch(prefetch)

  def __iter__(self):
    return self

  def __next__(self) -> Batch:
    if self._it is None:
      self._it = self._ds.as_numpy_iterator()
    if self._block is None or self._next == len(self._block["task"]):
      self._block, self._next = next(self._it), 0
    batch = to_batch(self._block, self._next)
    self._next += 1
    return batch

  def close(self) -> None:
    self._it, self._block = None, None
    self.cache.close()
