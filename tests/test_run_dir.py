"""The run directory: a resumed run refuses an incompatible config, naming the keys."""

import json
import os

import pytest

from mtopt import cli
from mtopt.config import ConfigError, load_config
from mtopt.program import run_dir
from tests.conftest import ROOT

DEFAULT = os.path.join(ROOT, "configs", "tabletop_state.py")


def config(tmp_path, *overrides):
  return load_config(DEFAULT, [f"run_dir={tmp_path}/run", *overrides])


def test_resume_may_change_budgets_and_cadences(tmp_path):
  path = run_dir.open_run_dir(config(tmp_path))
  again = config(tmp_path, "learner.num_steps=9000", "train.eval_every=500",
                 "eval.episodes_per_task=50", "actors.num_actors=8")
  assert run_dir.open_run_dir(again) == path
  saved = json.load(open(os.path.join(path, "config.json")))
  assert saved["learner"]["num_steps"] == 9000  # The resumed run's config is recorded.


def test_resume_refuses_other_keys_naming_them(tmp_path):
  run_dir.open_run_dir(config(tmp_path))
  changed = config(tmp_path, "learner.batch_size=512", "env.tasks=['reach_red']",
                   "learner.num_steps=10")
  with pytest.raises(ConfigError) as e:
    run_dir.open_run_dir(changed)
  msg = str(e.value)
  assert "learner.batch_size: 256 -> 512" in msg and "env.tasks" in msg
  assert "learner.num_steps:" not in msg  # May change: not named.
  saved = json.load(open(os.path.join(tmp_path, "run", "config.json")))
  assert saved["learner"]["batch_size"] == 256  # The refused config is not written.


def test_train_refuses_before_doing_anything(tmp_path, capsys):
  run_dir.open_run_dir(config(tmp_path))
  rc = cli.main(["train", "--config", DEFAULT, f"--config.run_dir={tmp_path}/run",
                 "--config.learner.gamma=0.5"])
  assert rc == 2 and "learner.gamma: 0.9 -> 0.5" in capsys.readouterr().err
  assert sorted(os.listdir(tmp_path / "run")) == ["config.json"]
