"""Tasks that only a success detector defines: robots attempt them, a run's replay is
relabelled for them, and the scheduler focuses on them."""

import os

import numpy as np
import pytest

from actors.robot_actor import RobotActor
from actors.task_scheduler import make_scheduler
from configs.tabletop_state import get_config
from mtopt.program import new_tasks, relabel
from mtopt.tasks import TaskRegistry
from replay.reverb_replay import ReverbReplay
from success_detectors.detector import SuccessDetector
from success_detectors.examples import ExampleSet
from tests.test_success_detector import FAST, MAX_TASKS, SPEC, toy_examples
from tests.test_success_labeller import episodes

ENV = {"name": "tabletop", "tasks": ["reach_red", "lift_red"], "max_episode_steps": 6}


def test_a_robot_attempts_a_task_only_the_detector_defines():
  reg = TaskRegistry.from_names(8, ["reach_red", "lift_red", "red_left_of_blue"])
  still = lambda obs, slot: np.array([0, 0, 0, -1, -1], np.float32)
  actor = RobotActor(0, ENV, reg.to_json(), policy=still, tasks=["red_left_of_blue"])
  ep = actor.run_episode()
  assert ep.task_id == reg.slot("red_left_of_blue") and ep.num_steps == 6
  assert not ep.success[reg.slot("red_left_of_blue")], "no ground truth: stays False"
  # Its default tasks are every registered one; scripted experts exist for env tasks only.
  assert RobotActor(1, ENV, reg.to_json(), policy=still).tasks[-1] == "red_left_of_blue"
  with pytest.raises(ValueError, match="no scripted expert"):
    RobotActor(2, ENV, reg.to_json(), policy="scripted", tasks=["red_left_of_blue"])
  with pytest.raises(ValueError, match="not registered"):
    RobotActor(3, ENV, reg.to_json(), policy=still, tasks=["nope"])


def test_the_scheduler_focuses_on_a_new_task():
  for kind in ("uniform", "underperforming"):
    s = make_scheduler(kind, ["a", "b", "c", "new"], seed=0)
    s.set_focus(["new"], 0.5)
    assert s.probabilities()[-1] == pytest.approx(0.5 + 0.5 / 4)
    picks = [s.next_task() for _ in range(2000)]
    assert 0.55 <= picks.count("new") / 2000 <= 0.70, kind  # 0.5 + 0.5 / 4 = 0.625.
    s.set_focus([], 0.0)
    assert s.probabilities()[-1] == pytest.approx(0.25)
  progress = {"evaluations": [{"success": {"a": 0.5, "b": 0.7}}], "new_tasks": {"new": 10}}
  assert new_tasks.added(["a", "b", "new"], progress) == ["new"]
  assert new_tasks.focused(progress, {"a": 0.5, "b": 0.7, "new": 0.2}) == ["new"]
  assert new_tasks.focused(progress, {"a": 0.5, "b": 0.7, "new": 0.65}) == []


def _config():
  c = get_config()
  c.max_tasks = MAX_TASKS
  c.replay.min_size = 1
  return c


@pytest.fixture
def detector():
  rng = np.random.default_rng(4)
  det = SuccessDetector.create(SPEC, MAX_TASKS, FAST)
  det.train(ExampleSet.concat([toy_examples(rng, s, 80, 80) for s in range(2)]),
            {0: "a", 1: "b"}, steps=200)
  return det


def test_tasks_add_puts_the_new_tasks_labels_into_the_replay(detector, tmp_path):
  config, rng, run = _config(), np.random.default_rng(2), str(tmp_path)
  eps = episodes(rng, 60)
  replay = ReverbReplay.from_config(config, SPEC, run_dir=run, labeller=detector, slots=[0, 1])
  relabel.write_stamp(run, detector)
  replay.write_many(eps[:40])
  replay.checkpoint()
  replay.write_many(eps[40:])  # In the log only, after the checkpoint.
  replay.close()
  assert relabel.ensure_labelled(config, SPEC, run, detector, [0, 1]) == 0, "up to date"

  detector.add_task(2, "c", toy_examples(np.random.default_rng(5), 2, 80, 80))  # tasks add.
  assert relabel.ensure_labelled(config, SPEC, run, detector, [0, 1, 2]) == 60
  want = detector(eps)
  replay = ReverbReplay.from_config(config, SPEC, run_dir=run, labeller=detector,
                                    slots=[0, 1, 2])
  try:
    got = {ep.episode_id: ep.labels for ep in replay.episodes()}
    assert sorted(got) == [ep.episode_id for ep in eps], "every episode, once"
    for ep, row in zip(eps, want):
      np.testing.assert_allclose(got[ep.episode_id], row, atol=1e-6)
    assert replay.counts()[2]["success"] == int((want[:, 2] >= 0.5).sum()) > 0
    assert replay.acknowledged() == 60
  finally:
    replay.close()
  assert relabel.read_stamp(run)["detector_version"] == detector.version
  assert not os.path.exists(os.path.join(run, "relabel"))


