"""A TFDS/RLDS dataset read shard by shard, record by record, so that a bad shard is an
error naming its file and episode (or is skipped and reported), never TensorFlow's
`DataLossError: truncated record at N` from deep inside a tf.data pipeline.

- `shards(data_dir, split)`: the split's shard files and episode counts, from
  dataset_info.json; a missing file is an error naming it.
- `records(...)`: every record's bytes with where it lies (file, index in the file, byte
  offset, index in the split). TFRecord framing and CRCs are checked by TensorFlow's
  random-access reader; a truncated or corrupt record, or a shard holding a different
  number of episodes than dataset_info.json says, raises `ShardError` naming the file and
  the episode, or with `skip_bad` is recorded in a `ShardReport` and left out (a truncated
  record takes the rest of its file with it: the next record cannot be found).
- `Decoder`: serialized records -> {path: tensor} for chosen feature paths ('/'-joined, as
  in `rlds_io.FieldMapping`), through TFDS's own parser and feature decoders (images,
  videos, nested RLDS `steps`), usable eagerly or inside tf.data.
- `read_decoded(...)`: decoded numpy examples in order, with their `Record`; a record the
  dataset's features cannot decode (a shard of another dataset) is a `ShardError` too.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import struct
from typing import Iterator, Sequence

import numpy as np

from mtopt import rlds_format
from mtopt.rlds_format import DatasetError
from mtopt.tf_setup import tf

import tensorflow_datasets as tfds  # noqa: E402
from tensorflow.python.lib.io import tf_record  # noqa: E402

SKIP_HINT = ("to leave bad episodes out and report them: train.skip_bad_episodes=true "
             "(mtopt train) or --skip-bad-episodes (mtopt replay import)")


class ShardError(DatasetError):
  """A shard file that cannot be read as the dataset says; names the file and the episode."""


@dataclasses.dataclass(frozen=True)
class Shard:
  path: str
  num_episodes: int  # As dataset_info.json records it.
  first: int  # Index in the split of its first episode.


@dataclasses.dataclass(frozen=True)
class Record:
  shard: int
  index: int  # In its shard file.
  offset: int  # Byte offset of the record in its file.
  episode: int  # In the split (shard.first + index).
  data: bytes = b""


@dataclasses.dataclass(frozen=True)
class BadEpisode:
  path: str
  index: int
  episode: int
  reason: str
  count: int = 1  # Episodes lost with it (a truncated record: the rest of the file).

  def __str__(self):
    lost = f" and the {self.count - 1} after it" if self.count > 1 else ""
    return (f"{self.path}: episode {self.index} of this file (episode {self.episode} of the "
            f"split){lost}: {self.reason}")


@dataclasses.dataclass
class ShardReport:
  """What `skip_bad` left out."""
  bad: list[BadEpisode] = dataclasses.field(default_factory=list)

  @property
  def skipped(self) -> int:
    return sum(b.count for b in self.bad)

  def summary(self) -> str:
    if not self.bad:
      return "no bad episodes"
    files = sorted({b.path for b in self.bad})
    return (f"skipped {self.skipped} bad episode(s) in {len(files)} file(s): "
            + "; ".join(str(b) for b in self.bad[:10])
            + (f"; and {len(self.bad) - 10} more" if len(self.bad) > 10 else ""))


def builder(data_dir: str):
  return rlds_format.load_builder(os.fspath(data_dir))


def shards(data_dir: str, split: str = "train", info=None) -> list[Shard]:
  """The split's shard files in order, each with its recorded episode count."""
  info = info or builder(data_dir).info
  if split not in info.splits:
    raise DatasetError(f"{data_dir}: no split {split!r}; it has {sorted(info.splits)}")
  s = info.splits[split]
  out, first = [], 0
  for path, n in zip(s.filepaths, s.shard_lengths):
    path = os.fspath(path)
    if not os.path.exists(path):
      raise ShardError(f"{path}: shard file missing (dataset_info.json lists it with {n} "
                       f"episodes, from episode {first} of split {split!r})")
    out.append(Shard(path, int(n), first))
    first += int(n)
  return out


