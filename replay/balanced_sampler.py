"""Rebalanced batches from the per-(task, outcome) tables.

Each batch holds a fixed number of rows per task (from `task_shares`, default equal) and
within a task a fixed success fraction. One `reverb.TrajectoryDataset` per (task, outcome)
table samples whole-episode items; a tf.data map picks a random transition inside each
(items are sampled in proportion to episode length, so transitions are uniform) and sets
the reward from the table it read: 1 at the final transition of an episode in a success
table that ended by termination, else 0 (see `mtopt.batch.Batch` for the rule). The per-table datasets are zipped and concatenated, so every batch has exactly the
planned composition.

Sampling a whole-episode item costs Reverb ~10 us of CPU (mostly unpacking its chunks), so
with one row per item a batch of 256 costs more CPU than a ~2 ms learner step. With
`transitions_per_sample` k > 1 an item gives k rows, each to a different batch: a batch is
distributed as with k = 1 (its rows come from distinct draws), consecutive batches share
episodes, and sampling costs k times less per batch.

The plan is recomputed from the tables' sizes every `refresh_seconds`: a task with no
successes yet (fewer than `min_size` items in its success table) is filled with failures,
a task with no data at all gives its share to the others; both are reported in
`BalancedSampler.report` and logged when they change.

With `proportional=True` there is no rebalancing: every table's rows follow its share of
the stored items, recomputed from the live counts at every refresh (the naive multi-task
baseline; see `proportional_plan`), so the composition tracks the data as it grows.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from typing import Callable, Mapping

import numpy as np

from mtopt.batch import Batch
from mtopt.tf_setup import tf
from replay.tables import (SHARED_TABLE, TableLayout, shared_signature, steps_signature,
                          task_table)

import reverb  # noqa: E402

log = logging.getLogger(__name__)

# plan[(slot, success)] = rows of the batch taken from that table.
Plan = dict[tuple[int, bool], int]


def _largest_remainder(total: int, weights: Mapping[int, float]) -> dict[int, int]:
  """Integers proportional to `weights` that sum to `total`."""
  keys = sorted(weights)
  w = np.array([weights[k] for k in keys], np.float64)
  exact = total * w / w.sum()
  base = np.floor(exact).astype(int)
  order = np.argsort(-(exact - base), kind="stable")
  base[order[:total - base.sum()]] += 1
  return dict(zip(keys, base.tolist()))


def make_plan(batch_size: int, task_shares: Mapping[int, float], success_fraction: float,
              counts: Mapping[int, Mapping[str, int]], min_size: int) -> tuple[Plan, dict]:
  """Rows per (task, outcome) table for one batch, given the tables' current sizes.

  Args:
    batch_size: rows per batch.
    task_shares: slot -> weight (> 0).
    success_fraction: successes per task row, in [0, 1].
    counts: slot -> {"success": items, "failure": items}.
    min_size: items a table needs before it is sampled.

  Returns:
    (plan, report): report lists `no_successes` and `no_data` task slots.
  """
  ready = lambda k, s: counts[k]["success" if s else "failure"] >= min_size
  no_data = sorted(k for k in task_shares if not ready(k, True) and not ready(k, False))
  live = {k: w for k, w in task_shares.items() if k not in no_data}
  report = {"no_data": no_data,
            "no_successes": sorted(k for k in live if not ready(k, True)),
            "no_failures": sorted(k for k in live if not ready(k, False))}
  if not live:
    return {}, report
  units = _largest_remainder(batch_size, live)
  plan: Plan = {}
  for k, n in units.items():
    n_succ = int(round(n * success_fraction))
    if not ready(k, True):
      n_succ = 0
    elif not ready(k, False):
      n_succ = n
    for success, m in ((True, n_succ), (False, n - n_succ)):
      if m > 0:
        plan[(k, success)] = m
  return plan, report


def proportional_plan(batch_size: int, slots, counts: Mapping[int, Mapping[str, int]],
                      min_size: int) -> tuple[Plan, dict]:
  """Rows per (task, outcome) table in proportion to its items: the data's own task shares
  and, within each task, its own success fraction (no rebalancing).

  A table with at least `min_size` items gets at least one row (when the batch has a row
  for each): a fixed plan cannot give it a fraction of a row, and none would drop a rare
  task's data entirely, which uniform sampling over all items would not; the floor errs
  in the baseline's favour.
  """
  items = {(k, s): counts[k]["success" if s else "failure"] for k in slots
           for s in (True, False)}
  live = {key: n for key, n in items.items() if n >= min_size}
  ready_tasks = {k for k, _ in live}
  report = {"no_data": sorted(k for k in slots if k not in ready_tasks),
            "no_successes": sorted(k for k in ready_tasks if (k, True) not in live),
            "no_failures": sorted(k for k in ready_tasks if (k, False) not in live)}
  if not live:
    return {}, report
  keys = sorted(live)
  floor = 1 if len(keys) <= batch_size else 0
  rest = _largest_remainder(batch_size - floor * len(keys),
                            {i: float(live[k]) for i, k in enumerate(keys)})
  plan = {k: floor + rest[i] for i, k in enumerate(keys)}
  return {k: n for k, n in plan.items() if n > 0}, report


def plan_distance(a: Plan, b: Plan) -> float:
  """Total variation distance between two plans' row distributions, in [0, 1]."""
  na, nb = max(1, sum(a.values())), max(1, sum(b.values()))
  return 0.5 * sum(abs(a.get(k, 0) / na - b.get(k, 0) / nb) for k in set(a) | set(b))


