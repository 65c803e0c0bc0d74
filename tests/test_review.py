"""The detector loop's review queue: what a run queues, answers, and what they change."""

import numpy as np
import pytest

from success_detectors.review import ReviewError, ReviewQueue
from tests.test_success_labeller import episodes
from tests.test_tasks_cli import base_run, run_dir, tasks  # noqa: F401  (fixtures)


def test_queue_near_the_cut_and_some_successes(tmp_path):
  q = ReviewQueue(str(tmp_path))
  eps = episodes(np.random.default_rng(0), 6)
  labels = np.zeros((6, 6), np.float32)
  for i, p in enumerate([0.05, 0.45, 0.55, 0.9, 0.95, 0.2]):
    labels[i, eps[i].task_id] = p
  near = q.offer(eps, labels, 0.5, 0.1, 1.0, np.random.default_rng(0), [True] * 6)
  assert near == 2
  assert q.pending() == [1, 2, 3, 4], "near the cut, and (fraction 1) every judged success"
  item = q.item(3)
  assert item["slot"] == eps[3].task_id and item["label"] == pytest.approx(0.9)
  assert item["truth"] == -1, "the toy episodes carry no ground truth"
  np.testing.assert_array_equal(item["observation"]["state"], eps[3].observations["state"][-1])
  q.answer(3, True)
  assert q.pending() == [1, 2, 4] and q.answers() == {3: True}
  with pytest.raises(ReviewError, match="not in the review queue"):
    q.answer(99, True)
  assert q.answer_from_simulator() == 0, "nothing the simulator can judge"
  q.answer(1, False)
  examples, ids = q.answered_examples()
  assert ids == [1, 3] and examples.success.tolist() == [False, True]
  q.mark_applied(ids)
  assert q.pending() == [2, 4] and q.answered_examples() == (None, [])


def test_review_cli_answers_applies_and_refuses_unknown_episodes(run_dir, capsys):  # noqa: F811
  q = ReviewQueue(str(run_dir))
  rng = np.random.default_rng(1)
  eps = episodes(rng, 40)
  labels = np.full((40, 6), 0.5, np.float32)  # Every one near the cut.
  q.offer(eps, labels, 0.5, 0.1, 0.0, rng)
  assert tasks("review", "--answer", "99", "success", run_dir=run_dir) == 2
  assert "not in the review queue" in capsys.readouterr().err
  for ep in eps:
    assert tasks("review", "--answer", str(ep.episode_id),
                 "success" if ep.observations["state"][-1, ep.task_id] > 0.25 else "failure",
                 run_dir=run_dir) == 0
  assert tasks("review", "--show", "3", run_dir=run_dir) == 0
  assert "episode 3: task" in capsys.readouterr().out
  assert tasks("review", "--apply", "--config.detector.train_steps=50", run_dir=run_dir) == 0
  assert "retrained the detector on 40 reviewed episode(s)" in capsys.readouterr().out
  assert q.pending() == [] and q.answered_examples() == (None, [])