def test_a_relabelling_cut_short_loses_nothing(detector, tmp_path):
  config, rng, run = _config(), np.random.default_rng(3), str(tmp_path)
  eps = episodes(rng, 20)
  replay = ReverbReplay.from_config(config, SPEC, run_dir=run, labeller=detector, slots=[0, 1])
  replay.write_many(eps)
  replay.close()
  # Killed while building the new replay: the old one stays and is relabelled again.
  os.makedirs(os.path.join(run, "relabel", "replay"))
  assert relabel.ensure_labelled(config, SPEC, run, detector, [0, 1]) == 20
  # Killed after the new replay was complete but before it moved in.
  detector.add_task(2, "c", toy_examples(np.random.default_rng(5), 2, 60, 60))
  real_recover = relabel.recover
  calls = []

  def die_once(directory):
    calls.append(directory)
    if len(calls) == 2:  # The recover that would move the new replay in.
      raise KeyboardInterrupt
    real_recover(directory)
  relabel.recover = die_once
  try:
    with pytest.raises(KeyboardInterrupt):
      relabel.ensure_labelled(config, SPEC, run, detector, [0, 1, 2])
  finally:
    relabel.recover = real_recover
  assert os.path.exists(os.path.join(run, "relabel", "DONE"))
  assert relabel.ensure_labelled(config, SPEC, run, detector, [0, 1, 2]) == 0  # Swap finished.
  replay = ReverbReplay.from_config(config, SPEC, run_dir=run, labeller=detector,
                                    slots=[0, 1, 2])
  try:
    got = {ep.episode_id: ep.labels for ep in replay.episodes()}
    assert sorted(got) == [ep.episode_id for ep in eps]
    np.testing.assert_allclose(np.stack([got[e.episode_id] for e in eps]), detector(eps),
                               atol=1e-6)
  finally:
    replay.close()


def test_a_running_run_notices_tasks_add(detector, tmp_path):
  run = str(tmp_path)
  reg = TaskRegistry.from_names(MAX_TASKS, ["a", "b"])
  reg.save(run)
  detector.save(os.path.join(run, "detector"))
  watch = new_tasks.Watch(run)
  assert not watch.changed()
  os.replace(os.path.join(run, "tasks.json"), os.path.join(run, "moved"))
  assert not watch.changed(), "a file being replaced is looked at again later"
  os.replace(os.path.join(run, "moved"), os.path.join(run, "tasks.json"))
  detector.add_task(2, "c", toy_examples(np.random.default_rng(5), 2, 60, 60))
  detector.save(os.path.join(run, "detector"))
  assert watch.changed()


@pytest.mark.slow
def test_a_task_added_to_a_stopped_run_is_evaluated_zero_shot_then_trained(tmp_path,
                                                                             ray_session):
  import json
  from experiments.new_task import write_examples
  from mtopt import cli
  from mtopt.config import load_config
  from tests.test_launch import DEFAULT, TINY
  run = str(tmp_path / "run")
  flags = [f for f in TINY if "train.labels" not in f] + [
      "--config.train.detector_episodes_per_task=8", "--config.detector.train_steps=100",
      "--config.detector.add_task_steps=100", "--config.detector.head_folds=1",
      "--config.train.mode=mixed"]
  args = ["train", "--config", DEFAULT, f"--config.run_dir={run}", *flags]
  assert cli.main(args + ["--config.learner.num_steps=20"]) == 0
  config = load_config(DEFAULT, ["env.tasks=['reach_red','lift_red']"])
  folder = str(tmp_path / "examples")
  write_examples(config, folder, 6, seed=1)
  assert cli.main(["tasks", "add", "reach_any", "--examples", folder, "--run-dir", run,
                   "--config", DEFAULT, *flags]) == 0
  assert cli.main(args + ["--config.learner.num_steps=40"]) == 0
  progress = json.load(open(os.path.join(run, "progress.json")))
  steps = [(e["step"], e.get("zero_shot")) for e in progress["evaluations"]]
  assert steps == [(20, None), (20, ["reach_any"]), (40, None)], steps
  assert progress["new_tasks"] == {"reach_any": 20}
  assert set(progress["evaluations"][-1]["true"]) == {"reach_red", "lift_red"}
  assert progress["attempts"]["reach_any"] > 0, "robots attempted the new task"
  assert relabel.read_stamp(run)["task_names"]["2"] == "reach_any"
  results = json.load(open(os.path.join(run, "results.json")))
  assert "reach_any" in results["success"] and "reach_any" not in results["true_success"]


