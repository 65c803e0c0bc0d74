"""Actionable Models: hindsight relabelling, chaining, negatives, goal evaluation, `train`."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from actors.goal_evaluation import evaluate_goals, make_goals
from learners import learning, networks
from learners.config import LearnerConfig
from learners.goal_conditioned import goal_env_spec, goal_slot
from mtopt import envs
from mtopt.config import ConfigError, load_config
from mtopt.episode import Episode
from mtopt.goals import GOAL_KEY, TABLETOP_OBJECT_POSITIONS, GoalSpec
from mtopt.specs import ArraySpec, BoundedArraySpec, EnvSpec
from replay.hindsight import GoalEpisodes, HindsightSampler, with_goal_inputs
from tests.conftest import ROOT

GOALS = GoalSpec(indices=(0, 1, 2), tolerance=0.05)
SPEC = EnvSpec({"state": ArraySpec((4,), np.float32, "state")},
               BoundedArraySpec((3,), np.float32, "action", -1.0, 1.0), 10, terminate_dim=2)


def _episode(positions, episode_id, terminate_last=False):
  """An episode whose object (state[0:3]) visits `positions`; state[3] is the step."""
  pos = np.asarray(positions, np.float32)
  states = np.concatenate([pos, np.arange(len(pos), dtype=np.float32)[:, None]], axis=1)
  actions = np.full((len(pos) - 1, 3), -1.0, np.float32)
  if terminate_last:
    actions[-1, 2] = 1.0
  return Episode({"state": states}, actions, task_id=0, episode_id=episode_id)


def _line(start, stop, n):
  return np.linspace(start, stop, n)


def test_relabelled_reward_is_one_exactly_where_the_goal_is_reached():
  # The object stands still for 4 states, then moves 0.2 per step (tolerance 0.05).
  ep = _episode(np.concatenate([np.zeros((4, 3)), _line([0.2, 0, 0], [1.2, 0, 0], 6)]), 0)
  states = ep.observations["state"]
  data = GoalEpisodes([ep], GOALS, terminate_dim=2)
  batch = HindsightSampler(data, 512, goal_slot(4), final_goal_prob=0.3, seed=0).sample()
  s_next = batch.next_observation["state"]
  # The goal inputs hold the goal times `scale` first.
  goal = batch.next_observation[GOAL_KEY][:, :3] / GOALS.scale
  np.testing.assert_array_equal(batch.reward, GOALS.reached(s_next, goal).astype(np.float32))
  np.testing.assert_array_equal(batch.discount, 1.0 - batch.reward)
  assert 0 < batch.reward.mean() < 1
  assert (batch.task == goal_slot(4)).all() and (batch.outcome == 1).all()
  # steps_after: the goal is first reached exactly that many steps after s_t+1 (a goal
  # among the still states is reached at once).
  for t, goal_i, k in zip(batch.observation["state"][:, 3].astype(int), goal,
                          batch.steps_after.astype(int)):
    assert GOALS.reached(states[t + 1 + k], goal_i)
    assert not GOALS.reached(states[t + 1:t + 1 + k], goal_i).any()


def test_terminate_transitions_are_left_out():
  data = GoalEpisodes([_episode(_line([0, 0, 0], [1, 0, 0], 6), 0, terminate_last=True)],
                      GOALS, terminate_dim=2)
  assert len(data.rows) == 4 and (data.actions[:, 2] <= 0).all()


def test_chained_goals_come_from_successors_and_bootstrap():
  first = _episode(_line([0, 0, 0], [1, 0, 0], 6), 0)
  after = _episode(_line([1, 0, 0], [1, 1, 0], 6), 1)  # Starts where `first` ends.
  other = _episode(_line([5, 5, 5], [6, 5, 5], 6), 2)
  data = GoalEpisodes([first, other, after], GOALS)
  assert [list(s) for s in data.successors] == [[2], [], []]
  batch = HindsightSampler(data, 2000, 0, chain_prob=1.0, seed=1).sample()
  state = batch.observation["state"]
  goal = batch.observation[GOAL_KEY][:, :3] / GOALS.scale
  from_first = (state[:, 1] == 0) & (state[:, 0] < 0.99)  # after starts at x = 1.
  # `first`'s rows are chained to `after`'s states (x = 1, y along its line), and their
  # return is known along the path: first's remaining steps, then after's to the goal.
  np.testing.assert_allclose(goal[from_first, 0], 1.0, atol=1e-5)
  assert (batch.outcome[from_first] == 1).all()
  t = state[from_first, 3].astype(int)
  j = np.rint(goal[from_first, 1] / 0.2).astype(int)
  np.testing.assert_array_equal(batch.steps_after[from_first], (5 - (t + 1)) + j)
  # The others have no successor: a random episode's goal, no known return.
  assert (batch.outcome[~from_first] == 0).all()
  # Unreached chained goals are not terminal: their targets bootstrap.
  assert (batch.discount[batch.reward == 0] == 1).all()


def test_chain_imitate_marks_successor_rows_reaching_with_no_bound():
  first = _episode(_line([0, 0, 0], [1, 0, 0], 6), 0)
  after = _episode(_line([1, 0, 0], [1, 1, 0], 6), 1)
  data = GoalEpisodes([first, after], GOALS, terminate_dim=2)
  batch = HindsightSampler(data, 500, goal_slot(4), chain_prob=1.0, chain_return=False,
                           chain_imitate=True, seed=1).sample()
  from_first = batch.observation["state"][:, 0] < 0.99
  # Imitated (outcome 1), but no Monte-Carlo return: the bound outcome * gamma**inf is 0.
  assert (batch.outcome[from_first] == 1).all() and np.isinf(batch.steps_after[from_first]).all()
  assert (batch.outcome[~from_first] == 0).all()  # `after` has no successor: random goals.
  gspec = goal_env_spec(SPEC, GOALS)
  net = networks.make_q_network(gspec, 4, LearnerConfig().network)
  params = networks.init_params(net, gspec, jax.random.PRNGKey(0))
  lo, hi, key = gspec.action.minimum, gspec.action.maximum, jax.random.PRNGKey(3)
  t = [np.asarray(learning.bellman_targets(net, LearnerConfig(mc_lower_bound=mc), params,
                                           params, batch, key, lo, hi)["targets"])
       for mc in (False, True)]
  np.testing.assert_allclose(t[1][from_first], t[0][from_first], atol=1e-6)


def test_chaining_targets_use_the_later_state_q():
  gspec = goal_env_spec(SPEC, GOALS)
  config = LearnerConfig(mc_lower_bound=False)
  net = networks.make_q_network(gspec, 4, config.network)
  params = networks.init_params(net, gspec, jax.random.PRNGKey(0))
  data = GoalEpisodes([_episode(_line([0, 0, 0], [1, 0, 0], 6), 0),
                       _episode(_line([1, 0, 0], [1, 1, 0], 6), 1)], GOALS, terminate_dim=2)
  batch = HindsightSampler(data, 64, goal_slot(4), chain_prob=1.0, seed=2).sample()
  lo, hi = gspec.action.minimum, gspec.action.maximum
  key = jax.random.PRNGKey(3)
  t = learning.bellman_targets(net, config, params, params, batch, key, lo, hi)
  q_next = jax.nn.sigmoid(networks.q_logits(net, params, batch.next_observation, batch.task,
                                            t["next_action"]))
  want = np.clip(batch.reward + config.gamma * batch.discount * np.asarray(q_next), 0, 1)
  np.testing.assert_allclose(np.asarray(t["targets"]), want, atol=1e-5)
  # With the Monte-Carlo bound, a successor's known path lifts the target to its return.
  mc = LearnerConfig(mc_lower_bound=True)
  t = learning.bellman_targets(net, mc, params, params, batch, key, lo, hi)
  bound = batch.outcome * mc.gamma ** batch.steps_after
  np.testing.assert_allclose(np.asarray(t["targets"]), np.maximum(want, bound), atol=1e-5)
  # The terminate dimension is pinned: CEM never presses it in goal reaching.
  assert (np.asarray(t["next_action"])[:, 2] == -1).all()


def test_negatives_are_bounded():
  logits = jnp.linspace(-30.0, 30.0, 61)[None, :]
  grad = jax.grad(lambda x: learning.negatives_loss(x) * x.size)(logits)
  np.testing.assert_allclose(grad, jax.nn.sigmoid(logits), atol=1e-6)
  assert float(grad.max()) <= 1.0 and float(grad[0, 0]) < 1e-12  # Vanishes once Q is 0.


def test_respawn_every_keeps_the_scene_between_episodes():
  env = envs.make("tabletop", respawn_every=2)
  first = env.reset("lift_red", seed=1)["state"]
  for _ in range(3):
    env.step(np.array([1, 0, 0, 0, -1], np.float32))
  moved = env._object_pos().copy()
  second = env.reset("lift_red", seed=2)["state"]
  np.testing.assert_allclose(GoalSpec(TABLETOP_OBJECT_POSITIONS).goal_of(second),
                             moved.ravel(), atol=1e-6)
  third = env.reset("lift_red", seed=1)["state"]  # Respawned: seed 1's scene again.
  np.testing.assert_allclose(third, first, atol=1e-6)
  with pytest.raises(envs.EnvError, match="respawn_every"):
    envs.make("tabletop", respawn_every=0)


def test_expert_goals_and_their_evaluation():
  goals = GoalSpec(TABLETOP_OBJECT_POSITIONS)
  with envs.make("tabletop") as env:
    targets = make_goals(env, goals, ["move", "two_cubes"], 2, seed=5)
  assert [t["kind"] for t in targets] == ["move", "move", "two_cubes", "two_cubes"]
  assert [t["horizon"] for t in targets] == [50, 50, 100, 100]
  with envs.make("tabletop") as env:  # A goal is never reached at its start state.
    for t in targets:
      assert not goals.reached(env.reset(None, seed=t["seed"])["state"], t["goal"])
  # The start state itself is reached at once by a policy that stands still; the goals
  # (which need cubes moved) are not.
  still = lambda obs, goal: np.tile(np.array([0, 0, 0, -1, -1], np.float32), (len(goal), 1))
  starts = []
  with envs.make("tabletop") as env:
    for t in targets:
      starts.append({**t, "goal": goals.goal_of(env.reset(None, seed=t["seed"])["state"])})
  make = lambda: envs.make("tabletop", max_episode_steps=100)
  assert evaluate_goals(make, still, goals, starts).all()
  assert not evaluate_goals(make, still, goals, targets).any()


def test_goal_config_is_checked_before_work(tmp_path):
  from mtopt import launch
  config = load_config(os.path.join(ROOT, "configs", "tabletop_goals.py"),
                       [f"run_dir={tmp_path}/run", "hindsight.chain_prob=2.0",
                        "goals.tolerance=-1.0", "eval.goal_kinds=['fly']"])
  with pytest.raises(ConfigError) as e:
    launch.train(config)
  for key in ("hindsight.chain_prob", "goals.tolerance", "eval.goal_kinds"):
    assert key in str(e.value)
  assert not os.path.exists(tmp_path / "run")


def test_with_goal_inputs_adds_an_empty_goal():
  data = GoalEpisodes([_episode(_line([0, 0, 0], [1, 0, 0], 6), 0)], GOALS)
  b = next(with_goal_inputs(iter([HindsightSampler(data, 8, 0).sample()]), GOALS))
  assert (b.observation[GOAL_KEY] == 0).all() and (b.next_observation[GOAL_KEY] == 0).all()


def _scripted_dataset(path, episodes=24):
  from mtopt import rlds_format
  env = envs.make("tabletop", fine_features=True, respawn_every=2)
  names = env.task_names()
  with rlds_format.DatasetWriter(str(path), env.spec(), 16, names) as w:
    rng = np.random.default_rng(0)
    for i in range(episodes):
      task = names[i % len(names)]
      obs = env.reset(task, seed=i)
      states, actions, done = [obs["state"]], [], False
      while not done:
        a = env.expert_action()
        a[:3] += rng.normal(0, 0.1, 3).astype(np.float32)
        a = np.clip(a, -1, 1)
        obs, done, info = env.step(a)
        states.append(obs["state"])
        actions.append(a)
      success = np.zeros(16, bool)
      success[:len(names)] = env.success()
      w.write(Episode({"state": np.stack(states)}, np.stack(actions), task_id=i % len(names),
                      episode_id=i, success=success, terminated=info["terminated"]))
  env.close()


def test_train_goals_from_a_dataset_and_eval(tmp_path, capsys):
  from mtopt import cli, launch
  data = tmp_path / "data"
  _scripted_dataset(data)
  run = tmp_path / "run"
  config = load_config(os.path.join(ROOT, "configs", "tabletop_goals.py"),
                       [f"run_dir={run}", f"train.dataset_dir={data}", "learner.num_steps=8",
                        "learner.batch_size=32", "learner.checkpoint_every=4",
                        "eval.goals_per_kind=2", "eval.goal_kinds=['move']"])
  result = launch.train(config)
  assert result["step"] == 8 and result["per_kind"]["move"]["goals"] == 2
  with open(run / "results.json") as f:
    assert json.load(f)["step"] == 8
  assert launch.train(config)["step"] == 8  # Resumes: nothing left to train.
  cli.main(["eval", "--checkpoint", str(run), "--episodes", "2", "--json"])
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert out["step"] == 8 and set(out["per_kind"]) == {"move"}


def test_a_task_learner_starts_from_a_goal_network_with_its_own_terminate_head():
  """Downstream use (experiments.actionable_models): tabletop's task-conditioned network,
  offline (one behaviour mode), from AM's parameters; AM's network has no terminate head."""
  from learners.goal_conditioned import with_goal_observation
  from mtopt.program import goal_training
  gconfig = load_config(os.path.join(ROOT, "configs", "tabletop_goals.py"))
  tconfig = load_config(os.path.join(ROOT, "configs", "tabletop_state.py"),
                        ["learner.network.behaviour_modes=1"])
  spec, goals = envs.make(gconfig.env).spec(), goal_training.goal_spec(gconfig)
  glcfg, tlcfg = LearnerConfig.from_config(gconfig), LearnerConfig.from_config(tconfig)
  max_tasks = int(tconfig.max_tasks)
  gspec, tspec = goal_env_spec(spec, goals), with_goal_observation(spec, goals)
  am = networks.init_params(networks.make_q_network(gspec, max_tasks, glcfg.network), gspec,
                            jax.random.PRNGKey(1))
  net = networks.make_q_network(tspec, max_tasks, tlcfg.network)
  fresh = learning.init_training_state(net, tspec, tlcfg, jax.random.PRNGKey(0))
  state = learning.start_from(fresh, am, tlcfg)
  got, was, given = (learning.params_by_path(t) for t in (state.target_params, fresh.params, am))
  kept = [k for k in got if k not in given]
  assert kept and all("terminate" in k for k in kept)  # Only AM's missing head stays fresh.
  for k in kept:
    np.testing.assert_array_equal(got[k], was[k])
  for k, x in given.items():
    np.testing.assert_array_equal(got[k], x)
  # Four behaviour modes have another output shape: refused, naming the parameter.
  four = load_config(os.path.join(ROOT, "configs", "tabletop_state.py"))
  lcfg4 = LearnerConfig.from_config(four)
  net4 = networks.make_q_network(tspec, max_tasks, lcfg4.network)
  with pytest.raises(ValueError, match=r"behaviour.*\(the network's: "):
    learning.start_from(learning.init_training_state(net4, tspec, lcfg4, jax.random.PRNGKey(0)),
                        am, lcfg4)
