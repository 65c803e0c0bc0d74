"""A policy that follows a `ParameterSource`: what online actors and evaluators run.

It is built on the driver, pickled into a Ray actor, and builds its real policy there on
first use with `make_policy(seed=...)` (the program passes e.g. a partial of
`learners.policy.CEMPolicy`, so actors never import a learner). At the start of every
episode (`reset`) it pulls params newer than its own; until anything is published it acts
uniformly at random (never pressing terminate), which an untrained Q would do anyway.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from mtopt.parameter_server import ParameterSource
from mtopt.specs import BoundedArraySpec


class PulledPolicy:
  """Args:
    source: where params come from (`mtopt.parameter_server.ParameterSource`).
    make_policy: make_policy(seed=...) -> a policy with `set_params(params)` and
      `__call__(observation, task_slot) -> action`; picklable.
    action_spec: for the random actions before the first publication.
    terminate_dim: the action dimension random actions keep at its minimum, if any.
  """

  def __init__(self, source: ParameterSource, make_policy: Callable[..., Any],
               action_spec: BoundedArraySpec, terminate_dim: int | None = None, seed=0):
    self._source, self._make = source, make_policy
    self._action, self._terminate_dim = action_spec, terminate_dim
    self.reseed(seed)

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_policy"], state["version"] = None, -1  # Jitted functions do not pickle.
    return state

  def reseed(self, seed) -> None:
    """Each robot explores with its own noise: RobotActor calls this with its own seed (one
    pickled policy would otherwise give every actor the same random stream)."""
    self.seed = seed
    self._rng = np.random.default_rng(seed)
    self._policy = None
    self.version = -1

  def reset(self) -> None:
    version, params = self._source.pull(self.version)
    if params is not None:
      if self._policy is None:
        self._policy = self._make(seed=self.seed)
      self._policy.set_params(params)
      self.version = version

  def __call__(self, observation: dict, task_slot: int) -> np.ndarray:
    if self._policy is None:
      spec = self._action
      a = self._rng.uniform(spec.minimum, spec.maximum).astype(np.float32)
      if self._terminate_dim is not None:
        a[self._terminate_dim] = np.asarray(spec.minimum, np.float32)[self._terminate_dim]
      return a
    return self._policy(observation, task_slot)