def _transition_picker(slot: int, success: bool, k: int, batches: int) -> Callable:
  """Maps a padded batch of N episode items [N, L, ...] to `k * batches` batches of N/batches
  random transitions each: [k * batches, N / batches, ...].

  Every item gives k transitions (drawn independently, uniformly over its T transitions),
  one to each of k groups of `batches` batches; within a group the items are shuffled into
  the batches. So a batch never holds two rows of one sampled item, and each batch alone is
  distributed as if every row had been sampled on its own.

  Actions are padded with NaN, so an item's T is its count of non-NaN action rows minus the
  final (zero) pad row. Vectorised over the items: tf.data's per-element maps cost more than
  the gathers themselves.
  """
  def pick(data):
    act = data["action"]
    steps = tf.reduce_sum(tf.cast(~tf.math.is_nan(act[:, :, 0]), tf.int32), 1) - 1  # [N]
    n = tf.shape(act)[0]
    if k == 1:  # Items are independent draws already.
      item = tf.range(n)[None]
    else:  # [k, N]: a permutation of the items per group.
      item = tf.argsort(tf.random.uniform([k, n]), axis=1)
    steps = tf.gather(steps, item)
    t = tf.minimum(tf.cast(tf.random.uniform([k, n]) * tf.cast(steps, tf.float32), tf.int32),
                   steps - 1)  # [k, N]
    shape = [k * batches, n // batches]
    at = lambda t_: tf.stack([item, t_], -1)
    take = lambda v, i: tf.reshape(tf.gather_nd(v, i),
                                   tf.concat([shape, tf.shape(v)[2:]], 0))
    # The pad row after an episode's last action says whether it ended by termination.
    terminated = tf.cast(take(act, at(steps))[..., 0] > 0.5, tf.float32)
    steps_after = tf.reshape(tf.cast(steps - 1 - t, tf.float32), shape)
    last = tf.cast(tf.equal(steps_after, 0.0), tf.float32)
    outcome = terminated * (1.0 if success else 0.0)
    obs = data["observation"]
    return {
        "observation": {n_: take(v, at(t)) for n_, v in obs.items()},
        "next_observation": {n_: take(v, at(t + 1)) for n_, v in obs.items()},
        "action": take(act, at(t)),
        # See `Batch`: the outcome is the reward of a terminal final transition; an episode
        # cut by the time limit ends in no reward and is bootstrapped (discount 1).
        "reward": last * outcome,
        "discount": 1.0 - last * terminated,
        "task": tf.fill(shape, tf.constant(slot, tf.int32)),
        "outcome": outcome,
        "steps_after": steps_after,
    }
  return pick


def _episode_batches(address: str, table: str, signature: dict, items: int
                     ) -> tf.data.Dataset:
  """Batches of `items` sampled episode items, as stored: [items, L, ...] (`tables.pad_episode`).

  No per-element map or filter: on this CPU each costs more than the sampling itself.
  """
  dtypes = tf.nest.map_structure(lambda s: s.dtype, signature)
  shapes = tf.nest.map_structure(lambda s: s.shape, signature)
  ds = reverb.TrajectoryDataset(address, table, dtypes, shapes,
                                max_in_flight_samples_per_worker=max(2 * items, 8),
                                num_workers_per_iterator=1)
  ds = ds.batch(items, drop_remainder=True)
  return ds.map(lambda sample: sample.data)


def make_dataset(address: str, layout: TableLayout, plan: Plan, transitions_per_sample: int = 1,
                 prefetch: int = 1, pooled_failures: bool = False, threshold: float = 0.5,
                 batches_per_draw: int = 8, threads: int | None = None) -> tf.data.Dataset:
  """A tf.data pipeline of blocks of batches, each batch with exactly `plan`'s composition.

  An element is a dict of [transitions_per_sample * batches_per_draw, batch_size, ...]
  arrays. Each table's dataset draws items for `batches_per_draw` batches at once (per-draw
  costs of ~20 zipped pipelines dominate small draws), and every item gives
  `transitions_per_sample` rows to as many different batches (see `_transition_picker`).
  With `pooled_failures`, task k's failure rows come from the shared table, keeping the
  episodes whose label for k is below `threshold`. tf.data runs on `threads` threads
  (default: half the host's cores); Reverb's samples come from one worker thread per table.
  """
  if not plan:
    raise ValueError("empty plan: no table has enough items to sample")
  k, s = transitions_per_sample, batches_per_draw
  parts = []
  for (slot, success), rows in sorted(plan.items()):
    if success or not pooled_failures:
      ds = _episode_batches(address, task_table(slot, success), steps_signature(layout.spec),
                            s * rows)
    else:
      # Draw from the shared table, keep this task's failures, regroup into `rows` rows
      # (rebatch carries rows over between draws, so only the rejected ones cost extra).
      ds = _episode_batches(address, SHARED_TABLE,
                            shared_signature(layout.spec, layout.max_tasks), s * rows + 2)
      ds = ds.map(lambda x, slot=slot: tf.nest.map_structure(
          lambda v: tf.boolean_mask(v, x["labels"][:, slot] < threshold),
          {"observation": x["observation"], "action": x["action"]}))
      ds = ds.rebatch(s * rows, drop_remainder=True)
    parts.append(ds.map(_transition_picker(slot, success, k, s)))
  ds = tf.data.Dataset.zip(tuple(parts))
  ds = ds.map(lambda *xs: tf.nest.map_structure(lambda *v: tf.concat(v, 1), *xs))
  # Few threads: on a host that also runs the learner's step, sampler threads preempting
  # the step cost more than they make. (Autotuning stays on: it pipelines the tables.)
  options = tf.data.Options()
  cores = len(os.sched_getaffinity(0))
  options.threading.private_threadpool_size = threads or max(1, cores // 2)
  options.threading.max_intra_op_parallelism = 1
  ds = ds.with_options(options)
  return ds.prefetch(prefetch)


def to_batch(x: dict, i: int) -> Batch:
  """Batch `i` of a block."""
  return Batch(observation={n: v[i] for n, v in x["observation"].items()}, action=x["action"][i],
               reward=x["reward"][i], discount=x["discount"][i],
               next_observation={n: v[i] for n, v in x["next_observation"].items()},
               task=x["task"][i], outcome=x["outcome"][i], steps_after=x["steps_after"][i])


class BalancedSampler:
  """An endless iterator of rebalanced `Batch`es; follows the tables as they fill.

  Blocks of batches come from `make_dataset` as numpy arrays; a batch is a slice of one
  (views, no copies), so a batch costs the learner's thread next to nothing.

  With `proportional`, `task_shares` only names the slots and the plan follows the tables'
  sizes (`proportional_plan`); a new plan replaces the pipeline when its rows differ from
  the current one's by more than `replan_tolerance` (total variation) or a table starts or
  stops being sampled: rebuilding costs a pipeline, and the shares move a little with
  every stored episode.

  Attributes:
    plan: rows per (slot, is_success) table in the current batches.
    report: task slots with `no_successes`, `no_failures` or `no_data` (left out).
    rebuilds: pipelines built so far.
  """

  def __init__(self, address: str, layout: TableLayout, counts_fn: Callable[[], dict],
               batch_size: int, task_shares: Mapping[int, float], success_fraction: float,
               transitions_per_sample: int = 1, prefetch: int = 1, refresh_seconds: float = 2.0,
               wait_seconds: float = 60.0, to_jax: bool = False, pooled_failures: bool = False,
               threshold: float = 0.5, proportional: bool = False,
               replan_tolerance: float = 0.02):
    self._address, self._layout, self._counts_fn = address, layout, counts_fn
    self.proportional, self._tolerance = proportional, float(replan_tolerance)
    self.rebuilds = 0
    self._pooled, self._threshold = pooled_failures, threshold
    self.batch_size, self.task_shares = batch_size, dict(task_shares)
    self.success_fraction = success_fraction
    self._k, self._prefetch, self._refresh = transitions_per_sample, prefetch, refresh_seconds
    self._wait, self._to_jax = wait_seconds, to_jax
    self.plan: Plan = {}
    self.report: dict = {}
    self._it = None
    self._block, self._next = None, 0
    self._checked = 0.0

  def _update_plan(self) -> None:
    deadline = time.monotonic() + self._wait
    while True:
      try:
        counts = self._counts_fn()
      except RuntimeError as e:  # Reverb: the server is gone ("Socket closed").
        if self._it is None:
          raise
        # A replay node restarting: its data comes back from its log, and the pipeline's
        # reads wait for it (Reverb retries them), so batches go on with the current plan
        # and the counts are asked again at the next refresh.
        log.warning("replay sampler: table sizes unavailable (%s); keeping the current plan",
                    e)
        self._checked = time.monotonic()
        return
      if self.proportional:
        plan, report = proportional_plan(self.batch_size, self.task_shares, counts,
                                         self._layout.min_size)
      else:
        plan, report = make_plan(self.batch_size, self.task_shares, self.success_fraction,
                                 counts, self._layout.min_size)
      if plan or time.monotonic() > deadline:
        break
      time.sleep(0.05)
    self._checked = time.monotonic()
    if not plan:
      raise TimeoutError(f"no task table reached min_size={self._layout.min_size} items within "
                         f"{self._wait:.0f}s; write episodes first")
    if report != self.report:
      if report["no_successes"] or report["no_data"]:
        log.warning("replay sampler: tasks without successes (filled with failures): %s; "
                    "tasks without data (share given to others): %s",
                    report["no_successes"], report["no_data"])
      self.report = report
    if self._it is None or self._replan(plan):
      self.plan = plan
      self.rebuilds += 1
      ds = make_dataset(self._address, self._layout, plan, self._k, self._prefetch,
                        self._pooled, self._threshold)
      self._it = ds.as_numpy_iterator()
      self._block = None

  def _replan(self, plan: Plan) -> bool:
    if not self.proportional or set(plan) != set(self.plan):
      return plan != self.plan
    return plan_distance(plan, self.plan) > self._tolerance

  def __iter__(self):
    return self

  def close(self) -> None:
    """Drops the tf.data pipeline, cancelling its in-flight Reverb samples; a server can
    then stop without waiting on them. The next `next()` builds a new pipeline."""
    self._it, self._block = None, None
    gc.collect()

  def __next__(self) -> Batch:
    if self._it is None or time.monotonic() - self._checked > self._refresh:
      self._update_plan()
    if self._block is None or self._next == len(self._block["task"]):
      self._block, self._next = next(self._it), 0
    batch = to_batch(self._block, self._next)
    self._next += 1
    if self._to_jax:
      import jax
      batch = jax.device_put(batch)
    return batch
