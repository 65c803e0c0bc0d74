"""`Replay` on a Reverb server: episodes written once, one item per task that shares them.

A `ReverbReplay` either owns an in-process `reverb.Server` (local runs) or connects to one
at `address`. An owned server with a `log_dir` keeps a write-ahead episode log
(`replay.episode_log`): `write_many` returns only once its episodes are on disk, and a
restart restores the newest checkpoint and re-applies the log after it. Writing an episode
appends it once, as one padded step (`tables.pad_episode`), through a trajectory writer,
then creates one item per sharing target in that task's success or failure table plus one
in the `episodes` table; all of them reference the same chunks, so sharing across 10 tasks
costs 10 small items, not 10 copies. Beside the checkpoint directory D, D_layout.json
records its layout (not inside: Reverb would take it for a checkpoint); a server never
restores a checkpoint of another layout.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from mtopt.episode import Episode
from mtopt.specs import EnvSpec
from mtopt.tf_setup import tf  # noqa: F401  (hides GPUs before reverb imports TF)
from replay import sharing as sharing_rules
from replay import tables
from mtopt.durable_files import write_json
from replay.episode_log import EpisodeLog, latest_checkpoint
from replay.balanced_sampler import BalancedSampler
from replay.base import Counts, Replay, ReplayError
from replay.tables import TableLayout

import reverb  # noqa: E402

_EPOCH_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z.

# labeller(episodes) -> float32 [N, max_tasks] success probabilities.
Labeller = Callable[[Sequence[Episode]], np.ndarray]


def layout_path(checkpoint_dir: str) -> str:
  return os.path.normpath(checkpoint_dir) + "_layout.json"


def layout_from_config(config, spec: EnvSpec) -> TableLayout:
  """The tables of an experiment config (`max_tasks`, `replay.*`)."""
  r = config.replay
  return TableLayout(spec, int(config.max_tasks), int(r.max_size),
                     int(r.get("max_episodes", 0)) or None, int(r.min_size),
                     float(r.samples_per_insert))


def stored_layout(checkpoint_dir: str | None) -> int | None:
  """The layout version of the replay checkpointed in `checkpoint_dir` (None: nothing there
  yet; 1: checkpoints from before layouts were recorded)."""
  if not checkpoint_dir:
    return None
  path = layout_path(checkpoint_dir)
  if os.path.exists(path):
    with open(path) as f:
      return int(json.load(f)["version"])
  return 1 if latest_checkpoint(checkpoint_dir) else None


def serve(layout: TableLayout, checkpoint_dir: str | None = None,
          port: int | None = None) -> reverb.Server:
  """A Reverb server with `layout`'s tables; restores the latest checkpoint in the dir,
  which must have been written in the same layout."""
  checkpointer = None
  if checkpoint_dir:
    stored = stored_layout(checkpoint_dir)
    if stored is not None and stored != layout.version:
      raise ReplayError(
          f"the replay in {checkpoint_dir} is stored in layout {stored}, this server uses "
          f"layout {layout.version}; `mtopt train` on its run rewrites it (see "
          "mtopt.program.relabel)")
    os.makedirs(checkpoint_dir, exist_ok=True)
    if stored is None and layout.version == tables.LAYOUT_VERSION:
      write_json(layout_path(checkpoint_dir), {"version": layout.version})
    checkpointer = reverb.platform.checkpointers_lib.DefaultCheckpointer(
        os.path.abspath(checkpoint_dir))
  return reverb.Server(tables.make_tables(layout), port=port, checkpointer=checkpointer)


class ReverbReplay(Replay):
  """The replay on Reverb (see module docstring).

  Args:
    layout: the tables (spec, max_tasks, sizes, rate limiting).
    slots: active task slots; `all`/`conservative` sharing makes items for these. Defaults
      to every slot. Episodes collected for another slot are rejected.
    sharing: `none`, `all` or `conservative` (see `replay.sharing`).
    threshold: label >= threshold counts as a success.
    success_fraction: default successes per task in a batch.
    labeller: fills in missing `Episode.labels`; without one, unlabelled episodes are errors.
    address: connect to this server instead of starting one.
    checkpoint_dir: where an owned server checkpoints (and restores from).
    log_dir: the write-ahead episode log of an owned, checkpointed server (see module
      docstring); without it, episodes since the last checkpoint die with the process.
    transitions_per_sample: rows a sampled episode item gives, each to a different batch
      (1 = independent rows; more costs less sampling per batch, see `balanced_sampler`).
  """

  def __init__(self, layout: TableLayout, *, slots: Sequence[int] | None = None,
               sharing: str = "all", threshold: float = 0.5, success_fraction: float = 0.5,
               labeller: Labeller | None = None, address: str | None = None,
               checkpoint_dir: str | None = None, port: int | None = None,
               transitions_per_sample: int = 1, log_dir: str | None = None):
    self.layout = layout
    self.spec: EnvSpec = layout.spec
    self.max_tasks = layout.max_tasks
    self.slots = (list(range(layout.max_tasks)) if slots is None
                  else sorted(set(int(s) for s in slots)))
    bad = [s for s in self.slots if not 0 <= s < layout.max_tasks]
    if bad:
      raise ReplayError(f"task slots {bad} outside [0, {layout.max_tasks})")
    try:
      sharing_rules.get_rule(sharing)
    except ValueError as e:
      raise ReplayError(str(e)) from None
    self.sharing, self.threshold = sharing, float(threshold)
    self.pooled_failures = sharing == "all"
    _check_fraction(success_fraction)
    self.success_fraction = float(success_fraction)
    if transitions_per_sample < 1:
      raise ReplayError(f"transitions_per_sample must be >= 1, got {transitions_per_sample}")
    self.transitions_per_sample = int(transitions_per_sample)
    self.labeller = labeller
    self._meta_keys = tuple(tables.metadata_signature(layout.max_tasks))  # Built once.
    if log_dir and (address is not None or not checkpoint_dir):
      raise ReplayError("log_dir needs a replay that owns its server and a checkpoint_dir")
    self._server = self._log = None
    if address is None:
      restored = latest_checkpoint(checkpoint_dir)  # What `serve` is about to restore.
      self._server = serve(layout, checkpoint_dir, port)
      address = f"localhost:{self._server.port}"
    self.address = address
    self.client = reverb.Client(address)
    self._writer = None
    self._lock = threading.Lock()
    self._seq = 0
    self.reapplied_ids: set[int] = set()
    if log_dir:
      try:
        self._log = EpisodeLog(log_dir, restored)
        self._reapply(self._log.unapplied())
      except BaseException:
        self.close()  # Not half open: the server and the log's lock go too.
        raise

  def _reapply(self, episodes: Iterator[Episode]) -> None:
    """Writes logged episodes (labelled when logged) into Reverb again, not into the log.
    Their ids stay in `reapplied_ids`: a write that died unanswered may be among them, and
    whoever retries it can skip what is already stored."""
    batch = []
    for ep in episodes:
      self.reapplied_ids.add(int(ep.episode_id))
      batch.append(ep)
      if len(batch) == 64:
        self._write(self.prepare(batch), log=False)
        batch = []
    self._write(self.prepare(batch), log=False)

  @classmethod
  def from_config(cls, config, spec: EnvSpec, *, run_dir: str | None = None,
                  address: str | None = None, labeller: Labeller | None = None,
                  slots: Sequence[int] | None = None, port: int | None = None
                  ) -> "ReverbReplay":
    """From an experiment config's `max_tasks`, `replay.*` and `detector.threshold`; an
    owned server listens on `port` (default: any free one)."""
    r, layout = config.replay, layout_from_config(config, spec)
    owned = run_dir and address is None
    return cls(layout, slots=slots, sharing=r.sharing, threshold=config.detector.threshold,
               success_fraction=r.success_fraction, labeller=labeller, address=address,
               checkpoint_dir=os.path.join(run_dir, "replay") if owned else None,
               log_dir=os.path.join(run_dir, "replay_log") if owned else None,
               transitions_per_sample=int(r.get("transitions_per_sample", 1)), port=port)

  # Writing.
  def prepare(self, episodes: Sequence[Episode]
              ) -> list[tuple[Episode, list[sharing_rules.Target]]]:
    """Validates and labels `episodes`; returns each with its sharing targets. Writes nothing."""
    episodes = list(episodes)
    for ep in episodes:
      if not isinstance(ep, Episode):
        raise ReplayError(f"expected Episode, got {type(ep).__name__}")
      ep.validate(self.spec, self.max_tasks)
      if ep.task_id not in self.slots:
        raise ReplayError(f"episode {ep.episode_id}: task slot {ep.task_id} is not an active "
                          f"task (active: {self.slots})")
    missing = [i for i, ep in enumerate(episodes) if ep.labels is None]
    if missing:
      if self.labeller is None:
        raise ReplayError(f"episode {episodes[missing[0]].episode_id} has no success labels and "
                          "this replay has no labeller")
      probs = np.asarray(self.labeller([episodes[i] for i in missing]))
      if probs.shape != (len(missing), self.max_tasks):
        raise ReplayError(f"labeller returned shape {probs.shape}, expected "
                          f"({len(missing)}, {self.max_tasks})")
      for j, i in enumerate(missing):
        episodes[i] = episodes[i].with_labels(probs[j]).validate(self.spec, self.max_tasks)
    return [(ep, sharing_rules.targets(self.sharing, ep.task_id, ep.labels, self.slots,
                                       self.threshold)) for ep in episodes]

  def write_many(self, episodes: Sequence[Episode]) -> int:
    """As `Replay.write_many`; with a log, the episodes are durable when it returns."""
    return self._write(self.prepare(episodes))  # prepare raises before anything is written.

  def _write(self, prepared, log: bool = True) -> int:
    if not prepared:
      return 0
    if self.layout.version != tables.LAYOUT_VERSION:
      raise ReplayError(f"a layout-{self.layout.version} replay is read only (it is read to be "
                        "rewritten in the current layout)")
    with self._lock:
      if log and self._log is not None:  # Logged (with labels) first: write-ahead.
        self._log.append([ep for ep, _ in prepared])
      if self._writer is None:
        self._writer = self._new_writer()
      made = 0
      for ep, targets in prepared:
        made += self._append(ep, targets)
      self._writer.flush()
    return made

  def acknowledged(self) -> int:
    """Episodes this replay has acknowledged over its life (with a log: durably; without,
    those stored now)."""
    return self._log.acknowledged if self._log is not None else self.num_episodes()

  def max_episode_id(self) -> int | None:
    """The largest episode id this replay acknowledged (-1: none); None without a log."""
    return self._log.max_episode_id if self._log is not None else None

  def _new_writer(self):
    # One chunk per column per episode: an episode is one step (see `tables.pad_episode`).
    w = self.client.trajectory_writer(num_keep_alive_refs=1)
    for path in ([("observation", k) for k in self.spec.observation] + [("action",)]
                 + [("metadata", k) for k in self._meta_keys]):
      w.configure(path, num_keep_alive_refs=1, max_chunk_length=1)
    return w

  def _append(self, ep: Episode, targets: list[sharing_rules.Target]) -> int:
    w, t_len = self._writer, ep.num_steps
    obs, act = tables.pad_episode(ep, tables.episode_rows(self.spec))
    w.append({"observation": obs, "action": act,
              "metadata": tables.episode_metadata(ep, self.max_tasks)})
    h = w.history
    steps = {"observation": {k: h["observation"][k][-1] for k in obs},
             "action": h["action"][-1]}
    meta = {k: h["metadata"][k][-1] for k in self._meta_keys}
    for slot, success in targets:
      if success or not self.pooled_failures:
        w.create_item(tables.task_table(slot, success), float(t_len), steps)
    if self.pooled_failures:  # Every task's failures come from here (see replay.tables).
      w.create_item(tables.SHARED_TABLE, float(t_len), {**steps, "labels": meta["labels"]})
    # Milliseconds since 2024, strictly increasing per writer: roughly write order across
    # writers and restarts, and below EPISODE_ROUND (2**40 ms) for decades.
    self._seq = max(self._seq + 1, int(time.time() * 1000) - _EPOCH_MS)
    w.create_item(tables.EPISODES_TABLE, float(self._seq), {**steps, "metadata": meta})
    return len(targets)

  # Reading.
  def table_sizes(self) -> dict[str, int]:
    return {name: info.current_size for name, info in self.client.server_info().items()}

  def counts(self) -> Counts:
    """Items per task and outcome; under `all` sharing a task's failures are the shared
    table's episodes less its successes (exact until the shared table starts evicting)."""
    return counts_from_sizes(self.table_sizes(), self.max_tasks,
                             self.slots if self.pooled_failures else None)

  def num_episodes(self) -> int:
    return self.table_sizes()[tables.EPISODES_TABLE]

  def sampler(self, batch_size: int, task_shares: Mapping[int, float] | None = None,
              success_fraction: float | None = None, seed: int | None = None,
              to_jax: bool = False, prefetch: int = 1, wait_seconds: float = 60.0,
              refresh_seconds: float = 2.0, proportional: bool = False) -> BalancedSampler:
    """Rebalanced batches; `task_shares` maps slot -> weight (default: equal over `slots`).

    `proportional`: no rebalancing; rows per (task, outcome) follow the stored items, as
    they change (`balanced_sampler.proportional_plan`); takes no shares or fraction.
    `prefetch` blocks of batches (see `balanced_sampler.make_dataset`) are made ahead.
    """
    if proportional and (task_shares is not None or success_fraction is not None):
      raise ReplayError("a proportional sampler follows the data's own shares; pass no "
                        "task_shares or success_fraction")
    del seed  # Reverb's sampling is not seedable; kept for the interface.
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
      raise ReplayError(f"batch_size must be a positive integer, got {batch_size!r}")
    shares = {k: 1.0 for k in self.slots} if task_shares is None else dict(task_shares)
    bad = [s for s in shares if s not in self.slots]
    if bad:
      raise ReplayError(f"task_shares names slots {bad} that are not active ({self.slots})")
    if not shares or any(not np.isfinite(w) or w <= 0 for w in shares.values()):
      raise ReplayError(f"task_shares must be positive weights, got {shares}")
    frac = self.success_fraction if success_fraction is None else success_fraction
    _check_fraction(frac)
    return BalancedSampler(self.address, self.layout, self.counts, int(batch_size), shares,
                           float(frac), self.transitions_per_sample, prefetch, refresh_seconds,
                           wait_seconds, to_jax, pooled_failures=self.pooled_failures,
                           threshold=self.threshold, proportional=proportional)

  def episodes(self) -> Iterator[Episode]:
    """Every episode in the `episodes` table once, oldest first.

    The table is a min-heap on priority = write time in ms (< 2**40). A walk samples the
    smallest item, moves it past all others (priority + 2**40) and yields it, until the
    smallest item is one already moved; episodes written meanwhile are visited too. It then
    moves every visited item back, also when the walk is abandoned early. Only this method
    samples the table, so moving priorities affects nothing else; run one walk at a time.

    One sampler streams the whole walk (a new sampler per item costs ~1.5 ms): it fetches
    each sample ahead, so it often returns the item just moved, with its old priority;
    those repeats are skipped.
    """
    if self.num_episodes() == 0:
      return
    visited: dict[int, float] = {}
    stream = self.client.sample(tables.EPISODES_TABLE, 1 << 40, emit_timesteps=False,
                                unpack_as_table_signature=True)
    try:
      for sample in stream:
        key, priority = sample.info.key, sample.info.priority
        if priority >= tables.EPISODE_ROUND:
          break
        if key in visited:
          continue
        self.client.mutate_priorities(tables.EPISODES_TABLE,
                                      updates={key: priority + tables.EPISODE_ROUND})
        visited[key] = priority
        yield _to_episode(sample.data)
    finally:
      stream.close()
      if visited:  # Keys removed by FIFO meanwhile are ignored by Reverb.
        self.client.mutate_priorities(tables.EPISODES_TABLE, updates=visited)

  # Lifecycle.
  def checkpoint(self) -> str:
    """A Reverb checkpoint; the log's segments before it are then deleted. Writes wait:
    one between closing the segment and the snapshot would be in both."""
    with self._lock:
      if self._writer is not None:
        self._writer.flush()
      if self._log is not None:
        self._log.begin_checkpoint()
      path = self.client.checkpoint()
      if self._log is not None:
        self._log.end_checkpoint(os.path.basename(path.rstrip("/")))
    return path

  def close(self) -> None:
    with self._lock:
      if self._writer is not None:
        self._writer.close()
        self._writer = None
      if self._log is not None:
        self._log.close()
    if self._server is not None:
      self._server.stop()
      self._server = None


