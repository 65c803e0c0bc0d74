import dataclasses

import numpy as np
import pytest

from mtopt.episode import Episode, EpisodeError
from mtopt.specs import ArraySpec, BoundedArraySpec, EnvSpec

MAX_TASKS = 4
SPEC = EnvSpec(
    observation={"state": ArraySpec((5,), np.float32, "state"),
                 "image": ArraySpec((8, 8, 3), np.uint8, "image")},
    action=BoundedArraySpec((4,), np.float32, "action", -1.0, 1.0),
    max_episode_steps=10)


def make(t=3, **kw):
  ep = Episode(
      observations={"state": np.zeros((t + 1, 5), np.float32),
                    "image": np.zeros((t + 1, 8, 8, 3), np.uint8)},
      actions=np.zeros((t, 4), np.float32), task_id=1, robot_id=2, episode_id=7,
      success=np.zeros(MAX_TASKS, bool), labels=np.full(MAX_TASKS, 0.5, np.float32))
  return dataclasses.replace(ep, **kw)


def test_valid_episode():
  ep = make().validate(SPEC, MAX_TASKS)
  assert ep.num_steps == 3 and ep.final_observation["state"].shape == (5,)


def _nan_state():
  s = np.zeros((4, 5), np.float32)
  s[2, 1] = np.nan
  return s


@pytest.mark.parametrize("changes,needle", [
    (dict(actions=np.zeros((0, 4), np.float32),
          observations={"state": np.zeros((1, 5), np.float32),
                        "image": np.zeros((1, 8, 8, 3), np.uint8)}), "empty episode"),
    (dict(actions=np.zeros((3, 5), np.float32)), "actions: expected shape"),
    (dict(actions=np.zeros((3, 4), np.float64)), "actions: expected dtype"),
    (dict(actions=np.full((3, 4), np.nan, np.float32)), "non-finite"),
    (dict(actions=np.full((3, 4), 2.0, np.float32)), "outside bounds"),
    (dict(actions=[[0.0] * 4] * 3), "actions"),
    (dict(observations={"state": np.zeros((4, 5), np.float32)}), "missing \\['image'\\]"),
    (dict(observations={"state": np.zeros((3, 5), np.float32),
                        "image": np.zeros((4, 8, 8, 3), np.uint8)}), "observations/state"),
    (dict(observations={"state": _nan_state(),
                        "image": np.zeros((4, 8, 8, 3), np.uint8)}), "observations/state: 1 non-finite"),
    (dict(observations={"state": np.zeros((4, 5), np.float32),
                        "image": np.zeros((4, 8, 8, 3), np.float32)}), "observations/image: expected dtype"),
    (dict(task_id=4), "task_id: slot 4 outside"),
    (dict(task_id=-1), "task_id"),
    (dict(task_id=1.0), "task_id: expected an int"),
    (dict(success=np.zeros(3, bool)), "success"),
    (dict(labels=np.full(MAX_TASKS, np.nan, np.float32)), "labels"),
    (dict(labels=np.full(MAX_TASKS, 1.5, np.float32)), "labels"),
])
def test_bad_episodes_are_rejected(changes, needle):
  with pytest.raises(EpisodeError, match=needle) as e:
    make(**changes).validate(SPEC, MAX_TASKS)
  assert "episode 7 (robot 2)" in str(e.value)


def test_too_long():
  with pytest.raises(EpisodeError, match="max_episode_steps"):
    make(t=11).validate(SPEC, MAX_TASKS)


def test_spec_json_roundtrip():
  assert EnvSpec.from_json(SPEC.to_json()) == SPEC
