"""Nothing acknowledged is lost: the write-ahead episode log beside the Reverb checkpoint."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from replay import episode_log
from replay.episode_log import EpisodeLog, LogError
from replay.reverb_replay import ReverbReplay
from replay.tables import TableLayout
from tests.conftest import ROOT
from tests.test_replay_helpers import MAX_TASKS, SPEC, random_episodes

SLOTS = [0, 1, 2, 3]


def durable_replay(tmp_path, **kw):
  layout = TableLayout(SPEC, MAX_TASKS, max_size=10_000, min_size=1)
  return ReverbReplay(layout, slots=SLOTS, checkpoint_dir=os.path.join(tmp_path, "replay"),
                      log_dir=os.path.join(tmp_path, "replay_log"), **kw)


def crash(replay):
  """What a killed process leaves: the server gone, no checkpoint, no flush; its files
  closed (so the log's lock is released)."""
  replay._server.stop()
  replay._log.close()


def stored_ids(replay):
  return sorted(e.episode_id for e in replay.episodes())


def test_record_round_trip_and_torn_tail_cut(rng, tmp_path):
  eps = random_episodes(rng, 3, SLOTS)
  log = EpisodeLog(str(tmp_path), None)
  log.append(eps)
  log.close()
  seg = [p for p in os.listdir(tmp_path) if p.endswith(".wal")][0]
  with open(tmp_path / seg, "ab") as f:
    f.write(episode_log.encode(eps[0])[:-5])  # A record cut by the crash: never acknowledged.
  again = EpisodeLog(str(tmp_path), None)
  back = list(again.unapplied())
  assert again.acknowledged == 3 and [e.episode_id for e in back] == [0, 1, 2]
  for a, b in zip(back, eps):
    np.testing.assert_array_equal(a.observations["image"], b.observations["image"])
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.terminated == b.terminated and a.robot_id == b.robot_id


def test_episodes_since_the_checkpoint_survive_a_crash(rng, tmp_path):
  eps = random_episodes(rng, 30, SLOTS)
  r = durable_replay(tmp_path)
  r.write_many(eps[:10])
  r.checkpoint()
  r.write_many(eps[10:25])  # Acknowledged after the checkpoint: only in the log.
  counts = r.counts()
  crash(r)
  with durable_replay(tmp_path) as r2:
    assert stored_ids(r2) == list(range(25)) and r2.counts() == counts
    assert r2.acknowledged() == 25
    r2.write_many(eps[25:])
    r2.checkpoint()  # The log is emptied into the checkpoint.
    assert not [p for p in os.listdir(tmp_path / "replay_log") if p.endswith(".wal")]
  with durable_replay(tmp_path) as r3:
    assert stored_ids(r3) == list(range(30)) and r3.acknowledged() == 30


def test_crash_between_reverb_checkpoint_and_log_state_applies_nothing_twice(rng, tmp_path,
                                                                            monkeypatch):
  eps = random_episodes(rng, 12, SLOTS)
  r = durable_replay(tmp_path)
  r.write_many(eps[:8])

  def die(self, name):
    raise KeyboardInterrupt("killed after Reverb stored the checkpoint")
  monkeypatch.setattr(EpisodeLog, "end_checkpoint", die)
  with pytest.raises(KeyboardInterrupt):
    r.checkpoint()  # Reverb holds 0-7; the log still has their segment and pending.json.
  monkeypatch.undo()
  r.write_many(eps[8:])
  crash(r)
  with durable_replay(tmp_path) as r2:
    assert stored_ids(r2) == list(range(12))  # Each once.
    assert r2.acknowledged() == 12


def test_log_refuses_a_checkpoint_it_does_not_follow(rng, tmp_path):
  with durable_replay(tmp_path) as r:
    r.write_many(random_episodes(rng, 3, SLOTS))
    path = r.checkpoint()
  os.rename(path, path + "-moved")  # Not complete by Reverb's rule any more: no DONE in
  os.remove(os.path.join(path + "-moved", "DONE"))  # a directory of that name.
  with pytest.raises(LogError, match="restored None"):
    durable_replay(tmp_path)


def test_one_process_at_a_time(rng, tmp_path):
  with durable_replay(tmp_path) as r:
    r.write_many(random_episodes(rng, 2, SLOTS))
    with pytest.raises(LogError, match="open in another process"):
      durable_replay(tmp_path)
  with durable_replay(tmp_path) as again:  # Closed: free again.
    assert again.acknowledged() == 2


_WRITER = """
import sys, numpy as np
sys.path.insert(0, {root!r})
from tests.test_replay_durability import durable_replay, SLOTS
from tests.test_replay_helpers import random_episodes
r = durable_replay({run!r})
rng = np.random.default_rng(1)
for i in range(10_000):
  r.write_many(random_episodes(rng, 4, SLOTS, first_id=4 * i))
  print(4 * i + 3, flush=True)  # Acknowledged up to this id.
  if i % 7 == 6:
    r.checkpoint()
"""


@pytest.mark.slow
def test_sigkilled_writer_loses_no_acknowledged_episode(tmp_path):
  """A real SIGKILL at an arbitrary point; every id printed as acknowledged is stored."""
  proc = subprocess.Popen([sys.executable, "-c", _WRITER.format(root=ROOT, run=str(tmp_path))],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  acked = -1
  deadline = time.time() + 120
  while acked < 150 and time.time() < deadline:
    acked = int(proc.stdout.readline())
  os.kill(proc.pid, signal.SIGKILL)
  for line in proc.stdout:  # Printed before the kill landed.
    acked = max(acked, int(line))
  proc.wait()
  assert acked >= 150
  with durable_replay(tmp_path) as r:
    ids = stored_ids(r)
    assert ids[:acked + 1] == list(range(acked + 1))  # All acknowledged ones, each once.
    assert len(ids) == len(set(ids)) == r.acknowledged()