def _write_layout1(run: str, layout, eps) -> None:
  """A replay as mtopt stored it before layout 2: one Reverb step per time step, the
  metadata on the last; checkpointed, with the last episodes in the log only."""
  import dataclasses
  from replay import tables
  from replay.episode_log import EpisodeLog, latest_checkpoint
  from replay.reverb_replay import serve
  import reverb
  old = dataclasses.replace(layout, version=1)
  ckpt = os.path.join(run, "replay")
  server = serve(old, ckpt)
  w = reverb.Client(f"localhost:{server.port}").trajectory_writer(num_keep_alive_refs=64)
  for i, ep in enumerate(eps[:-3]):
    pad = np.zeros(ep.actions.shape[1:], np.float32)
    pad[0] = float(ep.terminated)
    for t in range(ep.num_steps + 1):
      step = {"observation": {k: v[t] for k, v in ep.observations.items()},
              "action": ep.actions[t] if t < ep.num_steps else pad}
      if t == ep.num_steps:
        step["metadata"] = tables.episode_metadata(ep, old.max_tasks)
      w.append(step)
    h = w.history
    steps = {"observation": {k: h["observation"][k][:] for k in ep.observations},
             "action": h["action"][:]}
    meta = {k: h["metadata"][k][-1] for k in tables.metadata_signature(old.max_tasks)}
    for slot in np.flatnonzero(ep.labels >= 0.5):
      w.create_item(tables.task_table(int(slot), True), float(ep.num_steps), steps)
    w.create_item(tables.SHARED_TABLE, float(ep.num_steps), {**steps, "labels": meta["labels"]})
    w.create_item(tables.EPISODES_TABLE, float(i + 1), {**steps, "metadata": meta})
    w.end_episode()
  w.close()
  reverb.Client(f"localhost:{server.port}").checkpoint()
  server.stop()
  log = EpisodeLog(os.path.join(run, "replay_log"), latest_checkpoint(ckpt))
  log.append(eps[-3:])
  log.close()


def test_a_replay_in_the_old_layout_is_rewritten_with_nothing_lost(detector, tmp_path):
  from replay.reverb_replay import ReplayError, layout_from_config
  config, rng, run = _config(), np.random.default_rng(6), str(tmp_path)
  eps = episodes(rng, 15)
  eps = [ep.with_labels(row) for ep, row in zip(eps, detector(eps))]
  _write_layout1(run, layout_from_config(config, SPEC), eps)
  relabel.write_stamp(run, detector)
  with pytest.raises(ReplayError, match="stored in layout 1"):
    ReverbReplay.from_config(config, SPEC, run_dir=run, slots=[0, 1])
  assert relabel.ensure_labelled(config, SPEC, run, detector, [0, 1]) == 15
  replay = ReverbReplay.from_config(config, SPEC, run_dir=run, slots=[0, 1])
  try:
    got = {ep.episode_id: ep for ep in replay.episodes()}
    assert sorted(got) == sorted(ep.episode_id for ep in eps), "every episode, once"
    for ep in eps:
      back = got[ep.episode_id]
      np.testing.assert_array_equal(back.actions, ep.actions)
      for k, v in ep.observations.items():
        np.testing.assert_array_equal(back.observations[k], v)
      np.testing.assert_allclose(back.labels, ep.labels)  # Kept: same detector.
      assert back.terminated == ep.terminated and back.task_id == ep.task_id
    want = sum(int(ep.labels[0] >= 0.5) for ep in eps)
    assert replay.counts()[0]["success"] == want
    batch = next(iter(replay.sampler(8)))
    assert np.isfinite(batch.action).all()
  finally:
    replay.close()
  assert relabel.ensure_labelled(config, SPEC, run, detector, [0, 1]) == 0, "done once"
