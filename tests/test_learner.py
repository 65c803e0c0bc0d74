"""The Learner (batches in, logs, checkpoints, published params) and the CEMPolicy."""

import dataclasses
import glob
import os
import struct

import jax
import numpy as np
import pytest

from learners.config import CEMConfig, LearnerConfig, NetworkConfig
from learners.learner import Learner
from learners.policy import CEMPolicy
from mtopt.config import ConfigError, load_config
from tests import learner_mdp as mdp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = LearnerConfig(batch_size=32, log_every=2, checkpoint_every=0, publish_every=3,
                       lagged_period=2,
                       network=NetworkConfig(torso_sizes=(32, 32), merge_width=16,
                                             head_sizes=(16,), task_embedding_dim=4))


def _trees_equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _read_scalars(path):
  """tag -> [(step, value)] from a TensorBoard event file (TFRecord framing, no TF import)."""
  from tensorboardX.proto import event_pb2

  out = {}
  with open(path, "rb") as f:
    data = f.read()
  i = 0
  while i < len(data):
    n = struct.unpack("<Q", data[i:i + 8])[0]
    event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
    i += 12 + n + 4  # length, its CRC, the record, its CRC.
    for v in event.summary.value:
      out.setdefault(v.tag, []).append((event.step, v.simple_value))
  return out


def test_resumed_checkpoint_continues_exactly(tmp_path):
  run = str(tmp_path / "run")
  published = []
  periodic = dataclasses.replace(CONFIG, checkpoint_every=3)
  with Learner(mdp.env_spec(), 4, periodic, mdp.batches(1, 32), run_dir=run,
               publish=lambda p, s: published.append(s)) as learner:
    learner.run(3)  # The periodic (async) save writes step 3...
    assert learner.save() == 3  # ...and an explicit save of the same step keeps it.
    saved_params = learner.get_params()
    after = [learner.step() for _ in range(2)]  # Steps 4, 5: no periodic save.
    uninterrupted = jax.device_get(learner.state)
  assert published == [3]
  assert os.listdir(os.path.join(run, "checkpoints")) == ["3"]

  # A new Learner on the same run dir resumes at step 3; feed it the same next batches.
  batches = mdp.batches(1, 32)
  for _ in range(3):
    next(batches)
  with Learner(mdp.env_spec(), 4, periodic, batches, run_dir=run) as resumed:
    assert resumed.steps == 3
    assert _trees_equal(resumed.get_params(), saved_params)
    again = [resumed.step() for _ in range(2)]
    assert _trees_equal(jax.device_get(resumed.state), uninterrupted)  # Params, targets,
    # optimiser, step and RNG key all match.
  for a, b in zip(after, again):
    assert float(a["loss"]) == float(b["loss"])


def test_logs_to_tensorboard_with_per_task_td(tmp_path):
  run = str(tmp_path / "run")
  with Learner(mdp.env_spec(), 4, CONFIG, mdp.batches(0, 32), run_dir=run) as learner:
    metrics = learner.run(4)
  assert np.isfinite(metrics["loss"])
  files = glob.glob(os.path.join(run, "learner", "events.*"))
  assert files
  scalars = _read_scalars(files[0])
  tags = set(scalars)
  for tag in ("learner/loss", "learner/q_mean", "learner/td_abs_mean", "td_abs/task_0",
              "td_abs/task_1", "learner/steps_per_second"):
    assert tag in tags, sorted(tags)
  assert "td_abs/task_2" not in tags  # Slot 2 never appears in the chain's batches.
  assert [step for step, _ in scalars["learner/loss"]] == [2, 4]


def test_several_updates_per_call_match_one_per_call(tmp_path):
  # run() stacks updates_per_call batches into one call, but ends a call where a
  # publication (or checkpoint) is due, so those see the state of their exact step.
  runs = {}
  for k in (1, 4):
    config = dataclasses.replace(CONFIG, updates_per_call=k, publish_every=6, log_every=1)
    published = []
    with Learner(mdp.env_spec(), 4, config, mdp.batches(2, 32), run_dir=str(tmp_path / str(k)),
                 publish=lambda p, s: published.append((s, p))) as learner:
      metrics = learner.run(13)  # Calls of 4, 2 single, 4, 2 single, 1 single.
      runs[k] = (jax.device_get(learner.state), metrics, published)
    scalars = _read_scalars(glob.glob(os.path.join(tmp_path, str(k), "learner", "events.*"))[0])
    runs[k] += ([step for step, _ in scalars["learner/loss"]], scalars["learner/loss"])
  (one, m1, pub1, steps1, loss1), (four, m4, pub4, steps4, loss4) = runs[1], runs[4]
  assert int(four.step) == 13 and steps4 == steps1 == list(range(1, 14))
  assert [s for s, _ in pub4] == [s for s, _ in pub1] == [6, 12]
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  jax.tree.map(close, jax.tree.leaves(four), jax.tree.leaves(one))
  for (_, p4), (_, p1) in zip(pub4, pub1):
    jax.tree.map(close, p4, p1)
  close([v for _, v in loss4], [v for _, v in loss1])  # Each update's own metrics logged.
  close(m4["loss"], m1["loss"])


def test_bad_batches_raise_clear_errors():
  batch = mdp.random_batch(np.random.default_rng(0), 8)
  bad_task = batch._replace(task=np.full(8, 9, np.int32))
  learner = Learner(mdp.env_spec(), 4, CONFIG, iter([bad_task]))
  with pytest.raises(ValueError, match="outside"):
    learner.step()
  bad_keys = batch._replace(observation={"pixels": batch.observation["state"]})
  with pytest.raises(ValueError, match="keys"):
    Learner(mdp.env_spec(), 4, CONFIG, iter([bad_keys])).step()
  with pytest.raises(StopIteration, match="exhausted"):
    Learner(mdp.env_spec(), 4, CONFIG, iter([])).step()


