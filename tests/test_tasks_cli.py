"""`mtopt tasks add / list`: a task from an example folder; bad folders change nothing."""

import hashlib
import os

import numpy as np
import pytest

from mtopt import cli, rlds_format
from mtopt.tasks import TaskRegistry
from success_detectors import label_store
from success_detectors.detector import SuccessDetector
from success_detectors.examples import ExampleSet, write_example_folder
from tests.test_success_detector import (FAST, MAX_TASKS, SPEC, toy_examples, toy_states,
                                         toy_truth)
from tests.test_success_labeller import episodes

FAST_FLAGS = ["--config.max_tasks=6", "--config.detector.add_task_steps=400",
              "--config.detector.batch_size=128", "--config.detector.learning_rate=0.003",
              "--config.detector.other_task_negatives=true"]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
  """A run dir with tasks a, b, c in slots 0-2 and their trained detector."""
  run = tmp_path_factory.mktemp("run")
  rng = np.random.default_rng(1)
  det = SuccessDetector.create(SPEC, MAX_TASKS, FAST)
  det.train(ExampleSet.concat([toy_examples(rng, s, 100, 100) for s in range(3)]),
            {0: "a", 1: "b", 2: "c"})
  det.save(str(run / "detector"))
  TaskRegistry.from_names(MAX_TASKS, ["a", "b", "c"]).save(str(run))
  return run


@pytest.fixture
def run_dir(base_run, tmp_path):
  import shutil
  shutil.copytree(base_run, tmp_path / "run")
  return tmp_path / "run"


def snapshot(run_dir):
  out = {}
  for root, _, files in os.walk(run_dir):
    for f in files:
      p = os.path.join(root, f)
      out[os.path.relpath(p, run_dir)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
  return out


def tasks(*argv, run_dir):
  return cli.main(["tasks", *argv, "--run-dir", str(run_dir), *FAST_FLAGS])


def folder_for(path, rng, slot=3, n=100):
  ex = toy_examples(rng, slot, n, n)
  write_example_folder(str(path), ex.take(ex.success).observations,
                       ex.take(~ex.success).observations)
  return str(path)


def test_add_registers_trains_new_head_and_keeps_others(run_dir, tmp_path, capsys):
  rng = np.random.default_rng(9)
  x = np.concatenate([toy_states(rng, 150, s) for s in range(4)] + [toy_states(rng, 150)])
  before = SuccessDetector.load(str(run_dir / "detector")).predict({"state": x})
  assert tasks("add", "d", "--examples", folder_for(tmp_path / "ex", rng), "--no-relabel",
               run_dir=run_dir) == 0
  reg = TaskRegistry.load(str(run_dir))
  assert reg.slot("d") == 3 and reg.names == ["a", "b", "c", "d"]
  det = SuccessDetector.load(str(run_dir / "detector"))
  after = det.predict({"state": x})
  np.testing.assert_array_equal(after[:, :3], before[:, :3])
  truth = toy_truth(x)[:, 3]
  assert np.mean((after[:, 3] >= 0.5) == truth) >= 0.97
  capsys.readouterr()
  assert tasks("list", run_dir=run_dir) == 0
  out = capsys.readouterr().out
  line = next(l for l in out.splitlines() if l.startswith("3 "))
  assert "d" in line.split() and "active" in line and "100" in line
  # Adding the same name again is refused.
  assert tasks("add", "d", "--examples", str(tmp_path / "ex"), "--no-relabel",
               run_dir=run_dir) == 2


def make_bad(kind, path, rng):
  good = {"state": toy_states(rng, 5)}
  if kind == "missing":
    return str(path / "nope")
  os.makedirs(path / "success")
  os.makedirs(path / "failure")
  if kind == "empty":
    return str(path)
  np.savez(path / "success" / "0.npz", **good)
  if kind == "one_class":
    return str(path)
  if kind == "unreadable":
    np.savez(path / "failure" / "0.npz", **good)
    (path / "failure" / "1.npz").write_bytes(b"garbage")
  elif kind == "wrong_shape":
    np.savez(path / "failure" / "0.npz", state=np.zeros((5, 3), np.float32))
  return str(path)


@pytest.mark.parametrize("kind, message", [
    ("missing", "does not exist"), ("empty", "is empty"), ("one_class", "only one class"),
    ("unreadable", "cannot read"), ("wrong_shape", "has shape")])
def test_bad_example_folders_are_rejected_and_change_nothing(run_dir, tmp_path, capsys, kind,
                                                             message):
  before = snapshot(run_dir)
  folder = make_bad(kind, tmp_path / "ex", np.random.default_rng(0))
  assert tasks("add", "d", "--examples", folder, run_dir=run_dir) == 2
  err = capsys.readouterr().err
  assert err.startswith("mtopt: error:") and message in err
  assert snapshot(run_dir) == before


def test_add_relabels_stored_data(run_dir, tmp_path, capsys):
  rng = np.random.default_rng(3)
  eps = episodes(rng, 20)
  with rlds_format.DatasetWriter(str(run_dir / "data" / "part0"), SPEC, MAX_TASKS,
                                 ["a", "b", "c"]) as w:
    for ep in eps:
      w.write(ep)
  assert tasks("add", "d", "--examples", folder_for(tmp_path / "ex", rng),
               run_dir=run_dir) == 0
  stored = label_store.read_labels(str(run_dir / "data" / "part0"))
  det = SuccessDetector.load(str(run_dir / "detector"))
  assert stored.detector_version == det.version and stored.task_names[3] == "d"
  got = stored.by_episode()
  for ep, row in zip(eps, det(eps)):
    np.testing.assert_allclose(got[ep.episode_id], row, atol=1e-6)
