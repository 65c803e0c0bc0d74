"""The success classifier: training on separable toy data, adding a task, save/reload."""

import dataclasses

import numpy as np
import pytest

from mtopt.episode import Episode
from mtopt.specs import ArraySpec, BoundedArraySpec, EnvSpec
from success_detectors import training
from success_detectors.detector import DetectorConfig, DetectorError, SuccessDetector
from success_detectors.examples import ExampleSet, ExamplesError
from success_detectors.metrics import binary_metrics, wilson_interval

D = 8
MAX_TASKS = 6
SPEC = EnvSpec({"state": ArraySpec((D,), np.float32, "state")},
               BoundedArraySpec((4,), np.float32, "action", -1.0, 1.0), max_episode_steps=10)
FAST = DetectorConfig(torso=(64, 64), head_hidden=32, train_steps=400, add_task_steps=400,
                      batch_size=128, learning_rate=3e-3)


def toy_states(rng, n, succeed_slot=None, distract=True):
  """States where task s succeeds iff state[s] > 0.25. A failure may be another task's
  success (a hard negative) when `distract`."""
  x = rng.uniform(-1.0, 0.0, (n, D)).astype(np.float32)
  if succeed_slot is not None:
    x[:, succeed_slot] = rng.uniform(0.5, 1.0, n)
  elif distract:
    other = rng.integers(0, 4, n)
    m = rng.random(n) < 0.5
    x[m, other[m]] = rng.uniform(0.5, 1.0, m.sum())
  return x


def toy_truth(x):
  return x[:, :MAX_TASKS] > 0.25


def toy_examples(rng, slot, n_pos, n_neg):
  pos = toy_states(rng, n_pos, slot)
  neg = toy_states(rng, n_neg)
  neg = neg[~toy_truth(neg)[:, slot]]  # A failure for `slot` by construction.
  return ExampleSet({"state": np.concatenate([pos, neg])}, np.full(len(pos) + len(neg), slot),
                    np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)])


@pytest.fixture(scope="module")
def trained():
  rng = np.random.default_rng(1)
  ex = ExampleSet.concat([toy_examples(rng, s, 120, 120) for s in range(3)])
  det = SuccessDetector.create(SPEC, MAX_TASKS, FAST)
  det.train(ex, {0: "a", 1: "b", 2: "c"})
  return det


def test_separable_toy_set_is_learned_near_perfectly(trained):
  rng = np.random.default_rng(7)
  x = np.concatenate([toy_states(rng, 300, s) for s in range(3)] + [toy_states(rng, 300)])
  probs = trained.predict({"state": x})
  assert probs.shape == (len(x), MAX_TASKS) and probs.dtype == np.float32
  truth = toy_truth(x)
  for s in range(3):
    m = binary_metrics(probs[:, s], truth[:, s])
    assert m["accuracy"] >= 0.98, (s, m)
    assert m["precision"] >= 0.95 and m["recall"] >= 0.95, (s, m)
  # Held-out quality is recorded per slot.
  q = trained.quality()
  assert set(q) == {0, 1, 2} and all(q[s]["recall"] >= 0.95 for s in q)
  assert q[0]["successes"] == 120 and q[0]["name"] == "a"


def test_labels_read_only_the_kept_head_inputs_and_match_the_whole_network(trained):
  """predict computes the trained slots' heads on the inputs they read (exact zeros
  dropped); the result is the whole network's, and slots without a task get 0."""
  rng = np.random.default_rng(8)
  x = np.concatenate([toy_states(rng, 100, s) for s in range(3)] + [toy_states(rng, 100)])
  heads = trained.variables["params"]["heads"]
  with_torso, compact = training.compact_heads(trained.model, heads, [0, 1, 2])
  assert sum(len(c[0]) for c in compact) < 3 * heads["w1"].shape[1]  # The lasso kept few.
  probs = trained.predict({"state": x})
  logits = training.predict(trained.model, trained.variables, {"state": x})[:, :3]
  offsets = np.array([trained.slots[s].offset for s in range(3)], np.float32)
  np.testing.assert_allclose(probs[:, :3], 1 / (1 + np.exp(-(logits + offsets))), atol=1e-5)
  assert not probs[:, 3:].any()
  # A head that reads no torso unit leaves the torso out; its logits are the same.
  sparse = {k: np.array(v) for k, v in heads.items()}
  width = trained.model.torso[-1]
  sparse["w1"][0, :width] = 0.0
  with_torso, compact = training.compact_heads(trained.model, sparse, [0])
  assert not with_torso
  variables = {**trained.variables, "params": {**trained.variables["params"], "heads": sparse}}
  full = training.predict(trained.model, variables, {"state": x})[:, 0]
  np.testing.assert_allclose(np.asarray(training.compact_logits(
      trained.model, variables, {"state": x}, compact, with_torso))[:, 0], full, atol=1e-4)


