"""The QT-Opt update: clipped double-Q targets, Polyak and lagged targets, analytic Q."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from learners import learning, networks
from learners.config import CEMConfig, LearnerConfig, NetworkConfig
from tests import learner_mdp as mdp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = NetworkConfig(torso_sizes=(32, 32), merge_width=16, head_sizes=(16,),
                      task_embedding_dim=4)
MAX_TASKS = 4


def _setup(**overrides):
  config = LearnerConfig(**{"network": SMALL, "batch_size": 32, **overrides})
  spec = mdp.env_spec()
  net = networks.make_q_network(spec, MAX_TASKS, config.network)
  state = learning.init_training_state(net, spec, config, jax.random.PRNGKey(0))
  return config, spec, net, state


def _perturbed(params, key, scale=0.15):
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(tree, [l + scale * jax.random.normal(k, l.shape)
                                   for l, k in zip(leaves, keys)])


def test_targets_use_min_of_both_targets_at_cem_action_of_first(rng):
  config, spec, net, state = _setup(gamma=0.8)
  q1_params = _perturbed(state.params, jax.random.PRNGKey(1))
  q2_params = _perturbed(state.params, jax.random.PRNGKey(2))
  batch = mdp.random_batch(rng, 64)
  lo, hi = spec.action.minimum, spec.action.maximum
  t = jax.jit(lambda a, b, k: learning.bellman_targets(net, config, a, b, batch, k, lo, hi))(
      q1_params, q2_params, jax.random.PRNGKey(3))
  a_star = np.asarray(t["next_action"])

  @jax.jit
  def q(params, action):
    return jax.nn.sigmoid(networks.q_logits(net, params, batch.next_observation, batch.task,
                                            action))

  q1, q2 = np.asarray(q(q1_params, a_star)), np.asarray(q(q2_params, a_star))
  np.testing.assert_allclose(t["q1"], q1, atol=1e-5)
  np.testing.assert_allclose(t["q2"], q2, atol=1e-5)
  want = np.clip(batch.reward + 0.8 * batch.discount * np.minimum(q1, q2), 0, 1)
  np.testing.assert_allclose(t["targets"], want, atol=1e-5)
  assert np.any(q2 < q1) and np.any(q1 < q2)  # Both branches of the min were exercised.
  # a* maximises the first target, not the second: no grid action beats it by much on Q1.
  # Measured over 30 CEM keys: the worst row trails the grid's best by at most 0.036 and
  # >= 95% of rows are within 0.02; a* maximising Q2 instead would trail by up to 0.25,
  # with only 61% of rows within 0.02.
  grid = np.linspace(-1, 1, 41, dtype=np.float32)
  best_grid = np.max([q(q1_params, np.full((64, 1), g, np.float32)) for g in grid], axis=0)
  assert np.all(q1 >= best_grid - 0.05)
  assert np.mean(q1 >= best_grid - 0.02) >= 0.9
  # Terminal rows are exactly their reward.
  done = batch.discount == 0
  assert done.any()
  np.testing.assert_allclose(np.asarray(t["targets"])[done], batch.reward[done])


def test_polyak_and_lagged_targets_follow_their_rules(rng):
  config, spec, net, state = _setup(polyak_tau=0.25, lagged_period=3)
  update = learning.make_update_fn(net, spec, config, MAX_TASKS)
  initial = state.params
  for step in range(1, 7):
    before = state
    state, metrics = update(state, mdp.random_batch(rng, 32))
    assert int(state.step) == step
    want = jax.tree.map(lambda p, t: 0.25 * p + 0.75 * t, state.params, before.target_params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 state.target_params, want)
    expect_lagged = state.params if step % 3 == 0 else before.lagged_params
    jax.tree.map(np.testing.assert_array_equal, state.lagged_params, expect_lagged)
  # The online net moved, so the lagged copy is not the initial one any more.
  assert not np.allclose(jax.tree.leaves(state.lagged_params)[0], jax.tree.leaves(initial)[0])
  assert np.isfinite(float(metrics["loss"]))
  counts = np.asarray(metrics["task_count"])
  assert counts.sum() == 32 and counts[2:].sum() == 0  # Per-task TD covers tasks 0 and 1.


def test_negatives_lower_q_of_actions_the_data_never_took():
  """With data that only ever moved right (a >= 0.3), artificial negatives make Q of moving
  left lower, relative to the data's actions, than plain Q-learning's extrapolation."""
  def train(negatives):
    config, spec, net, state = _setup(negative_actions=negatives, learning_rate=3e-3)
    update = learning.make_update_fn(net, spec, config, MAX_TASKS)
    rng = np.random.default_rng(0)
    for _ in range(300):
      state, metrics = update(state, mdp.random_batch(rng, 32, low=0.3))
    pos = np.arange(mdp.N).repeat(2)
    task = np.tile([0, 1], mdp.N).astype(np.int32)
    obs = {"state": np.eye(mdp.N, dtype=np.float32)[pos]}
    logit = lambda a: np.asarray(networks.q_logits(  # noqa: E731
        net, state.params, obs, task, np.full((len(pos), 1), a, np.float32)))
    return float(np.mean(logit(-0.9) - logit(0.9))), float(metrics["negative_q_mean"])

  plain, _ = train(0)
  conservative, negative_q = train(8)
  assert 0.0 <= negative_q < 1.0
  assert conservative < plain - 0.5, (plain, conservative)


def test_negatives_gradient_vanishes_once_their_q_is_zero():
  grad = jax.grad(lambda x: learning.negatives_loss(x))
  at_zero_q = np.asarray(grad(np.full((4, 8), -30.0, np.float32)))
  assert np.abs(at_zero_q).max() < 1e-12
  # At Q = 0.5 each of the 32 logits gets sigmoid(0) / 32; the push is bounded by 1 / N.
  np.testing.assert_allclose(grad(np.zeros((4, 8), np.float32)), 0.5 / 32, rtol=1e-6)
  # The loss itself is bounded below (0) and never rewards the data's actions.
  assert float(learning.negatives_loss(np.full((2, 3), -30.0, np.float32))) < 1e-12


def test_targets_are_at_least_the_monte_carlo_return(rng):
  config, spec, net, state = _setup(gamma=0.8, mc_lower_bound=True)
  batch = mdp.random_batch(rng, 64)
  outcome = (rng.random(64) < 0.5).astype(np.float32)
  steps_after = rng.integers(0, 6, 64).astype(np.float32)
  batch = batch._replace(outcome=outcome, steps_after=steps_after)
  lo, hi = spec.action.minimum, spec.action.maximum
  targets = lambda c: np.asarray(learning.bellman_targets(  # noqa: E731
      net, c, state.target_params, state.lagged_params, batch, jax.random.PRNGKey(3), lo,
      hi)["targets"])
  bootstrap = targets(config.__class__(**{**config.__dict__, "mc_lower_bound": False}))
  with_bound = targets(config)
  np.testing.assert_allclose(with_bound, np.maximum(bootstrap, outcome * 0.8 ** steps_after),
                             atol=1e-6)
  assert np.any(with_bound > bootstrap + 0.1)


@pytest.mark.slow
def test_offline_q_learning_reaches_analytic_q_on_chain():
  gamma = 0.9
  config, spec, net, state = _setup(  # Plain QT-Opt: negatives bias Q* downward.
      batch_size=128, learning_rate=3e-3, gamma=gamma, polyak_tau=0.05, lagged_period=20,
      negative_actions=0,
      network=NetworkConfig(torso_sizes=(64, 64), merge_width=32, head_sizes=(32,),
                            task_embedding_dim=8))
  update = learning.make_update_fn(net, spec, config, MAX_TASKS)
  batches = mdp.batches(0, 128)
  for _ in range(1200):
    state, _ = update(state, next(batches))
  pos, task, act = np.meshgrid(np.arange(mdp.N), [0, 1], [-0.9, -0.4, 0.4, 0.9], indexing="ij")
  pos, task, act = pos.ravel(), task.ravel(), act.ravel().astype(np.float32)
  keep = pos != np.asarray(mdp.GOALS)[task]  # Goal states are terminal: never trained on.
  pos, task, act = pos[keep], task[keep], act[keep]
  obs = {"state": np.eye(mdp.N, dtype=np.float32)[pos]}
  q = np.asarray(jax.nn.sigmoid(networks.q_logits(net, state.params, obs, task, act[:, None])))
  err = np.abs(q - mdp.analytic_q(pos, act, task, gamma))
  assert err.max() < 0.05, f"max |Q - Q*| = {err.max():.3f}"


_DATA_PARALLEL = r"""
import jax, numpy as np
assert jax.device_count() == 2, jax.devices()
from learners import learning, networks
from learners.config import LearnerConfig, NetworkConfig
from tests import learner_mdp as mdp
config = LearnerConfig(batch_size=32, network=NetworkConfig(torso_sizes=(32, 32),
                       merge_width=16, head_sizes=(16,), task_embedding_dim=4))
