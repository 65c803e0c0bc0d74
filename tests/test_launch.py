"""The assembled system: parameter-following policy, evaluator, and `mtopt train` end to end."""

import json
import os
import pickle

import numpy as np
import pytest

from mtopt import cli, envs, launch
from mtopt.parameter_server import ParameterServer
from mtopt.policy_client import PulledCEMPolicy
from mtopt.tasks import TaskRegistry
from tests.conftest import ROOT

DEFAULT = os.path.join(ROOT, "configs", "tabletop_state.py")


def test_pulled_policy_random_until_published_then_cem(ray_session):
  import jax
  from learners import learning, networks
  from learners.config import LearnerConfig
  from mtopt.config import load_config
  ray = ray_session
  config = load_config(DEFAULT)
  spec = envs.make(config.env).spec()
  lcfg = LearnerConfig.from_config(config)
  ps = ray.remote(ParameterServer).remote()
  policy = pickle.loads(pickle.dumps(PulledCEMPolicy(ps, spec, 16, lcfg.network, lcfg.cem)))
  obs = {k: s.zeros() for k, s in spec.observation.items()}
  policy.reset()
  a = policy(obs, 0)
  assert policy.version == -1 and a.shape == spec.action.shape
  if a.shape == (5,):
    assert a[4] == spec.action.minimum[4]  # Random exploration never presses terminate.
  net = networks.make_q_network(spec, 16, lcfg.network)
  state = learning.init_training_state(net, spec, lcfg, jax.random.PRNGKey(0))
  ray.get(ps.publish.remote(jax.device_get(state.params), 7))
  policy.reset()
  assert policy.version == 7
  chosen = np.stack([policy(obs, 3) for _ in range(4)])
  assert np.all(chosen >= spec.action.minimum) and np.all(chosen <= spec.action.maximum)
  def q(actions):
    many = {k: np.repeat(v[None], len(actions), 0) for k, v in obs.items()}
    return np.asarray(networks.q_logits(net, state.params, many,
                                        np.full(len(actions), 3, np.int32), actions))
  # Greedy CEM, not random: around the behaviour head's action (its first sample) it
  # finds actions scored at least as high as that one.
  one = {k: v[None] for k, v in obs.items()}
  prior = np.asarray(networks.behaviour_actions(net, state.params, one, np.array([3]),
                                                spec.action.minimum, spec.action.maximum))
  assert lcfg.network.behaviour_sizes
  assert q(chosen).min() >= q(prior)[0] - 1e-5


def test_evaluator_scores_scripted_experts(ray_session):
  from actors.evaluator import evaluate
  from actors.robot_actor import remote_robot_actor
  from mtopt.config import load_config
  ray = ray_session
  config = load_config(DEFAULT)
  env = envs.make(config.env)
  tasks = env.task_names()[:3]
  registry = TaskRegistry.from_names(16, env.task_names())
  cls = remote_robot_actor(ray, num_cpus=0)
  actors = [cls.remote(robot_id=50 + i, **launch.actor_kwargs(config, registry, p))
            for i, p in enumerate(["scripted", "random"])]
  scripted = evaluate(ray, actors[:1], tasks, 4)
  rand = evaluate(ray, actors[1:], tasks, 4)
  assert set(scripted) == set(tasks)
  assert np.mean(list(scripted.values())) >= 0.75  # Experts succeed ~always.
  assert np.mean(list(rand.values())) < np.mean(list(scripted.values()))
  for a in actors:
    ray.kill(a)


def test_progress_and_plot(tmp_path):
  p = launch.load_progress(str(tmp_path))
  assert p["imported_episodes"] == 0 and p["evaluations"] == []
  p["evaluations"] = [{"step": s, "success": {"a": s / 10, "b": 0.5}} for s in (1, 5, 9)]
  launch.save_progress(str(tmp_path), p)
  assert launch.load_progress(str(tmp_path)) == p
  launch.plot_success(p["evaluations"], str(tmp_path / "s.png"))
  assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_mode_and_missing_run_dir(tmp_path, capsys):
  rc = cli.main(["train", "--config", DEFAULT, "--config.train.mode=sideways",
                 f"--config.run_dir={tmp_path}/r"])
  assert rc == 2 and "train.mode" in capsys.readouterr().err
  assert cli.main(["eval", "--checkpoint", str(tmp_path / "nothing")]) == 2
  assert "not a run directory" in capsys.readouterr().err


TINY = ["--config.train.labels=ground_truth", "--config.train.offline_episodes=30",
        "--config.train.eval_every=20", "--config.eval.episodes_per_task=1",
        "--config.eval.num_actors=1", "--config.actors.num_actors=1",
        "--config.replay.min_size=1", "--config.learner.batch_size=32",
        "--config.env.tasks=['reach_red','lift_red']", "--config.actors.gaussian_std=0.3",
        "--config.learner.checkpoint_every=0"]


