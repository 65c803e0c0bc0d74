"""Labels of single states for the learner's terminate term, memoised per state.

The learner asks for a label of every sampled row's state (`learner.state_label_weight`),
and a dataset holds far fewer distinct states than a run samples rows (6000 steps at batch
256 sample each of 1200 episodes' ~30k states ~50 times). The detector costs ~0.3 ms per
state (its heads see ~3000 pair and distance features for every slot), several times the
learner's update for a batch, so each distinct state is labelled once, for every slot, and
looked up afterwards by a digest of its bytes. The labels are a pure function of the state
for a fixed labeller, so memoising changes nothing but the cost.
"""

from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np


class CachedStateLabels:
  """`labeller` (observation dict [B, ...] -> [B, max_tasks]) memoised over the last
  `max_states` distinct states (oldest dropped first).

  Attributes:
    hits, misses: rows answered from memory / by the labeller so far.
  """

  def __init__(self, labeller: Callable[[dict], np.ndarray], max_states: int = 500_000):
    if max_states < 1:
      raise ValueError(f"max_states must be >= 1, got {max_states}")
    self._labeller, self._max = labeller, int(max_states)
    self._index: dict[bytes, int] = {}  # State digest -> row of _values.
    self._keys: list[bytes | None] = []
    self._values: np.ndarray | None = None
    self._next = 0
    self.hits = self.misses = 0

  def __call__(self, observation: dict) -> np.ndarray:
    keys = _row_keys(observation)
    rows = np.array([self._index.get(k, -1) for k in keys], np.int64)
    miss = np.flatnonzero(rows < 0)
    self.hits += len(keys) - len(miss)
    self.misses += len(miss)
    if not len(miss):
      return self._values[rows]
    fresh = np.asarray(self._labeller({n: np.asarray(v)[miss] for n, v in observation.items()}),
                       np.float32)
    if fresh.ndim != 2 or fresh.shape[0] != len(miss):
      raise ValueError(f"state labeller returned shape {fresh.shape} for {len(miss)} states")
    out = np.zeros((len(keys), fresh.shape[1]), np.float32)
    hit = rows >= 0
    if hit.any():
      out[hit] = self._values[rows[hit]]
    out[miss] = fresh
    for j, i in enumerate(miss):
      self._store(keys[i], fresh[j])
    return out

  def _store(self, key: bytes, value: np.ndarray) -> None:
    if key in self._index:  # A state twice among one call's misses.
      return
    if self._values is None:
      self._values = np.zeros((self._max, len(value)), np.float32)
      self._keys = [None] * self._max
    row, self._next = self._next, (self._next + 1) % self._max
    old = self._keys[row]
    if old is not None:
      del self._index[old]
    self._keys[row], self._values[row] = key, value
    self._index[key] = row


def confident(labeller: Callable[[dict], np.ndarray], at: float) -> Callable[[dict], np.ndarray]:
  """`labeller`'s probabilities as 0/1 labels, 1 only where at least `at` (0: unchanged).

  A detector trained on final observations is unsure of states short of its cut, and a
  soft label there trains Q of terminating toward a success that terminating would not
  get."""
  at = float(at)
  if not at:
    return labeller
  if not 0 < at < 1:
    raise ValueError(f"confidence must be in (0, 1), got {at}")
  return lambda observation: (np.asarray(labeller(observation)) >= at).astype(np.float32)


def _row_keys(observation: dict) -> list[bytes]:
  """One 128-bit digest per row of every observation array (in name order): a small key
  whatever the observation's size (a 64 px image row is 12 kB)."""
  parts = [np.ascontiguousarray(observation[n]) for n in sorted(observation)]
  b = len(parts[0])
  flat = np.concatenate([p.reshape(b, -1).view(np.uint8) for p in parts], axis=1)
  return [hashlib.blake2b(row, digest_size=16).digest() for row in flat]