spec = mdp.env_spec()
net = networks.make_q_network(spec, 4, config.network)
state0 = learning.init_training_state(net, spec, config, jax.random.PRNGKey(0))
rng = np.random.default_rng(0)
batches = [mdp.random_batch(rng, 32) for _ in range(3)]
results = []
for mesh in (None, learning.data_mesh()):
  update = learning.make_update_fn(net, spec, config, 4, mesh)
  state = state0 if mesh is None else jax.device_put(state0, learning.replicated(mesh))
  for b in batches:
    if mesh is not None:
      b = jax.device_put(b, learning.batch_sharding(mesh))
      assert len(b.action.sharding.device_set) == 2
    state, m = update(state, b)
  results.append((jax.device_get(state.params), float(m["loss"])))
(p1, l1), (p2, l2) = results
jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), p1, p2)
assert abs(l1 - l2) < 1e-5, (l1, l2)
# The Learner picks both devices up by itself and matches too, one update per call and
# three (batches stacked, split on their second axis).
import dataclasses
from learners.learner import Learner
for k in (1, 3):
  learner = Learner(spec, 4, dataclasses.replace(config, updates_per_call=k), iter(batches))
  learner.run(3)
  assert len(learner.state.step.sharding.device_set) == 2
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), p1,
               learner.get_params())