def _record_end(fh, offset: int) -> int:
  """Where the record at `offset` ends by its length header (12 bytes + data + 4)."""
  fh.seek(offset)
  header = fh.read(8)
  if len(header) < 8:
    return offset + 16
  return offset + 16 + struct.unpack("<Q", header)[0]


def bad_episode(reason: str, shard: Shard, index: int, skip_bad: bool, report: ShardReport,
                count: int = 1) -> None:
  """Raises ShardError for episode `index` of `shard`, or with `skip_bad` reports it."""
  bad = BadEpisode(shard.path, index, shard.first + index, reason, count)
  if not skip_bad:
    raise ShardError(f"{bad}; {SKIP_HINT}")
  report.bad.append(bad)


def shard_records(shard: Shard, shard_id: int, skip_bad: bool = False,
                  report: ShardReport | None = None, start: int = 0,
                  with_data: bool = True) -> Iterator[Record]:
  """The records of one shard file (from its `start`-th), checked as described above."""
  report = report if report is not None else ShardReport()
  size = os.path.getsize(shard.path)
  offset, i = 0, 0
  try:  # Fast: TensorFlow's sequential reader (CRCs checked); offsets from the lengths.
    for data in tf.data.TFRecordDataset(shard.path, buffer_size=1 << 20).as_numpy_iterator():
      if i >= start:
        yield Record(shard_id, i, offset, shard.first + i, data if with_data else b"")
      offset, i = offset + 16 + len(data), i + 1
  except (tf.errors.DataLossError, tf.errors.OutOfRangeError):
    pass  # From the bad record on, one record at a time (below) to name and pass it.
  reader = tf_record.tf_record_random_reader(shard.path)
  with open(shard.path, "rb") as fh:
    while offset < size:
      try:
        data, end = reader.read(offset)
      except (tf.errors.DataLossError, tf.errors.OutOfRangeError) as e:
        end = _record_end(fh, offset)
        if i < start:  # Reported by the pass that read it (a resumed read).
          if end > size:
            return
          offset, i = end, i + 1
          continue
        if end > size:  # Its length runs past the file: nothing after it can be found.
          left = max(1, shard.num_episodes - i)
          bad_episode(f"truncated record at byte {offset} ({size} bytes in the file)", shard, i,
               skip_bad, report, count=left)
          return
        bad_episode(f"corrupt record at byte {offset} ({e.message.split(chr(10))[0]})", shard, i,
             skip_bad, report)
        offset, i = end, i + 1
        continue
      if i >= start:
        yield Record(shard_id, i, offset, shard.first + i, data if with_data else b"")
      offset, i = end, i + 1
  if i != shard.num_episodes:
    bad_episode(f"the file holds {i} episodes, dataset_info.json says {shard.num_episodes}",
         shard, min(i, shard.num_episodes), skip_bad, report,
         count=max(0, shard.num_episodes - i) or 1)


def check_framing(data_dir: str, split: str = "train", skip_bad: bool = False,
                  report: ShardReport | None = None) -> int:
  """Walks every shard's record headers (a seek per record, no data read: seconds for
  100,000 episodes), so that a truncated shard, or one holding another number of episodes
  than dataset_info.json says, is found before a run does any work. Corrupt bytes inside a
  record are found only when it is read (its CRC). Returns the episodes found."""
  report = report if report is not None else ShardReport()
  total = 0
  for shard in shards(data_dir, split):
    size, offset, i = os.path.getsize(shard.path), 0, 0
    with open(shard.path, "rb") as fh:
      while offset < size:
        end = _record_end(fh, offset)
        if end > size:
          bad_episode(f"truncated record at byte {offset} ({size} bytes in the file)", shard,
                      i, skip_bad, report, count=max(1, shard.num_episodes - i))
          break
        offset, i = end, i + 1
      else:
        if i != shard.num_episodes:
          bad_episode(f"the file holds {i} episodes, dataset_info.json says "
                      f"{shard.num_episodes}", shard, min(i, shard.num_episodes), skip_bad,
                      report, count=max(0, shard.num_episodes - i) or 1)
    total += i
  return total


def records(data_dir: str, split: str = "train", skip_bad: bool = False,
            report: ShardReport | None = None, start: int = 0) -> Iterator[Record]:
  """Every record of the split in order, from its `start`-th episode."""
  for k, shard in enumerate(shards(data_dir, split)):
    if shard.first + shard.num_episodes <= start:
      continue
    yield from shard_records(shard, k, skip_bad, report, max(0, start - shard.first))