def test_config_from_experiment_file():
  config = LearnerConfig.from_config(load_config(os.path.join(ROOT, "configs/tabletop_state.py")))
  assert config.gamma == 0.9
  assert (config.cem.num_samples, config.cem.num_elites, config.cem.num_iterations) == (64, 6, 2)
  assert config.network.architecture == "split"
  with pytest.raises(ConfigError, match="architecture"):
    load = load_config(os.path.join(ROOT, "configs/tabletop_state.py"),
                       ["learner.network.architecture=nope"])
    LearnerConfig.from_config(load)
  with pytest.raises(ConfigError, match="num_elites"):
    CEMConfig(num_samples=4, num_elites=8)
  assert config.updates_per_call == 4
  with pytest.raises(ConfigError, match="updates_per_call"):
    LearnerConfig(updates_per_call=0)


def test_image_networks_run_one_update_per_call_on_cpu():
  # XLA:CPU compiles a multi-update program's convolution gradients as plain loops (~10x
  # slower), so image networks there take one update per call; state networks take several.
  from learners import learning, networks
  from tests.test_learner_networks import IMAGE_SPEC, STATE_SPEC

  cpu = jax.devices("cpu")
  for spec, want in ((STATE_SPEC, 4), (IMAGE_SPEC, 1)):
    net = networks.make_q_network(spec, 4, CONFIG.network)
    assert learning.updates_per_call(net, dataclasses.replace(CONFIG, updates_per_call=4),
                                     cpu) == want


def test_policy_acts_greedily_within_bounds_and_explores():
  spec = mdp.env_spec()
  from learners import networks
  params = networks.init_params(networks.make_q_network(spec, 4, CONFIG.network), spec,
                                jax.random.PRNGKey(0))
  policy = CEMPolicy(spec, 4, CONFIG.network, params,
                     CEMConfig(num_samples=64, num_elites=6, num_iterations=3))
  obs = {"state": np.eye(mdp.N, dtype=np.float32)[2]}
  action = policy(obs, 1)
  assert action.shape == (1,) and action.dtype == np.float32
  assert -1 <= action[0] <= 1
  # The greedy action's Q is (nearly) the best on a grid of actions.
  import jax.numpy as jnp
  grid = np.linspace(-1, 1, 101, dtype=np.float32)[:, None]
  q_grid = jax.nn.sigmoid(networks.q_logits(
      policy.network, params, {"state": np.repeat(obs["state"][None], 101, 0)},
      jnp.full((101,), 1, jnp.int32), grid))
  assert policy.last_q >= float(q_grid.max()) - 1e-3

  explorer = CEMPolicy(spec, 4, CONFIG.network, params, epsilon=1.0, seed=1)
  random_actions = np.array([explorer(obs, 0)[0] for _ in range(200)])
  assert random_actions.min() < -0.8 and random_actions.max() > 0.8  # Uniform over bounds.
  policy.gaussian_std = 0.3  # Same jitted act, noise added after it.
  noisy_actions = np.array([policy(obs, 1)[0] for _ in range(50)])
  assert np.all(np.abs(noisy_actions) <= 1) and noisy_actions.std() > 0.05

  with pytest.raises(ValueError, match="task slot"):
    policy(obs, 4)
  with pytest.raises(KeyError, match="state"):
    policy({"pixels": obs["state"]}, 0)
  with pytest.raises(RuntimeError, match="set_params"):
    CEMPolicy(spec, 4, CONFIG.network)(obs, 0)


def test_exploration_never_presses_terminate_by_chance():
  """Epsilon-random actions leave the terminate dimension off; only CEM's own choice ends."""
  from mtopt.specs import ArraySpec, BoundedArraySpec, EnvSpec
  from learners import networks
  spec = EnvSpec({"state": ArraySpec((3,), np.float32)},
                 BoundedArraySpec((3,), np.float32, "action", -1.0, 1.0), 10, terminate_dim=2)
  params = networks.init_params(networks.make_q_network(spec, 4, CONFIG.network), spec,
                                jax.random.PRNGKey(0))
  explorer = CEMPolicy(spec, 4, CONFIG.network, params, epsilon=1.0, seed=3)
  actions = np.array([explorer({"state": np.zeros(3, np.float32)}, 0) for _ in range(300)])
  assert np.all(actions[:, 2] == -1.0)
  assert actions[:, 0].std() > 0.4  # The other dimensions are still uniformly random.


def test_each_robot_explores_with_its_own_seed():
  """One policy object pickled to several actors: each reseeds it with its own robot id."""
  import pickle
  from actors.robot_actor import RobotActor
  from actors.parameter_client import PulledPolicy
  from mtopt.parameter_server import ParameterServer
  from mtopt.tasks import TaskRegistry
  registry = TaskRegistry.from_names(4, ["reach_red"])
  spec = mdp.env_spec()
  policy = PulledPolicy(ParameterServer(), None, spec.action, spec.terminate_dim)
  streams = []
  for robot in (0, 1):
    actor = RobotActor(robot, {"name": "tabletop", "tasks": ["reach_red"]}, registry,
                       pickle.loads(pickle.dumps(policy)), seed=7)
    streams.append(actor.policy._rng.random(5))
    assert actor.policy.seed == [7, robot, 2]
  assert not np.allclose(*streams)
