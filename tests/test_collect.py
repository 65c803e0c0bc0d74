"""`mtopt collect`: episodes -> RLDS on disk -> the same episodes back through TFDS."""

import os

import numpy as np
import pytest

from mtopt.config import ConfigError, load_config
from mtopt.envs.tabletop_tasks import TASK_NAMES
from mtopt.tasks import TaskRegistry
from tests.conftest import ROOT

from actors.robot_actor import RobotActor

CONFIG = os.path.join(ROOT, "configs", "tabletop_state.py")


def assert_same_episode(a, b):
  assert (a.task_id, a.robot_id, a.episode_id, a.terminated) == \
      (b.task_id, b.robot_id, b.episode_id, b.terminated)
  assert np.array_equal(a.actions, b.actions)
  assert a.observations.keys() == b.observations.keys()
  for k in a.observations:
    assert np.array_equal(a.observations[k], b.observations[k]), k
  assert np.array_equal(a.success, b.success)


def test_actor_episodes_round_trip_through_tfds(tmp_path):
  from mtopt.rlds_format import DatasetWriter
  from mtopt.tf_setup import tf  # noqa: F401
  import tensorflow_datasets as tfds
  reg = TaskRegistry.from_names(16, TASK_NAMES)
  actor = RobotActor(4, {"name": "tabletop", "max_episode_steps": 30}, reg, epsilon=0.2, seed=2)
  eps = actor.run_episodes(12, first_episode_id=1000)
  out = str(tmp_path / "ds")
  with DatasetWriter(out, actor.spec(), reg.max_tasks, reg.names) as w:
    for e in eps:
      w.write(e)
  builder = tfds.builder_from_directory(out)
  assert builder.info.splits["train"].num_examples == 12
  ds = builder.as_dataset(split="train")
  for ex, ep in zip(tfds.as_numpy(ds), eps):
    meta = ex["episode_metadata"]
    assert int(meta["task_id"]) == ep.task_id and int(meta["robot_id"]) == 4
    steps = list(ex["steps"])
    assert len(steps) == ep.num_steps + 1
    assert steps[0]["is_first"] and steps[-1]["is_last"]
    assert np.array_equal(np.stack([s["action"] for s in steps[:-1]]), ep.actions)
    assert np.array_equal(np.stack([s["observation"]["state"] for s in steps]),
                          ep.observations["state"])


def test_mixture_parsing():
  from mtopt.commands.collect import parse_mixture
  assert parse_mixture("b=0.1,c=3", ["a", "b", "c"]) == [1.0, 0.1, 3.0]
  with pytest.raises(ConfigError, match="unknown task 'd'"):
    parse_mixture("d=1", ["a"])
  with pytest.raises(ConfigError, match="NAME=WEIGHT"):
    parse_mixture("a", ["a"])
  with pytest.raises(ConfigError, match=">= 0"):
    parse_mixture("a=-1", ["a"])


def test_collect_rejects_bad_arguments(tmp_path, capsys):
  from mtopt import cli
  rc = cli.main(["collect", "--config", CONFIG, "--episodes", "0", "--out", str(tmp_path / "x")])
  assert rc == 2 and "--episodes must be >= 1" in capsys.readouterr().err
  rc = cli.main(["collect", "--config", CONFIG, "--episodes", "3", "--out", str(tmp_path / "x"),
                 "--mixture", "lift_purple=1"])
  assert rc == 2 and "unknown task 'lift_purple'" in capsys.readouterr().err


@pytest.mark.slow
def test_collect_command_writes_dataset_that_tfds_loads(ray_session, tmp_path):
  from mtopt import cli
  from mtopt.rlds_format import read_episodes, read_metadata
  import tensorflow_datasets as tfds
  out = str(tmp_path / "tt")
  rare, common = "push_blue_to_red", "reach_red"
  rc = cli.main(["collect", "--config", CONFIG, "--episodes", "24", "--out", out,
                 "--actors", "2", "--no-progress", "--episodes-per-call", "3",
                 "--mixture", f"{common}=30,{rare}=0.01", "--config.seed=5",
                 "--config.env.tasks=[]", "--config.actors.epsilon=0",
                 "--config.actors.early_terminate_prob=0"])
  assert rc == 0
  builder = tfds.builder_from_directory(out)
  assert builder.info.splits["train"].num_examples == 24
  spec, max_tasks, names = read_metadata(out)
  assert names == list(TASK_NAMES) and max_tasks == 16
  eps = list(read_episodes(out))
  assert len({e.episode_id for e in eps}) == 24 and {e.robot_id for e in eps} == {0, 1}
  tasks = [names[e.task_id] for e in eps]
  assert tasks.count(common) > 12 and tasks.count(rare) <= 2, "the mixture is imbalanced"
  # Scripted, noise-free episodes are a function of (seed, episode id, task): re-running
  # them locally must reproduce exactly what was written.
  reg = TaskRegistry.from_names(16, names)
  env = {**load_config(CONFIG).env.to_dict(), "tasks": []}  # The env `collect` made.
  local = RobotActor(0, env, reg, seed=5)
  for e in eps[:6]:
    again = local.run_episode(names[e.task_id], e.episode_id)
    again.robot_id = e.robot_id
    assert_same_episode(e, again)
    e.validate(spec, max_tasks)


@pytest.mark.slow
def test_one_actor_collects_the_same_dataset_from_the_same_seed(ray_session, tmp_path):
  """The experiments collect with one actor so that their data is a function of the seed
  (scenes kept between episodes, noise carried across calls: all in one order)."""
  from experiments.protocol import data_sha
  from mtopt import envs
  from mtopt.program import collection, nodes
  config = load_config(os.path.join(ROOT, "configs", "tabletop_goals.py"), ["seed=3"])
  with envs.make(config.env) as env:
    reg = TaskRegistry.from_names(int(config.max_tasks), env.task_names())
  kwargs = nodes.scripted_actor_kwargs(config, reg, "scripted")
  shas = []
  for name in ("a", "b"):
    collection.collect_dataset(config, ray_session, reg, str(tmp_path / name), 14, kwargs,
                               num_actors=1)
    shas.append(data_sha(str(tmp_path / name)))
  assert shas[0] == shas[1]
