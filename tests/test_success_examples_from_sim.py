"""Ground-truth example folders from the tabletop simulator (the real env, a few episodes)."""


import numpy as np
import pytest

from mtopt import cli
from mtopt.envs import tabletop_scene as scene
from mtopt.envs import tabletop_tasks
from success_detectors.examples import read_example_folder, read_task_info
from success_detectors.examples_from_sim import collect_rollouts, select_examples

TASKS = ["lift_red", "place_green_in_bin"]


def truth_from_state(states):
  """Re-judges tabletop states [N, 26] with the env's own predicates."""
  n = len(scene.OBJECTS)
  out = []
  for s in states:
    objs = np.stack([s[5 + 7 * i:8 + 7 * i] for i in range(n)]).astype(np.float64)
    out.append(tabletop_tasks.success_all(s[:3].astype(np.float64), objs))
  return np.array(out)


@pytest.fixture(scope="module")
def env():
  import mtopt.envs
  with mtopt.envs.make("tabletop", observation="state", seed=0) as e:
    yield e


def test_rollouts_are_mixed_and_truth_matches_final_states(env):
  r = collect_rollouts(env, 12, TASKS, seed=3)
  assert len(r) == 24 and r.truth.shape == (24, len(env.task_names()))
  np.testing.assert_array_equal(truth_from_state(r.observations["state"]), r.truth)
  for t in TASKS:
    own = r.truth[r.attempted == r.task_names.index(t), r.task_names.index(t)]
    assert 0 < own.mean() < 1, (t, own)  # Noise gives both outcomes.
  pos, neg = select_examples(r, "lift_red", max_successes=3, max_failures=5)
  k = r.task_names.index("lift_red")
  assert len(pos) <= 3 and len(neg) <= 5 and r.truth[pos, k].all() and not r.truth[neg, k].any()


def test_midway_states_are_kept_with_the_truth_at_each(env):
  r = collect_rollouts(env, 4, TASKS, seed=3, midway_states=2)
  assert len(r) == 8 * 3  # Every episode runs more than two steps.
  np.testing.assert_array_equal(truth_from_state(r.observations["state"]), r.truth)
  assert len(np.unique(r.observations["state"], axis=0)) == len(r)  # No aliased buffers.
  with pytest.raises(ValueError, match="midway_states"):
    collect_rollouts(env, 1, TASKS, midway_states=-1)


def test_make_examples_command_writes_readable_ground_truth_folders(env, tmp_path, capsys):
  assert cli.main(["tasks", "make-examples", "--out", str(tmp_path), "--tasks", ",".join(TASKS),
                   "--episodes-per-task", "12", "--max-successes", "5",
                   "--config.env.tasks=" + ",".join(TASKS),
                   "--config.env.fine_features=False"]) == 0  # The fixture env's state.
  k = {t: env.task_names().index(t) for t in TASKS}
  for t in TASKS:
    folder = str(tmp_path / t)
    ex = read_example_folder(folder, env.spec(), slot=7)
    truth = truth_from_state(ex.observations["state"])[:, k[t]]
    np.testing.assert_array_equal(truth, ex.success)
    assert 0 < ex.success.sum() <= 5
    assert read_task_info(folder)["name"] == t
  assert cli.main(["tasks", "make-examples", "--out", str(tmp_path), "--tasks", "fly"]) == 2
  assert "unknown task" in capsys.readouterr().err