def test_labeller_interface_on_episodes(trained):
  rng = np.random.default_rng(3)
  eps = []
  for i in range(5):
    obs = toy_states(rng, 4, succeed_slot=i % 3)
    eps.append(Episode({"state": obs}, np.zeros((3, 4), np.float32), task_id=i % 3,
                       episode_id=i))
  probs = trained(eps)
  assert probs.shape == (5, MAX_TASKS) and probs.dtype == np.float32
  for i, ep in enumerate(eps):
    ep.with_labels(probs[i]).validate(SPEC, MAX_TASKS)
    assert probs[i, i % 3] > 0.5
  assert trained([]).shape == (0, MAX_TASKS)


def test_add_task_trains_new_head_and_keeps_old_outputs(trained, tmp_path):
  det = SuccessDetector.load(trained.save(str(tmp_path / "d")))
  rng = np.random.default_rng(11)
  x = np.concatenate([toy_states(rng, 200, s) for s in range(4)] + [toy_states(rng, 200)])
  before = det.predict({"state": x})
  det.add_task(3, "d", toy_examples(rng, 3, 120, 120))
  after = det.predict({"state": x})
  np.testing.assert_array_equal(before[:, :3], after[:, :3])  # Frozen torso and heads.
  m = binary_metrics(after[:, 3], toy_truth(x)[:, 3])
  assert m["precision"] >= 0.95 and m["recall"] >= 0.95, m
  assert det.task_names == {0: "a", 1: "b", 2: "c", 3: "d"}
  with pytest.raises(DetectorError, match="already used"):
    det.add_task(3, "e", toy_examples(rng, 3, 10, 10))


def test_failed_add_task_leaves_the_detector_as_it_was(trained, tmp_path):
  det = SuccessDetector.load(trained.save(str(tmp_path / "d")))
  det.config = dataclasses.replace(det.config, other_task_negatives=False)
  n, version = len(det.examples), det.version
  only_successes = toy_examples(np.random.default_rng(0), 4, 20, 0)
  with pytest.raises(ExamplesError, match="both successes and failures"):
    det.add_task(4, "e", only_successes)
  assert len(det.examples) == n and len(det.heldout) == n and det.version == version
  assert 4 not in det.slots


def test_retrain_on_new_data_keeps_old_tasks(trained, tmp_path):
  det = SuccessDetector.load(trained.save(str(tmp_path / "d")))
  rng = np.random.default_rng(5)
  det.retrain(toy_examples(rng, 1, 60, 60), steps=200)
  x = np.concatenate([toy_states(rng, 200, s) for s in range(3)] + [toy_states(rng, 200)])
  probs = det.predict({"state": x})
  for s in range(3):
    assert binary_metrics(probs[:, s], toy_truth(x)[:, s])["accuracy"] >= 0.97
  assert det.quality()[1]["successes"] == 180


def test_saved_detector_reloads_with_identical_outputs(trained, tmp_path):
  path = trained.save(str(tmp_path / "detector"))
  back = SuccessDetector.load(path)
  x = toy_states(np.random.default_rng(2), 64)
  np.testing.assert_array_equal(back.predict({"state": x}), trained.predict({"state": x}))
  assert back.version == trained.version and back.task_names == trained.task_names
  assert back.quality() == trained.quality()
  np.testing.assert_array_equal(back.heldout, trained.heldout)
  trained.save(path)  # Saving over an existing detector replaces it.
  assert SuccessDetector.load(path).version == trained.version


