"""A CEM policy that follows the parameter server: what online actors and evaluators run.

It is built on the driver, pickled into a Ray actor, and builds its jitted CEMPolicy
there on first use. At the start of every episode (`reset`) it pulls params that are
newer than its own; until the learner has published anything it acts uniformly at random
(never pressing terminate), which is the exploration an untrained Q would give anyway.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mtopt.specs import EnvSpec


class PulledCEMPolicy:
  """Args:
    param_server: a Ray handle of `mtopt.parameter_server.ParameterServer`.
    env_spec, max_tasks: what the Q-network was built for.
    network, cem: the learner's NetworkConfig and CEMConfig.
    gaussian_std, epsilon: exploration (0 for evaluation).
  """

  def __init__(self, param_server: Any, env_spec: EnvSpec, max_tasks: int, network, cem,
               gaussian_std: float = 0.0, epsilon: float = 0.0, seed: int = 0):
    self._ps = param_server
    self._args = (env_spec, max_tasks, network, None, cem)
    self._explore = dict(gaussian_std=gaussian_std, epsilon=epsilon, seed=seed)
    self._rng = np.random.default_rng(seed)
    self._policy = None
    self.version = -1

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_policy"], state["version"] = None, -1  # Jitted functions do not pickle.
    return state

  def reseed(self, seed) -> None:
    """Each robot explores with its own noise: RobotActor calls this with its own seed (one
    pickled policy would otherwise give every actor the same random stream)."""
    self._explore["seed"] = seed
    self._rng = np.random.default_rng(seed)
    self._policy = None
    self.version = -1

  def reset(self) -> None:
    import ray
    version, params = ray.get(self._ps.pull.remote(self.version))
    if params is not None:
      if self._policy is None:
        from learners.policy import CEMPolicy
        self._policy = CEMPolicy(*self._args, **self._explore)
      self._policy.set_params(params)
      self.version = version

  def __call__(self, observation: dict, task_slot: int) -> np.ndarray:
    if self._policy is None:
      spec = self._args[0].action
      a = self._rng.uniform(spec.minimum, spec.maximum).astype(np.float32)
      if a.shape == (5,):
        a[4] = spec.minimum[4]
      return a
    return self._policy(observation, task_slot)
