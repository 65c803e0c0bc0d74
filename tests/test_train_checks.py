"""`mtopt train` refuses bad config values within seconds, before any work starts."""

import os
import time

import numpy as np
import pytest

from mtopt import cli
from mtopt.config import ConfigError, load_config
from mtopt.program.checks import check_config
from tests.conftest import ROOT

DEFAULT = os.path.join(ROOT, "configs", "tabletop_state.py")


@pytest.mark.parametrize("override,needle", [
    ("learner.batch_size=-5", "learner.batch_size"),
    ("replay.sharing=most", "replay.sharing"),
    ("replay.min_size=0", "replay.min_size"),
    ("replay.success_fraction=1.5", "replay.success_fraction"),
    ("actors.num_actors=0", "actors.num_actors"),
    ("train.online_fraction=1.0", "train.online_fraction"),
    ("cem.num_elites=100", "num_elites"),
    ("detector.learning_rate=0", "learning_rate"),
    ("train.labels=oracle", "train.labels"),
])
def test_bad_values_are_named(override, needle):
  with pytest.raises(ConfigError, match=needle):
    check_config(load_config(DEFAULT, [override]))


def test_state_labels_need_an_env_that_judges_states():
  with pytest.raises(ConfigError, match="learner.state_label_weight must be 0 unless"):
    check_config(load_config(DEFAULT, ["learner.state_label_weight=1.0",
                                       "train.labels=ground_truth", "env.observation=image"]))
  check_config(load_config(DEFAULT, ["learner.state_label_weight=1.0", "train.labels=learned",
                                     "env.observation=image"]))


def test_every_problem_is_listed_at_once():
  with pytest.raises(ConfigError) as e:
    check_config(load_config(DEFAULT, ["learner.batch_size=-5", "replay.min_size=0",
                                       "eval.episodes_per_task=-1"]))
  for key in ("learner.batch_size", "replay.min_size", "eval.episodes_per_task"):
    assert key in str(e.value)


def test_shipped_configs_pass():
  for name in ("tabletop_state.py", "metaworld_mt10.py"):
    check_config(load_config(os.path.join(ROOT, "configs", name)))


def test_train_refuses_a_bad_value_before_ray_or_any_work(tmp_path, capsys):
  import ray
  started = ray.is_initialized()
  t0 = time.monotonic()
  rc = cli.main(["train", "--config", DEFAULT, f"--config.run_dir={tmp_path}/run",
                 "--config.learner.batch_size=-5", "--config.train.tasks=['nope']"])
  assert rc == 2 and "learner.batch_size must be >= 1" in capsys.readouterr().err
  assert time.monotonic() - t0 < 20
  assert not os.path.exists(tmp_path / "run")  # No run directory, detector or data.
  assert ray.is_initialized() == started  # Ray was not started for it.
  rc = cli.main(["train", "--config", DEFAULT, f"--config.run_dir={tmp_path}/run2",
                 "--config.train.dataset_dir=/no/such/dataset"])
  assert rc == 2 and "train.dataset_dir" in capsys.readouterr().err


def _tabletop_dataset(path, n=20, per_shard=10):
  from mtopt import envs, rlds_format
  from mtopt.episode import Episode
  config = load_config(DEFAULT)
  spec = envs.make(config.env).spec()
  rng = np.random.default_rng(0)
  with rlds_format.DatasetWriter(str(path), spec, int(config.max_tasks), [],
                                 episodes_per_shard=per_shard) as w:
    for i in range(n):
      t = 5
      obs = {k: rng.normal(size=(t + 1, *s.shape)).astype(s.dtype)
             for k, s in spec.observation.items()}
      w.write(Episode(obs, rng.uniform(-1, 1, (t, *spec.action.shape)).astype(np.float32),
                      task_id=i % 2, episode_id=i))
  from replay import rlds_shards
  return [s.path for s in rlds_shards.shards(str(path))]


def test_train_names_a_truncated_shard_before_any_work(tmp_path, capsys):
  from mtopt.program import offline_data
  files = _tabletop_dataset(tmp_path / "ds")
  with open(files[1], "r+b") as f:
    f.truncate(os.path.getsize(files[1]) // 2 + 7)  # Inside a record.
  t0 = time.monotonic()
  rc = cli.main(["train", "--config", DEFAULT, f"--config.run_dir={tmp_path}/run",
                 f"--config.train.dataset_dir={tmp_path}/ds"])
  err = capsys.readouterr().err
  assert rc == 2 and files[1] in err and "truncated record" in err, err
  assert "train.skip_bad_episodes=true" in err
  assert time.monotonic() - t0 < 20 and not os.path.exists(tmp_path / "run")
  # Asked to skip: the check reports and lets the run go on.
  config = load_config(DEFAULT, [f"train.dataset_dir={tmp_path}/ds",
                                 "train.skip_bad_episodes=true"])
  from mtopt import envs
  logged = []
  offline_data.check_dataset(config, envs.make(config.env).spec(), logged.append)
  assert files[1] in logged[0] and "15 episodes readable" in logged[0]


def test_train_refuses_a_dataset_of_another_spec(tmp_path, capsys):
  _tabletop_dataset(tmp_path / "ds")
  rc = cli.main(["train", "--config", DEFAULT, f"--config.run_dir={tmp_path}/run",
                 f"--config.train.dataset_dir={tmp_path}/ds",
                 "--config.env.fine_features=false"])
  assert rc == 2 and "another env spec" in capsys.readouterr().err
