"""The driver's training loop (`program.training_loop`) when its learner node is restarted
from a checkpoint between two of the loop's calls (a stand-in learner; the real kill is
`test_placement.test_train_survives_killed_replay_learner_and_actor_nodes`)."""

from types import SimpleNamespace

import pytest

from mtopt.config import ConfigDict
from mtopt.program import training_loop


class RestartedLearner:
  """Counts steps like a LearnerNode; the first time `restart_on` is called at step
  `at`, it falls back to its checkpoint at `to` (as Ray restarting a killed node)."""

  def __init__(self, restart_on: str, at: int, to: int):
    self.steps, self._restart = 0, (restart_on, at, to)

  def _maybe_restart(self, call: str) -> None:
    name, at, to = self._restart
    if call == name and self.steps == at:
      self.steps, self._restart = to, (None, None, None)

  def run(self, n: int) -> dict:
    self.steps += n
    return {"loss": 0.0}

  def get_params(self):
    self._maybe_restart("get_params")
    return {"step": self.steps}

  def save(self) -> int:
    self._maybe_restart("save")
    return self.steps


@pytest.mark.parametrize("restart_on", ["get_params", "save"])
def test_a_restart_mid_iteration_records_evaluations_only_at_their_steps(tmp_path, restart_on):
  learner = RestartedLearner(restart_on, at=200, to=160)
  evaluated = []

  def evaluation(params, step, progress):
    evaluated.append((params["step"], step))  # The params must be those of the step.
    progress["evaluations"].append({"step": step, "success": {"a": 0.5}})
    return {"a": 0.5}

  built = SimpleNamespace(
      tasks=["a"], collector=None, evaluation=evaluation, learner=learner, replays=[],
      budget=None, supervise=lambda: None,
      lcfg=SimpleNamespace(num_steps=400, checkpoint_every=40, publish_every=10))
  config = ConfigDict({"train": {"eval_every": 200}})
  progress = {"step": 0, "evaluations": [], "imported_episodes": 0}
  results = training_loop.run(config, built, None, str(tmp_path), progress, log=lambda *_: None)
  assert [e["step"] for e in results["evaluations"]] == [200, 400]
  assert all(p == s for p, s in evaluated)
  assert progress["step"] == 400