def test_load_rejects_missing_or_corrupt_detector(tmp_path):
  with pytest.raises(DetectorError, match="no saved detector"):
    SuccessDetector.load(str(tmp_path))
  (tmp_path / "detector.json").write_text("{not json")
  with pytest.raises(DetectorError, match="malformed"):
    SuccessDetector.load(str(tmp_path))


def test_targets_balance_classes_and_use_other_tasks_successes_as_failures():
  ex = ExampleSet({"state": np.zeros((6, D), np.float32)}, [0, 0, 0, 1, 1, 1],
                  [True, False, False, True, True, False])
  labels, w = training.targets(ex, MAX_TASKS, [0, 1], other_task_negatives=True)
  # Slot 0: one success, two own failures plus slot 1's two successes.
  assert w[0, 0] > 0 and np.all(w[[1, 2, 3, 4], 0] > 0) and w[5, 0] == 0
  np.testing.assert_allclose(w[labels[:, 0] == 1, 0].sum(), w[(labels[:, 0] == 0) & (w[:, 0] > 0), 0].sum())
  assert np.all(w[:, 2:] == 0)
  _, w2 = training.targets(ex, MAX_TASKS, [0], other_task_negatives=False)
  assert w2[3, 0] == 0 and w2[4, 0] == 0
  with pytest.raises(ExamplesError, match="slot 2"):
    training.targets(ex, MAX_TASKS, [2])


def test_metrics_count_precision_recall_and_calibration():
  m = binary_metrics(np.array([0.9, 0.8, 0.2, 0.6]), np.array([True, False, False, True]))
  assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == 1.0 and m["accuracy"] == 0.75
  perfect = binary_metrics(np.array([1.0, 0.0]), np.array([True, False]))
  assert perfect["ece"] == 0.0 and perfect["brier"] == 0.0
  assert binary_metrics(np.array([0.1]), np.array([True]))["precision"] == 0.0
  assert m["true_positives"] == 2 and m["predicted_positives"] == 3


def test_wilson_interval_brackets_the_proportion_and_narrows_with_more_trials():
  lo, hi = wilson_interval(26, 30)
  assert lo < 26 / 30 < hi and (lo, hi) == pytest.approx((0.703, 0.947), abs=1e-3)
  lo2, hi2 = wilson_interval(260, 300)
  assert hi2 - lo2 < (hi - lo) / 2
  assert wilson_interval(5, 5)[1] == 1.0 and wilson_interval(0, 0) == (0.0, 1.0)


def test_image_detector_shapes():
  spec = EnvSpec({"image": ArraySpec((64, 64, 3), np.uint8), "state": ArraySpec((5,), np.float32)},
                 BoundedArraySpec((4,), np.float32, "a", -1, 1), 10)
  det = SuccessDetector.create(spec, 4, DetectorConfig(torso=(32,), head_hidden=8))
  probs = det.predict({"image": np.zeros((3, 64, 64, 3), np.uint8),
                       "state": np.zeros((3, 5), np.float32)})
  assert probs.shape == (3, 4) and np.all((probs >= 0) & (probs <= 1))
  with pytest.raises(DetectorError, match="image"):
    det.predict({"state": np.zeros((3, 5), np.float32)})


def toy_images(rng, n, slot):
  """64x64 scenes: task s succeeded iff a block of colour s is in the top-left quadrant
  (blocks elsewhere are failures)."""
  img = rng.integers(0, 60, (n, 64, 64, 3), dtype=np.uint8)
  inside = rng.random(n) < 0.5
  for i in range(n):
    y, x = rng.integers(4, 20, 2) if inside[i] else rng.integers(36, 52, 2)
    img[i, y:y + 10, x:x + 10, slot] = 255
  return img, inside


