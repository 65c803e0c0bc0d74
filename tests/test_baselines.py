"""Offline baselines: BC fits a task-conditioned policy, IQL prefers the rewarded action."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from learners.baselines import BaselineConfig, BaselineLearner, expectile_loss
from mtopt.batch import Batch
from mtopt.config import ConfigError
from mtopt.specs import ArraySpec, BoundedArraySpec, EnvSpec

D, A, TASKS = 6, 3, 3  # State dims; action (dx, dy, gripper); tasks used of max_tasks 4.
SPEC = EnvSpec({"state": ArraySpec((D,), np.float32)},
               BoundedArraySpec((A,), np.float32, "action", -1.0, 1.0), 10)
SMALL = BaselineConfig(batch_size=64, learning_rate=1e-3, hidden_sizes=(64, 64),
                       task_embedding_dim=8)
W = np.random.default_rng(42).normal(size=(TASKS, 2, D)).astype(np.float32) / np.sqrt(D)


def _expert(state, task):
  """dx, dy = tanh(W[task] @ s); the gripper closes (+1) for task 1 only."""
  action = np.empty((len(task), A), np.float32)
  action[:, :2] = np.tanh(np.einsum("bij,bj->bi", W[task], state))
  action[:, 2] = np.where(task == 1, 1.0, -1.0)
  return action


def _batch(state, action, reward, discount, task):
  return Batch({"state": state}, action, reward, discount, {"state": state}, task)


def expert_batches(seed, size=64):
  rng = np.random.default_rng(seed)
  while True:
    state = rng.normal(size=(size, D)).astype(np.float32)
    task = rng.integers(0, TASKS, size).astype(np.int32)
    zeros = np.zeros(size, np.float32)
    yield _batch(state, _expert(state, task), zeros, zeros + 1, task)


def bandit_batches(seed, size=64):
  """One step: dim 0 is +0.9 (reward 1) or -0.9 (reward 0), equally often; then done."""
  rng = np.random.default_rng(seed)
  while True:
    state = rng.normal(size=(size, D)).astype(np.float32)
    task = rng.integers(0, TASKS, size).astype(np.int32)
    good = rng.random(size) < 0.5
    action = rng.uniform(-1, 1, (size, A)).astype(np.float32)
    action[:, 0] = np.where(good, 0.9, -0.9)
    yield _batch(state, action, good.astype(np.float32), np.zeros(size, np.float32), task)


def test_bc_fits_a_task_conditioned_policy_and_snaps_discrete_dims():
  learner = BaselineLearner(SPEC, 4, SMALL, expert_batches(0), discrete_dims=(2,))
  first = learner.run(1)
  metrics = learner.run(399)
  assert learner.steps == 400
  assert metrics["action_mse"] < 0.01 < first["action_mse"], (first, metrics)

  test = next(expert_batches(1, 256))
  actions, q = learner.act_batch(test.observation, test.task)
  assert actions.shape == (256, A) and actions.dtype == np.float32
  assert np.all(np.isnan(q)) and q.shape == (256,)
  want = test.action
  assert np.abs(actions[:, :2] - want[:, :2]).mean() < 0.1  # Predicting 0: ~0.55.
  assert np.array_equal(actions[:, 2], want[:, 2])  # Exactly +-1, per task.
  assert np.all(np.abs(actions) <= 1)
  params = learner.get_params()
  assert all(isinstance(x, np.ndarray) for x in __import__("jax").tree.leaves(params))


def test_expectile_loss_weights_errors_asymmetrically():
  diff = jnp.asarray([-2.0, -0.5, 0.0, 0.5, 3.0])
  np.testing.assert_allclose(expectile_loss(diff, 0.5).mean(), 0.5 * np.mean(diff ** 2),
                             rtol=1e-6)
  np.testing.assert_allclose(expectile_loss(diff, 0.7),
                             [0.3 * 4, 0.3 * 0.25, 0.0, 0.7 * 0.25, 0.7 * 9], rtol=1e-6)
  # Minimised over a constant v, the 0.7 expectile of {0, 1} (equally often) is 0.7.
  v = np.linspace(0, 1, 1001)
  loss = [expectile_loss(jnp.asarray([0.0, 1.0]) - x, 0.7).mean() for x in v]
  assert abs(v[int(np.argmin(loss))] - 0.7) < 2e-3


def test_iql_prefers_the_rewarded_action_where_bc_averages():
  config = dataclasses.replace(SMALL, method="iql", polyak_tau=0.05)
  iql = BaselineLearner(SPEC, 4, config, bandit_batches(0))
  metrics = iql.run(600)
  bc = BaselineLearner(SPEC, 4, SMALL, bandit_batches(0))
  bc.run(300)
  test = next(bandit_batches(1, 256))
  iql_actions, _ = iql.act_batch(test.observation, test.task)
  bc_actions, _ = bc.act_batch(test.observation, test.task)
  assert iql_actions[:, 0].min() > 0.5, (iql_actions[:, 0].min(), metrics)
  assert np.abs(bc_actions[:, 0]).mean() < 0.15 and np.abs(bc_actions[:, 0]).max() < 0.45
  assert abs(metrics["v_mean"] - 0.7) < 0.15  # The 0.7 expectile of Q in {0, 1}.


def test_filtered_bc_is_bc_on_the_rows_it_is_fed():
  runs = [BaselineLearner(SPEC, 4, dataclasses.replace(SMALL, method=m), expert_batches(0))
          for m in ("bc", "filtered_bc")]
  a, b = (r.run(3) for r in runs)
  assert a == b


def test_config_from_dict_rejects_unknown_keys_and_bad_values():
  config = BaselineConfig.from_dict({"method": "iql", "hidden_sizes": [32], "gamma": "0.9"})
  assert config.method == "iql" and config.hidden_sizes == (32,) and config.gamma == 0.9
  with pytest.raises(ConfigError, match="learning_rat"):
    BaselineConfig.from_dict({"learning_rat": 1e-3})
  with pytest.raises(ConfigError, match="method"):
    BaselineConfig.from_dict({"method": "cql"})
  with pytest.raises(ConfigError, match="expectile"):
    BaselineConfig.from_dict({"expectile": 1.5})
  with pytest.raises(ConfigError, match="batch_size"):
    BaselineConfig.from_dict({"batch_size": "big"})


def test_bad_batches_raise_clear_errors():
  batch = next(expert_batches(0, 8))
  bad_keys = batch._replace(observation={"pixels": batch.observation["state"]})
  with pytest.raises(ValueError, match="keys"):
    BaselineLearner(SPEC, 4, SMALL, iter([bad_keys])).step()
  bad_shape = batch._replace(action=batch.action[:, :2])
  with pytest.raises(ValueError, match="action"):
    BaselineLearner(SPEC, 4, SMALL, iter([bad_shape])).step()
  with pytest.raises(ValueError, match="outside"):
    BaselineLearner(SPEC, 4, SMALL, iter([batch._replace(task=batch.task + 7)])).step()
  with pytest.raises(ValueError, match="discrete dim"):
    BaselineLearner(SPEC, 4, SMALL, iter([]), discrete_dims=(5,))


def test_iql_on_images_runs():
  spec = EnvSpec({"image": ArraySpec((8, 8, 3), np.uint8), "state": ArraySpec((2,), np.float32)},
                 BoundedArraySpec((2,), np.float32, "action", -1.0, 1.0), 10, terminate_dim=1)
  rng = np.random.default_rng(0)
  obs = {"image": rng.integers(0, 256, (4, 8, 8, 3)).astype(np.uint8),
         "state": rng.normal(size=(4, 2)).astype(np.float32)}
  batch = Batch(obs, rng.uniform(-1, 1, (4, 2)).astype(np.float32), np.ones(4, np.float32),
                np.zeros(4, np.float32), obs, np.arange(4, dtype=np.int32) % 2)
  learner = BaselineLearner(spec, 2, dataclasses.replace(SMALL, method="iql"),
                            iter([batch] * 2), discrete_dims=(1,))
  metrics = learner.run(2)
  assert all(np.isfinite(v) for v in metrics.values())
  actions, _ = learner.act_batch(obs, batch.task)
  assert actions.shape == (4, 2) and set(np.unique(actions[:, 1])) <= {-1.0, 1.0}