print("OK", l1, l2)
"""


@pytest.mark.slow
def test_data_parallel_over_two_devices_matches_one():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  out = subprocess.run([sys.executable, "-c", _DATA_PARALLEL], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "OK" in out.stdout


def test_behaviour_head_imitates_only_successful_rows(rng):
  """Rows of successful episodes move right, the others left: the head learns right."""
  config, spec, net, state = _setup(learning_rate=3e-3, network=NetworkConfig(
      torso_sizes=(32, 32), merge_width=16, head_sizes=(16,), task_embedding_dim=4,
      behaviour_sizes=(32,)))
  update = learning.make_update_fn(net, spec, config, MAX_TASKS)
  for _ in range(300):
    b = mdp.random_batch(rng, 32)
    outcome = (rng.random(32) < 0.5).astype(np.float32)
    action = np.where(outcome[:, None] > 0, 0.9, -0.9).astype(np.float32)
    state, _ = update(state, b._replace(action=action, outcome=outcome,
                                        steps_after=np.ones(32, np.float32)))
  obs = {"state": np.eye(mdp.N, dtype=np.float32)}
  pi = np.asarray(networks.encode_with_behaviour(net, state.params, obs,
                                                 np.zeros(mdp.N, np.int32), spec.action.minimum,
                                                 spec.action.maximum)[1])
  assert np.all(pi > 0.5), pi
  # CEM for targets and acting starts from it: with a narrow prior the action stays near.
  a, _ = learning.cem_best_actions(net, state.params, obs, np.zeros(mdp.N, np.int32),
                                   jax.random.PRNGKey(0), spec.action.minimum,
                                   spec.action.maximum, CEMConfig(prior_std=0.05))
  assert np.all(np.abs(np.asarray(a) - pi) < 0.3)



def test_behaviour_modes_learn_each_mode_of_the_successful_rows(rng):
  """Successful rows move left or right at random: one behaviour action learns their mean
  (0, between them), K = 2 actions learn both, and CEM starts from both."""
  def train(modes):
    config, spec, net, state = _setup(learning_rate=3e-3, network=NetworkConfig(
        torso_sizes=(32, 32), merge_width=16, head_sizes=(16,), task_embedding_dim=4,
        behaviour_sizes=(32,), behaviour_modes=modes))
    update = learning.make_update_fn(net, spec, config, MAX_TASKS)
    for _ in range(300):
      b = mdp.random_batch(rng, 32)
      action = np.where(rng.random(32)[:, None] < 0.5, 0.8, -0.8).astype(np.float32)
      state, _ = update(state, b._replace(action=action, outcome=np.ones(32, np.float32),
                                          steps_after=np.ones(32, np.float32)))
    obs = {"state": np.eye(mdp.N, dtype=np.float32)}
    return np.asarray(networks.encode_with_behaviour(
        net, state.params, obs, np.zeros(mdp.N, np.int32), spec.action.minimum,
        spec.action.maximum)[1])
  mean = train(1)
  assert mean.shape == (mdp.N, 1) and np.all(np.abs(mean) < 0.3), mean
  two = train(2)
  assert two.shape == (mdp.N, 2, 1)
  assert np.all(np.sort(two[..., 0], axis=1)[:, 0] < -0.5), two
  assert np.all(np.sort(two[..., 0], axis=1)[:, 1] > 0.5), two


def test_behaviour_error_is_mostly_the_nearest_modes():
  predicted = jnp.asarray([[[0.0], [1.0], [-1.0]]])  # [1, K=3, A=1]
  action = jnp.asarray([[0.9]])
  err = np.square(np.array([0.9, 0.1, 1.9]))
  want = (1 - learning._MODE_RELAX) * err[1] + learning._MODE_RELAX / 2 * (err[0] + err[2])
  np.testing.assert_allclose(learning.behaviour_error(predicted, action), [want], rtol=1e-6)
  np.testing.assert_allclose(learning.behaviour_error(predicted[:, 0], action), [err[0]],
                             rtol=1e-6)


def test_state_labels_train_q_of_terminating_toward_each_state_label(rng):
  """With `state_label_weight`, the Learner labels every row's state (its `state_labeller`)
  and Q(s, terminate) learns that label: here, odd states are successes."""
  from learners.learner import Learner
  from mtopt.specs import BoundedArraySpec, EnvSpec
  spec = EnvSpec(mdp.env_spec().observation, BoundedArraySpec((2,), np.float32, "action",
                                                              -1.0, 1.0), 20, terminate_dim=1)
  config = LearnerConfig(network=NetworkConfig(torso_sizes=(32,), merge_width=16,
                                               head_sizes=(16,), task_embedding_dim=4,
                                               terminate_sizes=(32,)),
                         batch_size=32, learning_rate=3e-3, state_label_weight=1.0)
  eye = np.eye(mdp.N, dtype=np.float32)

  def batches():
    while True:
      pos = rng.integers(0, mdp.N, 32)
      action = np.stack([rng.uniform(-1, 1, 32), -np.ones(32)], 1).astype(np.float32)
      yield mdp.Batch({"state": eye[pos]}, action, np.zeros(32, np.float32),
                      np.ones(32, np.float32), {"state": eye[pos]}, np.zeros(32, np.int32))
  labelled = []

  def odd(observation):
    labelled.append(len(observation["state"]))
    out = np.zeros((len(observation["state"]), MAX_TASKS), np.float32)
    out[:, 0] = np.argmax(observation["state"], 1) % 2
    return out
  learner = Learner(spec, MAX_TASKS, config, batches(), state_labeller=odd)
  learner.run(400)
  stop = np.tile(np.array([[0.0, 1.0]], np.float32), (mdp.N, 1))
  q = jax.nn.sigmoid(networks.q_logits(learner.network, learner.state.params, {"state": eye},
                                       np.zeros(mdp.N, np.int32), stop))
  np.testing.assert_allclose(np.asarray(q), np.arange(mdp.N) % 2, atol=0.15)
  assert labelled and set(labelled) == {32}


@pytest.mark.parametrize("shared", [False, True])
def test_shared_head_learns_the_data_terminations_only_when_asked(rng, shared):
  """With a terminate head, the data's terminating rows train that head; with
  `shared_head_at_terminations` they train the shared Q-head too (for its torso)."""
  from mtopt.specs import BoundedArraySpec, EnvSpec
  spec = EnvSpec(mdp.env_spec().observation, BoundedArraySpec((2,), np.float32, "action",
                                                              -1.0, 1.0), 20, terminate_dim=1)
  config = LearnerConfig(network=NetworkConfig(torso_sizes=(32,), merge_width=16,
                                               head_sizes=(16,), task_embedding_dim=4,
                                               terminate_sizes=(16,)),
                         batch_size=32, shared_head_at_terminations=shared)
  net = networks.make_q_network(spec, MAX_TASKS, config.network)
  state = learning.init_training_state(net, spec, config, jax.random.PRNGKey(0))
  pos = rng.integers(0, mdp.N, 32)
  eye = np.eye(mdp.N, dtype=np.float32)
  stop = np.stack([rng.uniform(-1, 1, 32), np.ones(32)], 1).astype(np.float32)  # All stop.
  batch = mdp.Batch({"state": eye[pos]}, stop, np.ones(32, np.float32), np.zeros(32, np.float32),
                    {"state": eye[pos]}, np.zeros(32, np.int32))
  new, _ = learning.make_update_fn(net, spec, config, MAX_TASKS)(state, batch)
  moved = lambda name: max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(  # noqa: E731
      jax.tree.leaves(state.params["params"][name]), jax.tree.leaves(new.params["params"][name])))
  assert moved("terminate_output") > 0
  assert (moved("head_layers_0") > 0) == shared
  assert (moved("torso_layers_0") > 0) == shared


def test_full_loss_and_gradients_match_the_terms_computed_one_by_one(rng):
  """The update shares the shared head's logits between its terms and takes Q(s, terminate)
  straight from the terminate head: its loss and gradients (read off an SGD step of rate 1)
  are those of every term computed on its own, as the heads define them."""
  import jax.numpy as jnp
  import optax
  from mtopt.cem import split_key
  from mtopt.specs import BoundedArraySpec, EnvSpec
  spec = EnvSpec(mdp.env_spec().observation, BoundedArraySpec((3,), np.float32, "action",
                                                              -1.0, 1.0), 20, terminate_dim=2)
  config = LearnerConfig(network=NetworkConfig(torso_sizes=(32,), merge_width=16,
                                               head_sizes=(16,), task_embedding_dim=4,
                                               behaviour_sizes=(32,), terminate_sizes=(32,)),
                         batch_size=64, state_label_weight=0.7, mc_lower_bound=True,
                         shared_head_at_terminations=True, cem=CEMConfig(score_terminate=True))
  net = networks.make_q_network(spec, MAX_TASKS, config.network)
  state = learning.init_training_state(net, spec, config, jax.random.PRNGKey(0))
  state = state._replace(params=_perturbed(state.params, jax.random.PRNGKey(1)))
  b = mdp.random_batch(rng, 64)
  action = rng.uniform(-1, 1, (64, 3)).astype(np.float32)  # A third of the rows terminate.
  batch = b._replace(action=action, outcome=(rng.random(64) < 0.5).astype(np.float32),
                     steps_after=rng.integers(0, 10, 64).astype(np.float32),
                     state_label=(rng.random(64) < 0.3).astype(np.float32))
  lo, hi = spec.action.minimum, spec.action.maximum
  new, metrics = jax.jit(lambda s, b: learning.update_step(
      s, b, network=net, config=config, optimizer=optax.sgd(1.0), minimum=lo, maximum=hi,
      max_tasks=MAX_TASKS))(state, batch)
  targets = learning.bellman_targets(net, config, state.target_params, state.lagged_params,
                                     batch, split_key(state.key)[1], lo, hi)["targets"]

  def reference(params):
    features, predicted = networks.encode_with_behaviour(net, params, batch.observation,
                                                         batch.task, lo, hi)
    ce = optax.sigmoid_binary_cross_entropy
    logits = networks.head_logits(net, params, features, batch.action)
    shared = networks.head_logits(net, params, features[0], batch.action)
    stopped = (batch.action[:, 2] > 0).astype(jnp.float32)
    stop = jnp.zeros_like(batch.action).at[:, 2].set(hi[2])
    stop_logits = networks.head_logits(net, params, features, stop)
    err = jnp.square(predicted - batch.action).mean(axis=-1)
    return (ce(logits, targets).mean() + (stopped * ce(shared, targets)).mean()
            + (err * batch.outcome).sum() / batch.outcome.sum()
            + 0.7 * ce(stop_logits, batch.state_label).mean())

  loss, grads = jax.jit(jax.value_and_grad(reference))(state.params)
  assert float(metrics["loss"]) == pytest.approx(float(loss), abs=1e-5)
  got = jax.tree.map(lambda old, new: old - new, state.params, new.params)
  for name, want in grads["params"].items():
    for g, w in zip(jax.tree.leaves(got["params"][name]), jax.tree.leaves(want)):
      np.testing.assert_allclose(g, w, atol=1e-5, err_msg=name)
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))  # All terms train.


def test_learning_rate_follows_a_cosine_to_its_final_fraction():
  """final_learning_rate_fraction 0.1: the step size falls along a cosine from
  learning_rate to a tenth of it at num_steps and stays there; update_step scales Adam's
  update by it (same optimiser state as a constant step)."""
  from learners.learning import learning_rate_scale
  from mtopt.config import ConfigError
  config = LearnerConfig(num_steps=10, final_learning_rate_fraction=0.1)
  scale = [float(learning_rate_scale(config, np.float32(s))) for s in range(14)]
  np.testing.assert_allclose(scale[0], 1.0)
  np.testing.assert_allclose(scale[5], 0.55, rtol=1e-5)
  np.testing.assert_allclose(scale[10:], 0.1, rtol=1e-5)
  assert all(a >= b for a, b in zip(scale, scale[1:]))
  # The update at step 10 moves the parameters a tenth as far as a constant step would.
  rng = np.random.default_rng(0)
  batch = mdp.random_batch(rng, 32)
  moved = {}
  for fraction in (1.0, 0.1):
    c, spec, net, state = _setup(num_steps=10, final_learning_rate_fraction=fraction)
    state = state._replace(step=jax.numpy.asarray(10, jax.numpy.int32))
    new, _ = learning.make_update_fn(net, spec, c, MAX_TASKS)(state, batch)
    moved[fraction] = np.concatenate([np.ravel(a - b) for a, b in zip(
        jax.tree.leaves(new.params), jax.tree.leaves(state.params))])
  np.testing.assert_allclose(moved[0.1], 0.1 * moved[1.0], atol=1e-7)  # float32 rounding.
  with pytest.raises(ConfigError, match="final_learning_rate_fraction"):
    LearnerConfig(final_learning_rate_fraction=1.5)


def test_acting_switches_a_discrete_dim_only_where_q_gains_more_than_the_margin(monkeypatch):
  """Dims 1 (gripper) and 2 (terminate) are discrete in [-1, 1]. Q = sigmoid(w * gripper)
  for continuing actions: switching the gripper from -1 to 1 gains sigmoid(w) - sigmoid(-w).
  Terminating rows and the terminate dim itself are never switched."""
  class Net:
    terminate_dim = 2
  w = jnp.asarray([0.1, 1.0, 3.0, 3.0])  # Per-row gains: 0.05, 0.46, 0.91, 0.91.
  monkeypatch.setattr(learning, "_score_actions",
                      lambda network, a, params, features: features[:, None] * a[..., 1])
  actions = jnp.asarray([[0.3, -1.0, -1.0], [0.3, -1.0, -1.0], [0.3, -1.0, -1.0],
                         [0.3, -1.0, 1.0]])
  logits = w * actions[:, 1]
  cem = CEMConfig(discrete_dims=(1, 2), switch_margin=0.2)
  out, out_logits = learning.switch_discrete(Net(), None, w, actions, logits, cem,
                                             np.full(3, -1.0), np.full(3, 1.0))
  np.testing.assert_array_equal(np.asarray(out[:, 1]), [-1.0, 1.0, 1.0, -1.0])
  np.testing.assert_array_equal(np.asarray(out[:, [0, 2]]), np.asarray(actions[:, [0, 2]]))
  np.testing.assert_allclose(np.asarray(out_logits), [-0.1, 1.0, 3.0, -3.0])
  with pytest.raises(Exception, match="switch_margin"):
    CEMConfig(switch_margin=1.5)
