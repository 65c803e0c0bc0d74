"""`mtopt replay import | info | export` on a run directory."""

import os

import numpy as np
import pytest

from mtopt import cli, envs, rlds_format
from mtopt.config import load_config
from mtopt.episode import Episode

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "tabletop_state.py")


def episodes_for(spec, max_tasks, n, rng):
  out = []
  for i in range(n):
    t = int(rng.integers(1, spec.max_episode_steps + 1))
    obs = {k: rng.normal(size=(t + 1, *s.shape)).astype(s.dtype)
           for k, s in spec.observation.items()}
    out.append(Episode(obs, rng.uniform(-1, 1, (t, *spec.action.shape)).astype(np.float32),
                       task_id=i % 3, episode_id=i,
                       labels=(rng.random(max_tasks) < 0.3).astype(np.float32)))
  return out


@pytest.mark.slow
def test_import_info_export_round_trip(tmp_path, rng, capsys):
  run = ["--config", CONFIG, f"--config.run_dir={tmp_path / 'run'}"]
  config = load_config(CONFIG, [f"run_dir={tmp_path / 'run'}"])
  spec = envs.make(config.env).spec()
  eps = episodes_for(spec, config.max_tasks, 12, rng)
  with rlds_format.DatasetWriter(str(tmp_path / "in"), spec, config.max_tasks, []) as w:
    for ep in eps:
      w.write(ep)
  assert cli.main(["replay", "import", str(tmp_path / "in"), *run]) == 0
  assert "imported 12 episodes" in capsys.readouterr().out
  assert cli.main(["replay", "info", *run]) == 0  # Restored from the checkpoint.
  assert "12 episodes stored" in capsys.readouterr().out
  assert cli.main(["replay", "export", str(tmp_path / "out"), *run]) == 0
  back = {e.episode_id: e for e in rlds_format.read_episodes(str(tmp_path / "out"))}
  assert sorted(back) == list(range(12))
  for ep in eps:
    np.testing.assert_array_equal(back[ep.episode_id].actions, ep.actions)
    np.testing.assert_array_equal(back[ep.episode_id].labels, ep.labels)
  # A directory that is not a dataset is a clear error, not a traceback.
  capsys.readouterr()
  assert cli.main(["replay", "import", str(tmp_path / "run"), *run]) == 2
  assert "not a TFDS" in capsys.readouterr().err
