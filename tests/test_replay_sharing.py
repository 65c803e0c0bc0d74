import numpy as np
import pytest

from replay import sharing


LABELS = np.array([0.9, 0.1, 0.6, 0.49, 0.5], np.float32)
SLOTS = [0, 1, 2, 3, 4]


def test_none_only_the_collected_task():
  assert sharing.targets("none", 1, LABELS, SLOTS) == [(1, False)]
  assert sharing.targets("none", 2, LABELS, SLOTS) == [(2, True)]


def test_all_every_active_task_labelled_by_threshold():
  got = dict(sharing.targets("all", 1, LABELS, SLOTS, threshold=0.5))
  assert got == {k: bool(LABELS[k] >= 0.5) for k in SLOTS}
  # Inactive slots get nothing; the collected-for task always counts.
  assert dict(sharing.targets("all", 4, LABELS, [0, 1])) == {4: True, 0: True, 1: False}


def test_conservative_shares_only_successes_into_other_tasks():
  got = sharing.targets("conservative", 1, LABELS, SLOTS, threshold=0.5)
  assert got[0] == (1, False)  # Own task, even as a failure.
  assert sorted(got[1:]) == [(0, True), (2, True), (4, True)]
  got = sharing.targets("conservative", 1, LABELS, SLOTS, threshold=0.7)
  assert sorted(got[1:]) == [(0, True)]


def test_unknown_rule_is_an_error():
  with pytest.raises(ValueError, match="unknown sharing rule 'some'"):
    sharing.targets("some", 0, LABELS, SLOTS)
