"""Uploads into a real Reverb replay, labelled by the run's own success detector."""

import os

import numpy as np
import pytest

from mtopt import envs
from mtopt.program.run_dir import load_run_config
from mtopt.serving import journal
from tests.serving_run import Served, episode, make_run


@pytest.mark.slow
def test_uploads_are_labelled_by_the_runs_detector_and_written_to_the_replay_once(tmp_path):
  from success_detectors.detector import DetectorConfig, SuccessDetector
  from success_detectors.examples import ExampleSet
  run = make_run(str(tmp_path / "run"))
  rng = np.random.default_rng(0)
  # A small detector on the tabletop spec: task s succeeds iff state[s] is high.
  spec = envs.make(load_run_config(run).env).spec()
  x = rng.uniform(-1, 0, (400, 44)).astype(np.float32)
  slot = np.arange(400) % 2
  success = np.arange(400) % 4 < 2
  x[success, slot[success]] = 0.8
  det = SuccessDetector.create(spec, 16, DetectorConfig(torso=(32,), head_hidden=16,
                                                        train_steps=200, batch_size=128,
                                                        head_folds=1))
  det.train(ExampleSet({"state": x}, slot, success), {0: "reach_red", 1: "reach_green"},
            steps=200)
  det.save(os.path.join(run, "detector"))
  s = Served(run, warm_up=False, replay=True)
  try:
    assert s.server.replay is not None
    eps = [episode(rng) for _ in range(6)]
    with s.client() as c:
      for i, ep in enumerate(eps):
        ep["labels"] = np.ones(16, np.float32)  # A robot's own labels are not trusted.
        for _ in range(2):  # Each upload retried once: stored once.
          c.upload_episode(i, "reach_red" if i % 2 else "reach_green", **ep)
    assert s.server.replay.num_episodes() == 6
    records = list(journal.iter_records(run))
    assert len(records) == 6
    want = det.predict({"state": np.stack([ep["observations"]["state"][-1] for ep in eps])})
    got = np.stack([r["labels"] for r in sorted(records, key=lambda r: r["episode_id"])])
    np.testing.assert_allclose(got, want, atol=1e-6)
  finally:
    s.stop()


def test_served_fleet_uploads_survive_a_resume_through_the_replays_log(tmp_path):
  """As `actors.mode=served` runs it: the server writes uploads to the training replay (a
  logged one, not refilled from the journal). After a stop without any replay checkpoint,
  the reopened replay holds every acknowledged upload once, and retries stay duplicates.
  Uploads are labelled by the labeller the program gives the server (its labeller nodes)."""
  from replay.reverb_replay import ReverbReplay
  from mtopt.serving.server import PolicyServer, ServerConfig
  from mtopt.serving import auth
  run = make_run(str(tmp_path / "run"))
  config = load_run_config(run)
  spec = envs.make(config.env).spec()
  token = auth.add_robot(run, "r1")
  rng = np.random.default_rng(0)
  eps = [episode(rng) for _ in range(5)]

  def program_labeller(episodes):
    return np.full((len(episodes), config.max_tasks), 0.25, np.float32)

  def serve(replay):
    return PolicyServer(run, ServerConfig(port=0, replay=False, warm_up=False),
                        log=lambda *a: None, replay=replay, refill_replay=False,
                        labeller=program_labeller).start()

  def upload(server, indices):
    from mtopt.robot_client import RobotClient
    with RobotClient(server.url, "r1", token) as c:
      return [c.upload_episode(i, "reach_red", **eps[i]) for i in indices]

  replay = ReverbReplay.from_config(config, spec, run_dir=os.path.join(run, "train"),
                                    slots=[0, 1])
  server = serve(replay)
  upload(server, range(4))
  server.stop()
  replay.close()  # No checkpoint: only the replay's log holds the uploads.
  replay = ReverbReplay.from_config(config, spec, run_dir=os.path.join(run, "train"),
                                    slots=[0, 1])
  try:
    assert replay.num_episodes() == 4
    server = serve(replay)
    replies = upload(server, [3, 4])  # 3 is a retry across the restart.
    server.stop()
    assert [r["duplicate"] for r in replies] == [True, False]
    assert replay.num_episodes() == 5
    assert all(np.all(ep.labels == 0.25) for ep in replay.episodes())
  finally:
    replay.close()


def test_an_upload_journalled_but_not_in_the_replay_is_written_on_restart(tmp_path):
  """A crash between the journal's fsync (the robot's acknowledgement) and the replay's
  write: the restarted server writes the journal's tail past what the replay holds."""
  from mtopt.serving.ingest import EpisodeIngest
  from replay.reverb_replay import ReverbReplay
  run = make_run(str(tmp_path / "run"))
  config = load_run_config(run)
  spec = envs.make(config.env).spec()
  rng = np.random.default_rng(0)
  raws = [episode(rng) for _ in range(3)]
  tasks = {"reach_red": 0, "lift_red": 1}
  log_dir = os.path.join(run, "train")
  replay = ReverbReplay.from_config(config, spec, run_dir=log_dir, slots=[0, 1])
  store = EpisodeIngest(run, spec, tasks, config.max_tasks, replay, refill=False)
  try:
    def upload(i):
      return (0, {"task": "reach_red", "episode_id": i, **raws[i]})
    assert all(isinstance(r, dict) for r in store.store([upload(0), upload(1)]))
    store.replay = None  # The crash: journalled (acknowledged), never written.
    assert isinstance(store.store([upload(2)])[0], dict)
  finally:
    store.close()
    replay.close()
  replay = ReverbReplay.from_config(config, spec, run_dir=log_dir, slots=[0, 1])
  try:
    assert replay.num_episodes() == 2
    again = EpisodeIngest(run, spec, tasks, config.max_tasks, replay, refill=False)
    assert again.num_restored == 3 and again.num_rewritten == 1
    assert replay.num_episodes() == replay.acknowledged() == 3
    again.close()
    again = EpisodeIngest(run, spec, tasks, config.max_tasks, replay, refill=False)
    assert again.num_rewritten == 0 and replay.num_episodes() == 3  # Nothing twice.
    again.close()
  finally:
    replay.close()
