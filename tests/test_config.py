import glob
import os

import pytest

from mtopt import cli
from mtopt.config import ConfigError, load_config, split_overrides
from tests.conftest import ROOT

DEFAULT = os.path.join(ROOT, "configs", "tabletop_state.py")


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))))
def test_every_config_loads(path):
  if path.endswith("__init__.py"):
    return
  config = load_config(path)
  assert config.max_tasks >= 1


def test_overrides_are_typed():
  c = load_config(DEFAULT, ["learner.batch_size=512", "config.learner.gamma=0.5",
                            "actors.policy=random", "env.tasks=['a','b']"])
  assert c.learner.batch_size == 512 and isinstance(c.learner.batch_size, int)
  assert c.learner.gamma == 0.5
  assert c.actors.policy == "random"
  assert list(c.env.tasks) == ["a", "b"]


@pytest.mark.parametrize("override,needle", [
    ("learner.batch_sz=5", "learner.batch_sz"),
    ("nope.batch_size=5", "nope"),
    ("learner.batch_size=abc", "learner.batch_size"),
    ("learner=3", "section"),
    ("learner.batch_size", "key=value"),
])
def test_bad_override_names_the_key(override, needle):
  with pytest.raises(ConfigError, match=needle):
    load_config(DEFAULT, [override])


def test_locked_after_load():
  c = load_config(DEFAULT)
  with pytest.raises(AttributeError):
    c.learner.new_key = 1


def test_missing_and_broken_files(tmp_path):
  with pytest.raises(ConfigError, match="not found"):
    load_config(str(tmp_path / "none.py"))
  bad = tmp_path / "bad.py"
  bad.write_text("def get_config():\n  return 3\n")
  with pytest.raises(ConfigError, match="not a ConfigDict"):
    load_config(str(bad))


def test_split_overrides():
  rest, ov = split_overrides(["config", "show", "--config.a.b=1", "--config.c", "2"])
  assert rest == ["config", "show"] and ov == ["config.a.b=1", "config.c=2"]


def test_cli_config_show(capsys):
  assert cli.main(["config", "show", "--config", DEFAULT, "--config.learner.batch_size=64"]) == 0
  assert "batch_size: 64" in capsys.readouterr().out
  assert cli.main(["config", "show", "--config", DEFAULT, "--config.learner.bs=1"]) == 2
  assert "learner.bs" in capsys.readouterr().err