@pytest.mark.slow
def test_image_detector_learns_a_separable_toy_set():
  spec = EnvSpec({"image": ArraySpec((64, 64, 3), np.uint8), "state": ArraySpec((5,), np.float32)},
                 BoundedArraySpec((4,), np.float32, "a", -1, 1), 10)
  rng = np.random.default_rng(0)
  sets = []
  for s in range(2):
    img, y = toy_images(rng, 200, s)
    sets.append(ExampleSet({"image": img, "state": rng.normal(size=(200, 5)).astype(np.float32)},
                           np.full(200, s), y))
  det = SuccessDetector.create(spec, 4, DetectorConfig(torso=(64,), head_hidden=16,
                                                       train_steps=300, batch_size=32,
                                                       learning_rate=2e-3))
  det.train(ExampleSet.concat(sets), {0: "red_in_corner", 1: "green_in_corner"})
  for s in range(2):
    img, y = toy_images(rng, 100, s)
    probs = det.predict({"image": img, "state": np.zeros((100, 5), np.float32)})
    assert np.mean((probs[:, s] >= 0.5) == y) >= 0.95


def test_window_log_distances_are_distances_between_runs_of_entries():
  from success_detectors.networks import window_log_distances, window_pairs
  x = np.random.default_rng(0).normal(size=(5, 7))
  i, j = window_pairs(7, 3)
  assert len(i) == 10 and (j[:, 0] > i[:, 0]).all()  # 5 windows of 3: 10 pairs.
  got = window_log_distances(x, 3)
  want = np.log(np.linalg.norm(x[:, i] - x[:, j], axis=-1) + 1e-3)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_calibration_offset_puts_the_cut_in_the_middle_of_the_best_gap():
  logit = np.array([-5.0, -4.0, -1.0, 2.0, 3.0])
  truth = np.array([0, 0, 0, 1, 1], bool)
  off = training.calibration_offset(logit, truth)
  assert off == pytest.approx(-0.5)  # The cut between -1 and 2 is at 0.5.
  assert ((logit + off >= 0) == truth).all()
  # A positive among negatives: the cut that balances precision and recall best.
  logit = np.array([-5.0, -4.0, 3.0, 2.0, 3.5])
  truth = np.array([0, 0, 1, 0, 1], bool)
  assert training.calibration_offset(logit, truth) == pytest.approx(-2.5)
  assert training.calibration_offset(logit, np.ones(5, bool)) == 0.0


def test_sparsity_and_calibration_train_and_reload(tmp_path):
  rng = np.random.default_rng(3)
  ex = ExampleSet.concat([toy_examples(rng, s, 120, 120) for s in range(2)])
  cfg = dataclasses.replace(FAST, input_sparsity=1e-4, calibrate=True)
  det = SuccessDetector.create(SPEC, MAX_TASKS, cfg)
  det.train(ex, {0: "a", 1: "b"})
  x = toy_states(np.random.default_rng(4), 256)
  probs = det.predict({"state": x})
  for s in range(2):
    m = binary_metrics(probs[:, s], toy_truth(x)[:, s])
    assert m["precision"] > 0.9 and m["recall"] > 0.9, (s, m)
  back = SuccessDetector.load(det.save(str(tmp_path / "detector")))
  np.testing.assert_array_equal(back.predict({"state": x}), probs)
  assert [i.offset for i in back.slots.values()] == [i.offset for i in det.slots.values()]


def test_detector_saved_before_distance_features_and_calibration_loads(trained, tmp_path):
  import json
  old_cfg = dataclasses.replace(FAST, state_distances=(), calibrate=False, state_squares=False,
                                feature_squash=0.0)
  det = SuccessDetector.create(SPEC, MAX_TASKS, old_cfg)
  det.train(trained.examples, trained.task_names)
  path = det.save(str(tmp_path / "detector"))
  meta = json.loads((tmp_path / "detector" / "detector.json").read_text())
  for k in ("state_distances", "calibrate", "input_sparsity", "state_squares", "feature_squash"):
    del meta["config"][k]
  for info in meta["slots"].values():
    del info["offset"]
  (tmp_path / "detector" / "detector.json").write_text(json.dumps(meta))
  back = SuccessDetector.load(path)
  assert back.config.state_distances == () and not back.config.calibrate
  assert not back.config.state_squares and back.config.feature_squash == 0.0
  x = toy_states(np.random.default_rng(2), 64)
  np.testing.assert_array_equal(back.predict({"state": x}), det.predict({"state": x}))