@pytest.mark.slow
def test_train_offline_resumes_and_evaluates(tmp_path, ray_session):
  run = str(tmp_path / "run")
  args = ["train", "--config", DEFAULT, f"--config.run_dir={run}", *TINY]
  assert cli.main(args + ["--config.learner.num_steps=20"]) == 0
  first = json.load(open(os.path.join(run, "results.json")))
  assert first["step"] == 20 and set(first["success"]) == {"reach_red", "lift_red"}
  assert os.path.exists(os.path.join(run, "success.png"))
  # Same command with a larger budget: resumes at 20, does not re-import the data.
  assert cli.main(args + ["--config.learner.num_steps=40"]) == 0
  progress = launch.load_progress(run)
  assert [e["step"] for e in progress["evaluations"]] == [20, 40]
  assert progress["imported_episodes"] == 30
  out = launch.evaluate_checkpoint(run, episodes_per_task=1)
  assert out["step"] == 40


def test_train_offline_end_to_end_smoke(tmp_path, ray_session):
  """The main command's whole path, tiny: collect, label, replay, learn, evaluate, report."""
  run = str(tmp_path / "run")
  assert cli.main(["train", "--config", DEFAULT, f"--config.run_dir={run}", *TINY,
                   "--config.learner.num_steps=10", "--config.train.eval_every=10",
                   "--config.train.offline_episodes=12"]) == 0
  results = json.load(open(os.path.join(run, "results.json")))
  assert results["step"] == 10 and set(results["success"]) == {"reach_red", "lift_red"}
  assert launch.load_progress(run)["imported_episodes"] == 12


@pytest.mark.slow
def test_train_online_collects_with_cem(tmp_path, ray_session):
  run = str(tmp_path / "run")
  assert cli.main(["train", "--config", DEFAULT, f"--config.run_dir={run}", *TINY,
                   "--config.train.mode=online", "--config.learner.num_steps=40"]) == 0
  progress = launch.load_progress(run)
  assert progress["collected_episodes"] > 0 and progress["imported_episodes"] == 0


@pytest.mark.slow
def test_train_mixed_keeps_on_policy_episodes_in_their_own_replay(tmp_path, ray_session):
  run = str(tmp_path / "run")
  assert cli.main(["train", "--config", DEFAULT, f"--config.run_dir={run}", *TINY,
                   "--config.train.mode=mixed", "--config.train.online_fraction=0.5",
                   "--config.learner.num_steps=80", "--config.train.eval_every=40"]) == 0
  progress = launch.load_progress(run)
  assert progress["imported_episodes"] == 30 and progress["collected_episodes"] > 0
  assert os.listdir(os.path.join(run, "online", "replay"))  # Its checkpoint.


def _kill_one_busy_robot_actor(deadline_s: float = 120) -> int:
  """SIGKILLs the process of a RobotActor that is running episodes; returns its pid."""
  import signal
  import time
  import psutil
  deadline = time.time() + deadline_s
  while time.time() < deadline:
    # Only this test session's Ray: its raylet and workers descend from this process.
    for p in psutil.Process().children(recursive=True):
      try:
        if "ray::RobotActor.run_episodes" in " ".join(p.cmdline()):
          os.kill(p.pid, signal.SIGKILL)
          return p.pid
      except psutil.Error:
        continue
    time.sleep(0.5)
  raise AssertionError("no busy RobotActor process appeared")


@pytest.mark.slow
def test_train_survives_a_killed_robot_actor(tmp_path, ray_session):
  """An actor process killed during `mtopt train` is restarted and training finishes."""
  import threading
  run = str(tmp_path / "run")
  outcome = {}
  args = ["train", "--config", DEFAULT, f"--config.run_dir={run}", *TINY,
          "--config.train.mode=online", "--config.learner.num_steps=300",
          "--config.train.eval_every=100"]
  thread = threading.Thread(target=lambda: outcome.update(rc=cli.main(args)))
  thread.start()
  killed = _kill_one_busy_robot_actor()
  thread.join(timeout=900)
  assert killed and outcome.get("rc") == 0
  progress = launch.load_progress(run)
  assert [e["step"] for e in progress["evaluations"]] == [100, 200, 300]
  assert progress["collected_episodes"] > 0


def test_offline_import_uses_stored_labels_made_for_the_same_slots(tmp_path):
  from success_detectors import label_store
  registry = TaskRegistry(4)
  for name in ("reach_red", "lift_red"):
    registry.add(name)
  labels = np.array([[0.9, 0.1, 0, 0], [0.2, 0.7, 0, 0]], np.float32)
  label_store.write_labels(str(tmp_path), np.array([7, 3]), labels, 1,
                           {0: "reach_red", 1: "lift_red"})
  stored = launch.stored_labels(str(tmp_path), registry)
  assert set(stored) == {7, 3}
  np.testing.assert_array_equal(stored[3], labels[1])
  # Made for other slot names (e.g. before a task was renamed): not used.
  label_store.write_labels(str(tmp_path), np.array([7, 3]), labels, 1,
                           {0: "lift_red", 1: "reach_red"})
  assert launch.stored_labels(str(tmp_path), registry) == {}
  assert launch.stored_labels(str(tmp_path / "none"), registry) == {}