def counts_from_sizes(sizes: Mapping[str, int], max_tasks: int,
                      pooled_slots: Sequence[int] | None = None) -> Counts:
  """Per-task counts from table sizes; `pooled_slots` take failures from the shared table."""
  out = {}
  for k in range(max_tasks):
    succ = sizes[tables.task_table(k, True)]
    fail = sizes[tables.task_table(k, False)]
    if pooled_slots is not None and k in pooled_slots:
      fail += max(0, sizes[tables.SHARED_TABLE] - succ)
    out[k] = {"success": succ, "failure": fail}
  return out


def _check_fraction(f) -> None:
  if not isinstance(f, (int, float, np.floating)) or not 0.0 <= f <= 1.0:
    raise ReplayError(f"success_fraction must be in [0, 1], got {f!r}")


def _to_episode(data: dict) -> Episode:
  """An `episodes` item back as an Episode; padded rows (layout 2, NaN actions) dropped."""
  meta = data["metadata"]
  action = np.asarray(data["action"], np.float32)
  t_len = int(np.sum(~np.isnan(action[:, 0]))) - 1  # Less the final pad row.
  return Episode(
      observations={k: np.asarray(v)[:t_len + 1] for k, v in data["observation"].items()},
      actions=action[:t_len],
      task_id=int(meta["task_id"]), robot_id=int(meta["robot_id"]),
      episode_id=int(meta["episode_id"]),
      success=np.asarray(meta["success"], bool) if bool(meta["has_success"]) else None,
      labels=np.asarray(meta["labels"], np.float32), terminated=bool(meta["terminated"]))