def test_squash_is_monotone_and_bounded():
  from success_detectors.networks import squash
  z = np.linspace(-100.0, 100.0, 2001)
  out = np.asarray(squash(z, 4.0))
  assert (np.diff(out) >= -1e-6).all() and np.abs(out).max() <= 4.0
  assert (np.diff(out[np.abs(z) < 10]) > 0).all()  # Strictly within the data's range.
  np.testing.assert_allclose(out[np.abs(z) < 0.5], z[np.abs(z) < 0.5], atol=0.01)


def sphere_examples(rng, slot, n):
  """Task `slot` succeeds iff state[:3] is within 0.3 of (0.2, -0.1, 0.3): a reach-like
  predicate, a sphere around a point."""
  x = rng.uniform(-1.0, 1.0, (n, D)).astype(np.float32)
  near = rng.random(n) < 0.4
  center = np.array([0.2, -0.1, 0.3], np.float32)
  v = rng.normal(size=(near.sum(), 3))
  v *= (rng.uniform(0, 0.45, near.sum()) / np.linalg.norm(v, axis=1))[:, None]
  x[near, :3] = center + v
  y = np.linalg.norm(x[:, :3] - center, axis=1) < 0.3
  return ExampleSet({"state": x}, np.full(n, slot), y)


def test_state_squares_learn_a_sphere_and_far_states_stay_bounded():
  rng = np.random.default_rng(5)
  cfg = dataclasses.replace(FAST, state_pairs=False, state_distances=(), state_squares=True,
                            feature_squash=4.0, train_steps=600)
  det = SuccessDetector.create(SPEC, MAX_TASKS, cfg)
  det.train(sphere_examples(rng, 0, 1500), {0: "sphere"})
  test = sphere_examples(np.random.default_rng(6), 0, 2000)
  m = binary_metrics(det.predict(test.observations)[:, 0], test.success)
  assert m["precision"] > 0.9 and m["recall"] > 0.9, m
  # A state 1000x outside the examples: squashed inputs give a finite, bounded logit.
  far = np.full((1, D), 1e3, np.float32)
  assert np.isfinite(det.predict({"state": far})).all()


def test_new_config_keeps_the_built_network(trained, tmp_path):
  det = SuccessDetector.load(trained.save(str(tmp_path / "detector")))
  x = toy_states(np.random.default_rng(8), 64)
  before = det.predict({"state": x})
  det.config = dataclasses.replace(det.config, state_squares=not det.config.state_squares,
                                   feature_squash=1.0, torso=(8,), train_steps=7)
  assert det.config.train_steps == 7
  assert det.config.state_squares == trained.config.state_squares
  assert det.config.feature_squash == trained.config.feature_squash
  assert det.config.torso == trained.config.torso
  np.testing.assert_array_equal(det.predict({"state": x}), before)
  back = SuccessDetector.load(det.save(str(tmp_path / "again")))
  np.testing.assert_array_equal(back.predict({"state": x}), before)


def test_fold_assignment_deals_every_slot_and_class_evenly():
  ex = ExampleSet({"state": np.zeros((47, D), np.float32)}, np.r_[np.zeros(30), np.ones(17)],
                  np.arange(47) % 3 == 0)
  folds = training.fold_assignment(ex, 5, seed=3)
  for s in (0, 1):
    for y in (True, False):
      counts = np.bincount(folds[(ex.slot == s) & (ex.success == y)], minlength=5)
      assert counts.max() - counts.min() <= 1


