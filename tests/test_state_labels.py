"""The memoised state labeller: the labeller's values, each distinct state labelled once;
confident labels: 0/1 at a confidence."""

import numpy as np
import pytest

from success_detectors.state_labels import CachedStateLabels, confident


def _labeller(calls):
  def label(observation):
    calls.append(len(observation["state"]))
    s = observation["state"]
    return np.stack([s.sum(1), s[:, 0] + 10 * observation["image"].mean((1, 2, 3))], 1)
  return label


def _obs(rng, states, images, idx):
  return {"state": states[idx], "image": images[idx]}


def test_values_match_the_labeller_and_each_state_is_labelled_once():
  rng = np.random.default_rng(0)
  states = rng.random((20, 3)).astype(np.float32)
  images = rng.integers(0, 255, (20, 2, 2, 3), dtype=np.uint8)
  calls = []
  cache = CachedStateLabels(_labeller(calls))
  for _ in range(30):
    idx = rng.integers(0, 20, 8)
    np.testing.assert_allclose(cache(_obs(rng, states, images, idx)),
                               _labeller([])(_obs(rng, states, images, idx)), rtol=1e-6)
  assert sum(calls) <= 20 + 8  # Every distinct state once (duplicates within one call aside).
  assert cache.hits + cache.misses == 30 * 8 and cache.misses == sum(calls)
  # A state differing only in its image is another state.
  other = {"state": states[:1], "image": 255 - images[:1]}
  before = sum(calls)
  cache(other)
  assert sum(calls) == before + 1


def test_oldest_states_are_dropped_beyond_capacity():
  rng = np.random.default_rng(1)
  states = rng.random((10, 3)).astype(np.float32)
  images = np.zeros((10, 2, 2, 3), np.uint8)
  calls = []
  cache = CachedStateLabels(_labeller(calls), max_states=4)
  out = cache(_obs(rng, states, images, np.arange(10)))  # More misses than room: still right.
  np.testing.assert_allclose(out, _labeller([])(_obs(rng, states, images, np.arange(10))),
                             rtol=1e-6)
  cache(_obs(rng, states, images, np.arange(6, 10)))  # The newest four are kept...
  assert calls == [10]
  cache(_obs(rng, states, images, np.arange(0, 1)))  # ...the oldest are not.
  assert calls == [10, 1]
  with pytest.raises(ValueError, match="max_states"):
    CachedStateLabels(_labeller(calls), max_states=0)


def test_confident_labels_are_one_only_at_or_above_the_confidence():
  probs = np.array([[0.0, 0.5, 0.94], [0.95, 0.99, 1.0]], np.float32)
  label = confident(lambda obs: probs, 0.95)
  np.testing.assert_array_equal(label({}), [[0, 0, 0], [1, 1, 1]])
  assert confident(len, 0) is len  # 0: the probabilities themselves.
  with pytest.raises(ValueError, match="confidence"):
    confident(len, 1.0)