def all_paths(features) -> list[str]:
  """Every leaf feature's '/'-joined path."""
  out = []

  def walk(node, prefix):
    if isinstance(node, tfds.features.Dataset):
      node = node.feature
    if isinstance(node, tfds.features.FeaturesDict):
      for k, v in node.items():
        walk(v, f"{prefix}{k}/")
    else:
      out.append(prefix[:-1])
  walk(features, "")
  return out


def feature_at(features, path: str):
  """(TFDS feature at `path`, whether it is inside a per-step `Dataset`)."""
  node, per_step = features, False
  for key in path.split("/"):
    if isinstance(node, tfds.features.Dataset):
      node, per_step = node.feature, True
    try:
      node = node[key]
    except (KeyError, TypeError):
      raise DatasetError(f"{path}: no field {key!r} in the dataset's features") from None
  return node, per_step


class Decoder:
  """Serialized examples -> {path: decoded tensor} for `paths` (default: every feature).

  Parses with TFDS's ExampleParser (only the wanted keys) and decodes each field with its
  own feature (a per-step field with `decode_batch_example`: [T, ...]).
  """

  def __init__(self, features, paths: Sequence[str] | None = None):
    from tensorflow_datasets.core import example_parser
    self.paths = list(paths or all_paths(features))
    self._features = {p: feature_at(features, p) for p in self.paths}
    info = features.get_serialized_info()
    wanted = {}
    for p in self.paths:  # The serialized info nested like the features, for these paths.
      src, dst = info, wanted
      *parents, leaf = p.split("/")
      for key in parents:
        src = src[key]
        dst = dst.setdefault(key, {})
      dst[leaf] = src[leaf]
    self._parser = example_parser.ExampleParser(wanted)
    self._eager = tf.function(self.decode, input_signature=[tf.TensorSpec([], tf.string)])

  def decode(self, serialized) -> dict:
    parsed = self._parser.parse_example(serialized)
    out = {}
    for p, (feature, per_step) in self._features.items():
      node = parsed
      for key in p.split("/"):
        node = node[key]
      out[p] = feature.decode_batch_example(node) if per_step else feature.decode_example(node)
    return out

  def __call__(self, serialized: bytes) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in self._eager(tf.constant(serialized)).items()}


def read_decoded(data_dir: str, split: str = "train", paths: Sequence[str] | None = None,
                 skip_bad: bool = False, report: ShardReport | None = None, start: int = 0,
                 parallel: int = 2) -> Iterator[tuple[Record, dict[str, np.ndarray]]]:
  """(record, {path: numpy}) for every good episode of the split, in order.

  Records are read in Python (`records`) and fed to one tf.data pipeline that decodes them
  in parallel, in order. A reading error is held until the records before it are decoded
  and handed on, then raised; a record that cannot be decoded ends the pipeline, is named
  (or skipped), and a new pipeline goes on after it.
  """
  report = report if report is not None else ShardReport()
  info = builder(data_dir).info
  decoder, files = Decoder(info.features, paths), shards(data_dir, split, info)
  while True:
    order: collections.deque = collections.deque()  # Handed to tf.data, not yet decoded.
    failed: list = []
    source = records(data_dir, split, skip_bad, report, start)

    def gen(source=source, order=order, failed=failed):
      try:
        for r in source:
          order.append(r)
          yield r.data
      except DatasetError as e:  # Raised after what came before it (see below).
        failed.append(e)
    ds = tf.data.Dataset.from_generator(gen, output_signature=tf.TensorSpec([], tf.string))
    ds = ds.map(decoder.decode, num_parallel_calls=parallel, deterministic=True).prefetch(4)
    try:
      for example in ds.as_numpy_iterator():
        yield dataclasses.replace(order.popleft(), data=b""), example
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
      if not order:
        raise
      x = order.popleft()
      msg = str(e).strip().splitlines()[0][:300]
      bad_episode(f"cannot be decoded with the dataset's features ({msg})", files[x.shard],
                  x.index, skip_bad, report)
      start = x.episode + 1
      continue
    if failed:
      raise failed[0]
    return
