"""RLDS import and export through the replay; mappings checked against public TFDS specs."""

import numpy as np
import pytest

from mtopt.episode import EpisodeError
from replay import rlds_io
from replay.reverb_replay import ReverbReplay
from replay.tables import TableLayout
from tests.test_replay_helpers import MAX_TASKS, SPEC, random_episodes

import tensorflow_datasets as tfds

MT_OPT = rlds_io.FieldMapping(
    observation={"image": "steps/observation/image", "state": "steps/observation/state_dense",
                 "height": "steps/observation/height_to_bottom"},
    action=["steps/action/target_pose", "steps/action/close_gripper",
            "steps/action/open_gripper", "steps/action/terminate"],
    task="skill", task_slots={i: i % MAX_TASKS for i in range(256)}, episode_id="episode_id")
ROBONET = rlds_io.FieldMapping(observation={"image": "video", "state": "states"},
                               action=["actions"], task=2, trim=True, terminated=False)


def fields_of(episodes):
  return {e.episode_id: e for e in episodes}


def test_export_then_import_is_identical(rng, tmp_path):
  eps = random_episodes(rng, 20, [0, 1, 2, 3])
  layout = TableLayout(SPEC, MAX_TASKS, max_size=1000)
  with ReverbReplay(layout, sharing="all") as a:
    a.write_many(eps)
    assert rlds_io.export_rlds(a, str(tmp_path / "ds"), ["t0", "t1"]) == 20
    before, counts = fields_of(a.episodes()), a.counts()
  # Plain TFDS can load it.
  assert tfds.builder_from_directory(str(tmp_path / "ds")).info.splits["train"].num_examples == 20
  with ReverbReplay(layout, sharing="all") as b:
    assert rlds_io.import_rlds(b, str(tmp_path / "ds")) == 20
    after = fields_of(b.episodes())
    assert b.counts() == counts
  assert sorted(after) == sorted(before)
  for i, x in before.items():
    y = after[i]
    assert (x.task_id, x.robot_id, x.terminated) == (y.task_id, y.robot_id, y.terminated)
    for f in ("actions", "labels", "success"):
      np.testing.assert_array_equal(getattr(x, f), getattr(y, f))
    for k in x.observations:
      np.testing.assert_array_equal(x.observations[k], y.observations[k])
      assert x.observations[k].dtype == y.observations[k].dtype


def test_import_resumes_after_skip_and_leaves_out_inactive_tasks(rng, tmp_path):
  """What `mtopt train` does after a crash cut its import short: skip the episodes the
  replay already acknowledged (counted after leaving out tasks it does not train)."""
  eps = random_episodes(rng, 24, [0, 1, 2, 3])
  layout = TableLayout(SPEC, MAX_TASKS, max_size=1000)
  with ReverbReplay(layout, sharing="all") as a:
    a.write_many(eps)
    rlds_io.export_rlds(a, str(tmp_path / "ds"))
    order = [e.episode_id for e in a.episodes()]  # The dataset's order.
  kept = [i for i in order if eps[i].task_id in (0, 1)]
  with ReverbReplay(layout, slots=[0, 1], sharing="none") as b:
    first = rlds_io.import_rlds(b, str(tmp_path / "ds"), limit=10, only_active_tasks=True)
    rest = rlds_io.import_rlds(b, str(tmp_path / "ds"), skip=first, only_active_tasks=True)
    assert first + rest == len(kept)
    assert sorted(e.episode_id for e in b.episodes()) == sorted(kept)  # Each once.
  with ReverbReplay(layout, slots=[0, 1], sharing="none") as c, \
       pytest.raises(Exception, match="not an active task"):
    rlds_io.import_rlds(c, str(tmp_path / "ds"))


def test_mt_opt_mapping_matches_tfds_feature_spec():
  spec = rlds_io.mapped_spec(tfds.builder("mt_opt/rlds").info.features, MT_OPT, 500)
  assert spec.observation["image"].shape == (512, 640, 3)
  assert spec.observation["image"].dtype == np.uint8
  assert spec.observation["state"].shape == (7,) and spec.observation["height"].shape == (1,)
  assert spec.action.shape == (7 + 3,)


