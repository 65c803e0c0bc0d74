"""The simulated fleet through the server: robot actors act via the robot client and
upload their episodes, which the server stores (labelled) once."""

import json
import os

import numpy as np
import pytest

from mtopt import cli
from mtopt.program.run_dir import load_progress, load_run_config
from mtopt.serving import journal
from tests.serving_run import DEFAULT, Served, make_run


@pytest.mark.slow
def test_robot_actor_acts_and_uploads_through_the_server(tmp_path):
  from actors.robot_actor import RobotActor
  from actors.served_policy import ServedPolicy, UploadSink
  run = make_run(str(tmp_path / "run"), overrides=["train.labels=ground_truth"])
  s = Served(run, warm_up=False, max_batch=1)
  try:
    config = load_run_config(run)
    registry = json.load(open(os.path.join(run, "tasks.json")))
    policy = ServedPolicy(s.url, "r1", s.tokens["r1"])
    actor = RobotActor(robot_id=3, env_config=config.env.to_dict(), registry=registry,
                       policy=policy, tasks=["reach_red"], gaussian_std=0.1, seed=1,
                       sink=UploadSink(s.url, "r1", s.tokens["r1"]))
    episodes = actor.run_episodes(2, first_episode_id=(1 << 40) + 5)
    assert policy.client.policy_version == 10
  finally:
    s.stop()
  records = sorted(journal.iter_records(run), key=lambda r: r["episode_id"])
  assert [r["episode_id"] & 0xFFFFFFFF for r in records] == [5, 6]
  for r, ep in zip(records, episodes):
    np.testing.assert_array_equal(r["actions"], ep.actions)
    np.testing.assert_array_equal(r["labels"], ep.success.astype(np.float32))  # Ground truth.


@pytest.mark.slow
@pytest.mark.parametrize("placement", ["driver", "actors"])
def test_train_online_through_the_server(tmp_path, ray_session, placement):
  """With `actors`, the server in the driver writes uploads to the replay node and follows
  the learner node's checkpoints."""
  from tests.test_launch import TINY
  run = str(tmp_path / "run")
  assert cli.main(["train", "--config", DEFAULT, f"--config.run_dir={run}", *TINY,
                   "--config.train.mode=online", "--config.actors.mode=served",
                   "--config.learner.num_steps=40", f"--config.program.placement={placement}",
                   "--config.replay.num_cpus=0.25", "--config.learner.num_cpus=0.25",
                   "--config.labeller.num_cpus=0.25"]) == 0
  progress = load_progress(run)
  stored = list(journal.iter_records(run))
  assert progress["collected_episodes"] > 0 and len(stored) >= progress["collected_episodes"]
  assert len({r["episode_id"] for r in stored}) == len(stored)  # Each stored once.
  results = json.load(open(os.path.join(run, "results.json")))
  assert results["step"] == 40
  for node in ("learner_node.json", "replay_node.json"):
    assert os.path.exists(os.path.join(run, node)) == (placement == "actors")
