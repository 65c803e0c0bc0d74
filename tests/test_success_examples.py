"""Example folders: the documented layout is read; bad folders are rejected clearly."""

import os

import numpy as np
import pytest

from mtopt.specs import ArraySpec, BoundedArraySpec, EnvSpec
from success_detectors.examples import (ExampleSet, ExamplesError, holdout_mask,
                                        read_example_folder, read_task_info,
                                        write_example_folder)

SPEC = EnvSpec({"state": ArraySpec((5,), np.float32),
                "image": ArraySpec((8, 8, 3), np.uint8)},
               BoundedArraySpec((2,), np.float32, "a", -1, 1), 10)


def obs(rng, n):
  return {"state": rng.normal(size=(n, 5)).astype(np.float32),
          "image": rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)}


def test_round_trip_batched_and_single_files(tmp_path, rng):
  pos, neg = obs(rng, 7), obs(rng, 5)
  write_example_folder(str(tmp_path), pos, neg, name="lift", description="lift it", per_file=3)
  # One more single-example file (arrays without the leading axis), float64 state.
  one = obs(rng, 1)
  np.savez(tmp_path / "failure" / "zz_single.npz", state=one["state"][0].astype(np.float64),
           image=one["image"][0], extra=np.zeros(3))
  ex = read_example_folder(str(tmp_path), SPEC, slot=4)
  assert len(ex) == 13 and ex.counts() == {4: (7, 6)}
  np.testing.assert_array_equal(ex.observations["image"][:7], pos["image"])
  np.testing.assert_array_equal(ex.observations["state"][7:12], neg["state"])
  assert ex.observations["state"].dtype == np.float32
  assert read_task_info(str(tmp_path)) == {"name": "lift", "description": "lift it"}


def bad(tmp_path, match):
  with pytest.raises(ExamplesError, match=match):
    read_example_folder(str(tmp_path), SPEC)


def test_missing_and_empty_folders(tmp_path):
  with pytest.raises(ExamplesError, match="does not exist"):
    read_example_folder(str(tmp_path / "nope"), SPEC)
  bad(tmp_path, "is empty")
  os.makedirs(tmp_path / "success")
  os.makedirs(tmp_path / "failure")
  bad(tmp_path, "is empty")


def test_only_one_class(tmp_path, rng):
  write_example_folder(str(tmp_path), obs(rng, 4), {})
  bad(tmp_path, r"only one class \(success/\).*failure/")


def test_unreadable_file(tmp_path, rng):
  write_example_folder(str(tmp_path), obs(rng, 4), obs(rng, 4))
  (tmp_path / "success" / "broken.npz").write_bytes(b"this is not a zip file")
  bad(tmp_path, "broken.npz: cannot read")


@pytest.mark.parametrize("change, match", [
    (lambda o: {"state": o["state"]}, r"missing observation array\(s\) \['image'\]"),
    (lambda o: {**o, "state": o["state"][:, :4]}, "'state' has shape"),
    (lambda o: {**o, "image": o["image"].astype(np.float32)}, "images must be uint8"),
    (lambda o: {**o, "state": np.full_like(o["state"], np.nan)}, "NaN"),
    (lambda o: {**o, "state": o["state"][:2]}, "different numbers of examples"),
    (lambda o: {**o, "state": o["state"].astype(np.int32)}, "expected floats"),
])
def test_wrong_shapes_and_types(tmp_path, rng, change, match):
  write_example_folder(str(tmp_path), obs(rng, 4), obs(rng, 4))
  np.savez(tmp_path / "failure" / "bad.npz", **change(obs(rng, 3)))
  bad(tmp_path, match)


def test_holdout_is_stratified_and_keeps_training_examples(rng):
  ex = ExampleSet({"state": np.zeros((31, 5), np.float32)},
                  np.r_[np.zeros(20), np.ones(11)], np.r_[np.ones(10), np.zeros(10),
                                                          np.ones(1), np.zeros(10)].astype(bool))
  held = holdout_mask(ex, 0.2, seed=0)
  assert held[:10].sum() == 2 and held[10:20].sum() == 2
  assert held[20] == False and held[21:].sum() == 2  # noqa: E712 (a single success stays)
  np.testing.assert_array_equal(held, holdout_mask(ex, 0.2, seed=0))
