"""Batches that mix two replays at a fixed fraction: offline data and on-policy data.

QT-Opt trained from a fixed share of on-policy episodes next to its large offline
dataset; in `mixed` mode mtopt keeps them in two replays and takes `online_fraction` of
every batch's rows from the on-policy one (each part rebalanced on its own). Until the
on-policy replay can be sampled, whole batches come from the offline one.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from mtopt.batch import Batch

# make_sampler(batch_size) -> an endless iterator of Batches of that size.
SamplerFactory = Callable[[int], Iterator[Batch]]


def concat_batches(a: Batch, b: Batch) -> Batch:
  """Rows of `a` then rows of `b`."""
  def cat(x, y):
    if isinstance(x, dict):
      return {k: cat(v, y[k]) for k, v in x.items()}
    return None if x is None else np.concatenate([np.asarray(x), np.asarray(y)])
  return Batch(*(cat(x, y) for x, y in zip(a, b)))


class MixedBatches:
  """An endless iterator of Batches, `fraction` of each batch's rows from `online`.

  Args:
    offline, online: sampler factories (batch size -> iterator of Batches).
    batch_size: rows per batch.
    fraction: on-policy share of the rows, in [0, 1).
    online_ready: whether the on-policy replay can be sampled yet; checked every
      `check_every` batches until it is.
  """

  def __init__(self, offline: SamplerFactory, online: SamplerFactory, batch_size: int,
               fraction: float, online_ready: Callable[[], bool], check_every: int = 50):
    if not 0.0 <= fraction < 1.0:
      raise ValueError(f"online fraction must be in [0, 1), got {fraction}")
    self._make_offline, self._make_online = offline, online
    self._ready, self._check_every = online_ready, int(check_every)
    self.batch_size = int(batch_size)
    self.online_rows = int(round(batch_size * fraction))
    self.mixing = False  # True once batches hold on-policy rows.
    self._offline = offline(batch_size)
    self._online = None
    self._count = 0

  def _start_mixing(self) -> None:
    close = getattr(self._offline, "close", None)
    if close is not None:
      close()
    self._offline = self._make_offline(self.batch_size - self.online_rows)
    self._online = self._make_online(self.online_rows)
    self.mixing = True

  def __iter__(self):
    return self

  def __next__(self) -> Batch:
    if (not self.mixing and self.online_rows and self._count % self._check_every == 0
        and self._ready()):
      self._start_mixing()
    self._count += 1
    batch = next(self._offline)
    return concat_batches(batch, next(self._online)) if self.mixing else batch

  def close(self) -> None:
    for it in (self._offline, self._online):
      close = getattr(it, "close", None)
      if close is not None:
        close()
