"""The assembled system: parameter-following policy, evaluator, and `mtopt train` end to end."""

import json
import os
import pickle

import numpy as np
import pytest

from mtopt import cli, envs
from mtopt.program import nodes, offline_data, reports, run_dir
from mtopt.program.evaluation import evaluate_checkpoint
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
  ps = nodes.parameter_server(ray)
  policy = pickle.loads(pickle.dumps(nodes.pulled_cem_policy(ps, spec, 16, lcfg)))
  obs = {k: s.zeros() for k, s in spec.observation.items()}
  policy.reset()
  a = policy(obs, 0)
  assert policy.version == -1 and a.shape == spec.action.shape
  assert spec.terminate_dim is not None  # Random exploration never presses terminate.
  assert a[spec.terminate_dim] == spec.action.minimum[spec.terminate_dim]
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
  # Greedy CEM, not random: around the behaviour head's actions (its first samples) it
  # finds actions scored at least as high as those.
  one = {k: v[None] for k, v in obs.items()}
  prior = np.asarray(networks.encode_with_behaviour(net, state.params, one, np.array([3]),
                                                    spec.action.minimum,
                                                    spec.action.maximum)[1])
  assert lcfg.network.behaviour_sizes
  assert q(chosen).min() >= q(prior.reshape(-1, prior.shape[-1])).max() - 1e-5


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
  actors = [cls.remote(robot_id=50 + i, **nodes.actor_kwargs(config, registry, p))
            for i, p in enumerate(["scripted", "random"])]
  scripted = evaluate(ray, actors[:1], tasks, 4)
  rand = evaluate(ray, actors[1:], tasks, 4)
  assert set(scripted) == set(tasks)
  assert np.mean(list(scripted.values())) >= 0.75  # Experts succeed ~always.
  assert np.mean(list(rand.values())) < np.mean(list(scripted.values()))
  for a in actors:
    ray.kill(a)


def test_progress_and_plot(tmp_path):
  p = run_dir.load_progress(str(tmp_path))
  assert p["imported_episodes"] == 0 and p["evaluations"] == [] and p["step"] == 0
  p["evaluations"] = [{"step": s, "success": {"a": s / 10, "b": 0.5}} for s in (1, 5, 9)]
  run_dir.save_progress(str(tmp_path), p)
  assert run_dir.load_progress(str(tmp_path)) == p
  reports.plot_success(p["evaluations"], str(tmp_path / "s.png"))
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
  progress = run_dir.load_progress(run)
  assert [e["step"] for e in progress["evaluations"]] == [20, 40]
  assert progress["imported_episodes"] == 30 and progress["step"] == 40
  out = evaluate_checkpoint(run, episodes_per_task=1)
  assert out["step"] == 40


def test_train_offline_end_to_end_smoke(tmp_path, ray_session):
  """The main command's whole path, tiny: collect, label, replay, learn, evaluate, report."""
  run = str(tmp_path / "run")
  assert cli.main(["train", "--config", DEFAULT, f"--config.run_dir={run}", *TINY,
                   "--config.learner.num_steps=10", "--config.train.eval_every=10",
                   "--config.train.offline_episodes=12"]) == 0
  results = json.load(open(os.path.join(run, "results.json")))
  assert results["step"] == 10 and set(results["success"]) == {"reach_red", "lift_red"}
  assert run_dir.load_progress(run)["imported_episodes"] == 12


@pytest.mark.slow
def test_train_online_collects_with_cem(tmp_path, ray_session):
  run = str(tmp_path / "run")
  assert cli.main(["train", "--config", DEFAULT, f"--config.run_dir={run}", *TINY,
                   "--config.train.mode=online", "--config.learner.num_steps=40"]) == 0
  progress = run_dir.load_progress(run)
  assert progress["collected_episodes"] > 0 and progress["imported_episodes"] == 0


