"""The Reverb server hosted in a Ray actor, written to from another Ray worker."""

import os

import numpy as np
import pytest

from replay.reverb_replay import ReverbReplay
from replay.server_actor import start_server_actor
from replay.tables import TableLayout
from tests.test_replay_helpers import MAX_TASKS, SPEC, random_episodes


def _write_remote(layout, address, seed):
  from replay.reverb_replay import ReverbReplay as R
  from tests.test_replay_helpers import random_episodes as make
  eps = make(np.random.default_rng(seed), 8, [0, 1], first_id=1000)
  with R(layout, address=address, slots=[0, 1], sharing="none") as r:
    r.write_many(eps)
  return [(e.task_id, bool(e.success[e.task_id])) for e in eps]


@pytest.mark.slow
def test_ray_hosted_server_shared_by_clients(ray_session, rng, tmp_path):
  ray = ray_session
  layout = TableLayout(SPEC, MAX_TASKS, max_size=1000)
  handle, address = start_server_actor(layout, checkpoint_dir=str(tmp_path / "replay"))
  try:
    assert ":" in address
    mine = random_episodes(rng, 6, [0, 1])
    with ReverbReplay(layout, address=address, slots=[0, 1], sharing="none") as r:
      r.write_many(mine)
      theirs = ray.get(ray.remote(_write_remote).remote(layout, address, 7))
      assert r.num_episodes() == 14
      want = {k: {"success": 0, "failure": 0} for k in range(MAX_TASKS)}
      for k, ok in [(e.task_id, bool(e.success[e.task_id])) for e in mine] + theirs:
        want[k]["success" if ok else "failure"] += 1
      assert r.counts() == want
      b = next(r.sampler(16))
      assert b.size == 16 and set(np.unique(b.task)) <= {0, 1}
      path = ray.get(handle.checkpoint.remote())
      assert os.path.dirname(path) == str(tmp_path / "replay")
  finally:
    ray.get(handle.stop.remote())
    ray.kill(handle)
