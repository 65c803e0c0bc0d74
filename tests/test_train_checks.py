"""`mtopt train` refuses bad config values within seconds, before any work starts."""

import os
import time

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