@pytest.mark.slow
def test_train_mixed_keeps_on_policy_episodes_in_their_own_replay(tmp_path, ray_session):
  run = str(tmp_path / "run")
  assert cli.main(["train", "--config", DEFAULT, f"--config.run_dir={run}", *TINY,
                   "--config.train.mode=mixed", "--config.train.online_fraction=0.5",
                   "--config.learner.num_steps=80", "--config.train.eval_every=40"]) == 0
  progress = run_dir.load_progress(run)
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
  progress = run_dir.load_progress(run)
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
  stored = offline_data.stored_labels(str(tmp_path), registry)
  assert set(stored) == {7, 3}
  np.testing.assert_array_equal(stored[3], labels[1])
  # Made for other slot names (e.g. before a task was renamed): not used.
  label_store.write_labels(str(tmp_path), np.array([7, 3]), labels, 1,
                           {0: "lift_red", 1: "reach_red"})
  assert offline_data.stored_labels(str(tmp_path), registry) == {}
  assert offline_data.stored_labels(str(tmp_path / "none"), registry) == {}


def _wait_for(predicate, deadline_s: float, what: str, proc=None, out=None):
  """Polls `predicate` until it holds; fails at the deadline, or as soon as `proc` (with
  its output file `out`) has exited, with the end of its output."""
  import time
  deadline = time.time() + deadline_s
  while time.time() < deadline:
    if predicate():
      return
    if proc is not None and proc.poll() is not None:
      tail = ""
      if out is not None:
        out.seek(0)
        tail = out.read()[-3000:]
      raise AssertionError(f"waiting for {what}: the run exited with {proc.returncode}\n{tail}")
    time.sleep(1.0)
  raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_killed_train_resumes_with_every_acknowledged_episode(tmp_path):
  """SIGKILL `mtopt train` (driver, its replay and learner) mid-run; the same command then
  finds every episode the replay acknowledged, resumes the learner at its checkpoint step
  with progress.json at the same step, keeps episode ids unique, and finishes."""
  import signal
  import subprocess
  import sys
  from mtopt.config import load_config
  from replay.reverb_replay import ReverbReplay
  run = str(tmp_path / "run")
  settings = [f"run_dir={run}", *(a.removeprefix("--config.") for a in TINY),
              "train.mode=online", "learner.num_steps=400", "train.eval_every=200",
              "learner.checkpoint_every=40"]
  command = [sys.executable, "-m", "mtopt.cli", "train", "--config", DEFAULT,
             *(f"--config.{s}" for s in settings)]
  # Its own process group, so that its Ray goes with it; this test starts no other Ray.
  proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
  try:
    _wait_for(lambda: run_dir.load_progress(run)["step"] >= 80, 600, "two save points")
  finally:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
  progress = run_dir.load_progress(run)
  config = load_config(DEFAULT, settings)
  spec = envs.make(config.env).spec()
  with ReverbReplay.from_config(config, spec, run_dir=run) as r:
    acked = r.acknowledged()
    before = [e.episode_id for e in r.episodes()]
  assert acked > 0 and len(before) == acked  # Every acknowledged episode, once.
  assert progress["collected_episodes"] <= acked  # Counted at the last save point.
  again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900,
                         start_new_session=True)
  assert again.returncode == 0, again.stderr[-3000:]
  # The learner's checkpoint is written first at a save point (every 40 steps here): a kill
  # inside one leaves progress.json one save point behind it, never ahead.
  resumed = int(again.stdout.split("resuming from step ")[1].split()[0])
  assert resumed in (progress["step"], progress["step"] + 40), again.stdout[:300]
  after = run_dir.load_progress(run)
  assert after["step"] == 400 and [e["step"] for e in after["evaluations"]][-1] == 400
  with ReverbReplay.from_config(config, spec, run_dir=run) as r:
    ids = [e.episode_id for e in r.episodes()]
    assert set(before) <= set(ids) and len(ids) == len(set(ids)) == r.acknowledged()
  assert progress["collected_episodes"] < after["collected_episodes"] <= len(ids)  # Actors
  # keep writing between the last save point and their shutdown.
