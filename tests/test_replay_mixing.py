"""`mixed` mode's batches: a fixed share of rows from the on-policy replay, once it has data."""

import numpy as np
import pytest

from replay.mixing import MixedBatches
from replay.reverb_replay import ReverbReplay
from replay.tables import TableLayout
from tests.test_replay_helpers import MAX_TASKS, SPEC, make_episode


def _replay():
  return ReverbReplay(TableLayout(SPEC, MAX_TASKS, max_size=1000, min_size=4), slots=[0, 1],
                      sharing="none")


def _write(replay, rng, n, first_id):
  # Episode ids tell the two replays apart: offline < 1000 <= on-policy.
  success = lambda i: np.arange(MAX_TASKS) == i % 4  # Tasks 0 and 1 succeed in half.
  replay.write_many([make_episode(rng, first_id + i, i % 2, success(i)) for i in range(n)])


def test_mixed_batches_take_a_fixed_share_from_the_online_replay_once_it_is_ready():
  rng = np.random.default_rng(0)
  with _replay() as offline, _replay() as online:
    _write(offline, rng, 40, 0)
    ready = lambda: all(max(c.values()) >= 4 for k, c in online.counts().items() if k < 2)
    mixed = MixedBatches(lambda n: offline.sampler(n), lambda n: online.sampler(n), 32, 0.25,
                         ready, check_every=1)
    assert mixed.online_rows == 8
    first = next(mixed)
    assert not mixed.mixing and first.size == 32
    assert (first.observation["state"][:, 0] < 1000).all()  # Only offline rows so far.
    _write(online, rng, 40, 1000)
    for _ in range(5):
      batch = next(mixed)
      from_online = batch.observation["state"][:, 0] >= 1000
      assert mixed.mixing and batch.size == 32 and from_online.sum() == 8
      # Each part is itself rebalanced: both tasks in both parts.
      assert set(batch.task[from_online]) == {0, 1} and set(batch.task[~from_online]) == {0, 1}
    mixed.close()


def test_mixed_batches_reject_a_bad_fraction():
  with pytest.raises(ValueError, match="online fraction"):
    MixedBatches(lambda n: iter(()), lambda n: iter(()), 32, 1.0, lambda: True)