def test_fold_heads_pack_into_one_head_and_out_of_fold_logits_are_held_out():
  """Random labels on random features: the heads memorise them, so the packed head (the mean
  of the folds' heads) scores its training examples well, but each example's out-of-fold
  logit, from the one head that never saw it, is no better than chance."""
  rng = np.random.default_rng(0)
  n, f = 400, 64
  x = rng.normal(size=(n, f)).astype(np.float32)
  y = (rng.random((n, 2)) < 0.5).astype(np.float32)
  ex = ExampleSet({"state": x}, np.zeros(n, int), y[:, 0] > 0)
  folds = training.fold_assignment(ex, 4, seed=0)
  packed, oof = training.fit_fold_heads(x, y, np.ones_like(y), folds, 4, 32, steps=600,
                                        batch_size=128, learning_rate=3e-3)
  assert packed["w1"].shape == (2, f, 128) and packed["w2"].shape == (2, 128, 1)
  from success_detectors.networks import SlotHeads
  logits = np.asarray(SlotHeads(2, 128).apply({"params": packed}, x))
  assert np.mean((logits > 0) == (y > 0.5)) > 0.9
  assert oof.shape == (n, 2)
  assert 0.35 < np.mean((oof > 0) == (y > 0.5)) < 0.65


def test_fold_heads_keep_per_slot_the_sparsity_with_the_lowest_out_of_fold_loss():
  """Slot 0's label is a threshold on one feature; slot 1's labels are random. Without a
  penalty slot 0 is learnt and slot 1 is memorised (out-of-fold: worse than a constant); a
  penalty that zeroes every weight leaves the constant. Each slot must keep its better one,
  and its heads and out-of-fold logits must be the ones fitted at that weight."""
  rng = np.random.default_rng(1)
  n, f = 400, 32
  x = rng.normal(size=(n, f)).astype(np.float32)
  y = np.stack([x[:, 3] > 0, rng.random(n) < 0.5], axis=1).astype(np.float32)
  ex = ExampleSet({"state": x}, np.zeros(n, int), y[:, 0] > 0)
  folds = training.fold_assignment(ex, 4, seed=0)
  args = (x, y, np.ones_like(y), folds, 4, 16, 400, 128, 3e-3, 0)
  packed, oof, chosen = training.fit_fold_heads_selected(*args, (0.0, 100.0))
  assert chosen["sparsity"].tolist() == [0.0, 100.0]
  assert chosen["relaxed"].tolist() == [False, False]  # relax=0: no refits.
  assert packed["w1"].shape == (2, f, 64) and oof.shape == (n, 2)
  plain, plain_oof = training.fit_fold_heads(*args, 0.0)
  np.testing.assert_array_equal(packed["w1"][0], plain["w1"][0])
  np.testing.assert_array_equal(oof[:, 0], plain_oof[:, 0])
  assert np.abs(packed["w1"][1]).max() < 1e-2  # The penalised head reads (almost) nothing.
  assert np.abs(packed["w1"][0]).max() > 0.1
  assert np.mean((oof[:, 0] > 0) == (y[:, 0] > 0.5)) > 0.8  # Chance: 0.5.
  assert np.ptp(oof[:, 1]) < 0.1  # Slot 1's out-of-fold logits: the penalised constant.
  with pytest.raises(ValueError, match="num_folds"):
    training.fit_fold_heads_selected(x, y, np.ones_like(y), folds, 1, 16, 10, 128, 3e-3, 0,
                                     (0.0,))