def test_robonet_mapping_matches_tfds_feature_spec():
  spec = rlds_io.mapped_spec(tfds.builder("robonet/robonet_sample_64").info.features, ROBONET,
                             500)
  assert spec.observation["image"].shape == (64, 64, 3)
  assert spec.observation["state"].shape == (5,) and spec.action.shape == (5,)


def test_mt_opt_mock_examples_map_to_valid_episodes():
  spec = rlds_io.mapped_spec(tfds.builder("mt_opt/rlds").info.features, MT_OPT, 10_000)
  with tfds.testing.mock_data(num_examples=3):
    ds = tfds.load("mt_opt/rlds", split="train")
    eps = list(rlds_io.read_mapped(ds, MT_OPT))
  assert len(eps) == 3
  for ep in eps:
    assert ep.observations["image"].shape[1:] == (512, 640, 3)
    assert len(ep.actions) == len(ep.observations["state"]) - 1
    if ep.num_steps == 0:  # Mock data makes 1-step episodes: no transition to learn from.
      with pytest.raises(EpisodeError, match="empty episode"):
        ep.validate(spec, MAX_TASKS)
    else:
      ep.validate(spec, MAX_TASKS)


def test_robonet_mock_examples_import_into_replay():
  features = tfds.builder("robonet/robonet_sample_64").info.features
  spec = rlds_io.mapped_spec(features, ROBONET, 10_000)
  labeller = lambda eps: np.stack([
      (np.arange(MAX_TASKS) == e.episode_id % MAX_TASKS).astype(np.float32) for e in eps])
  with tfds.testing.mock_data(num_examples=4):
    ds = tfds.load("robonet/robonet_sample_64", split="train")
    with ReverbReplay(TableLayout(spec, MAX_TASKS, 100), slots=[0, 1, 2, 3],
                      sharing="none") as r:
      assert rlds_io.import_rlds(r, ds, ROBONET, labeller) == 4
      counts = r.counts()
      assert counts[2]["success"] + counts[2]["failure"] == 4  # All collected for slot 2.
      assert counts[2]["success"] == 1  # Episode 2 is labelled a success for slot 2.
      back = list(r.episodes())
  for ep in back:
    n = len(ep.observations["image"])
    assert len(ep.observations["state"]) == n and len(ep.actions) == n - 1


def test_bad_mappings_name_the_field(rng):
  features = tfds.builder("robonet/robonet_sample_64").info.features
  bad = rlds_io.FieldMapping(observation={"image": "video/frames"}, action=["actions"])
  with pytest.raises(rlds_io.MappingError, match="video/frames"):
    rlds_io.mapped_spec(features, bad, 100)
  with pytest.raises(rlds_io.MappingError, match="filename"):
    rlds_io.mapped_spec(features, rlds_io.FieldMapping({"x": "filename"}, ["actions"]), 100)
  ex = {"video": np.zeros((5, 64, 64, 3), np.uint8), "states": np.zeros((3, 5), np.float32),
        "actions": np.zeros((4, 5), np.float32)}
  untrimmed = rlds_io.FieldMapping(observation={"image": "video", "state": "states"},
                                   action=["actions"])
  with pytest.raises(rlds_io.MappingError, match="lengths"):
    rlds_io.example_to_episode(ex, untrimmed)
  ep = rlds_io.example_to_episode(ex, ROBONET)
  assert len(ep.observations["image"]) == 3 and ep.actions.shape == (2, 5)


def test_import_rejects_bad_episodes_without_partial_writes(rng, tmp_path):
  eps = random_episodes(rng, 5, [0, 1])
  layout = TableLayout(SPEC, MAX_TASKS, max_size=100)
  with ReverbReplay(layout) as a:
    a.write_many(eps)
    rlds_io.export_rlds(a, str(tmp_path / "ds"))
  small = TableLayout(SPEC.__class__(SPEC.observation, SPEC.action, 1), MAX_TASKS, max_size=100)
  with ReverbReplay(small) as b:
    with pytest.raises(rlds_io.rlds_shards.ShardError,
                       match=r"tfrecord-00000: episode 0 of this file.*exceeds max_episode_steps=1"):
      rlds_io.import_rlds(b, str(tmp_path / "ds"))
    assert b.num_episodes() == 0
  with pytest.raises(ValueError, match="not a TFDS/RLDS dataset"):
    with ReverbReplay(layout) as c:
      rlds_io.import_rlds(c, str(tmp_path))