def test_relaxed_refit_reads_only_what_its_fold_head_kept_and_wins_on_a_sharp_threshold():
  """The label is a sharp threshold on feature 3 among 31 noise features. The group lasso
  finds feature 3 but shrinks its weights, so its heads are soft; each fold head's refit
  reads only the inputs that fold's first fit kept, with a smaller penalty, and is sharper:
  its out-of-fold loss is lower, so the slot keeps it."""
  rng = np.random.default_rng(2)
  n, f = 600, 32
  x = rng.normal(size=(n, f)).astype(np.float32)
  y = (x[:, 3:4] > 0.3).astype(np.float32)
  ex = ExampleSet({"state": x}, np.zeros(n, int), y[:, 0] > 0)
  folds = training.fold_assignment(ex, 4, seed=0)
  args = (x, y, np.ones_like(y), folds, 4, 16, 400, 128, 3e-2, 0)
  lasso, lasso_oof = training.fit_fold_heads(*args, 0.05)
  support = training.head_support(lasso["w1"], 4)
  assert support.shape == (1, f, 4) and support[0, 3].all() and support.sum() < f * 4 / 2
  refit, refit_oof = training.fit_fold_heads(*args, 0.005, support=support)
  w1 = refit["w1"].reshape(1, f, 4, 16)
  assert np.all(w1[~support] == 0) and np.all(np.abs(w1[0, 3]).max(axis=1) > 0)
  packed, oof, chosen = training.fit_fold_heads_selected(*args, (0.05,), relax=0.1)
  assert chosen["sparsity"].tolist() == [0.05] and chosen["relaxed"].tolist() == [True]
  np.testing.assert_array_equal(packed["w1"], refit["w1"])
  np.testing.assert_array_equal(oof, refit_oof)
  loss = training.balanced_log_loss
  assert loss(refit_oof, y, np.ones_like(y))[0] < 0.8 * loss(lasso_oof, y, np.ones_like(y))[0]


def test_used_head_inputs_keep_the_torso_output_and_the_inputs_the_network_reads(trained):
  params = trained.variables["params"]
  torso_out = params["torso_1"]["kernel"].shape[1]
  features = params["heads"]["w1"].shape[1]
  # A head that reads only state feature 5, and a first torso layer that reads only 7.
  heads = {k: np.zeros_like(v) for k, v in params["heads"].items()}
  heads["w1"][0, torso_out + 5] = 1.0
  first = np.zeros_like(params["torso_0"]["kernel"])
  first[-(features - torso_out) + 7] = 1.0
  cols = training.used_head_inputs(
      {**params, "heads": heads, "torso_0": {**params["torso_0"], "kernel": first}}, [0])
  np.testing.assert_array_equal(cols, np.r_[np.arange(torso_out), torso_out + 5, torso_out + 7])


def test_one_head_per_slot_detector_trains_and_adds_a_task():
  """head_folds=1 (as detectors saved before fold heads load): one head per slot, trained
  with the torso and calibrated on the held-out examples; adding a task fits one head."""
  rng = np.random.default_rng(5)
  det = SuccessDetector.create(SPEC, MAX_TASKS, dataclasses.replace(FAST, head_folds=1))
  det.train(ExampleSet.concat([toy_examples(rng, s, 120, 120) for s in range(2)]),
            {0: "a", 1: "b"})
  assert det.variables["params"]["heads"]["w1"].shape[-1] == FAST.head_hidden
  x = np.concatenate([toy_states(rng, 200, s) for s in range(3)] + [toy_states(rng, 200)])
  before = det.predict({"state": x})
  det.add_task(2, "c", toy_examples(rng, 2, 120, 120))
  after = det.predict({"state": x})
  np.testing.assert_array_equal(before[:, :2], after[:, :2])
  for s in range(3):
    m = binary_metrics(after[:, s], toy_truth(x)[:, s])
    assert m["precision"] >= 0.95 and m["recall"] >= 0.95, (s, m)


def test_detector_config_checks_keys_and_head_sparsity():
  assert DetectorConfig.from_dict({"head_sparsity": [0.01]}).head_sparsity == (0.01,)
  for key, bad in (("head_relax", -0.1), ("head_learning_rate", 0.0), ("learning_rate", -1.0),
                   ("head_relax", float("nan"))):
    with pytest.raises(DetectorError, match=key):
      DetectorConfig(**{key: bad})
  for bad in ([], [0.01, -1.0]):
    with pytest.raises(DetectorError, match="head_sparsity"):
      DetectorConfig.from_dict({"head_sparsity": bad})
    with pytest.raises(DetectorError, match="head_sparsity"):
      DetectorConfig(head_sparsity=bad)
  with pytest.raises(DetectorError, match="unknown detector config key.*head_sparsty"):
    DetectorConfig.from_dict({"head_sparsty": [0.01]})
