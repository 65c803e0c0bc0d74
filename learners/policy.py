"""CEMPolicy: acts by maximising Q(s, a, task) with CEM, for actors, evaluators and serving."""

from __future__ import annotations

import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from learners import learning, networks
from learners.config import CEMConfig, NetworkConfig
from mtopt.cem import random_bits
from mtopt.specs import EnvSpec


def _act(network, cem: CEMConfig, minimum, maximum, params, observation, task, key, counter):
  key = random_bits(key, 2, block=counter)  # A fresh CEM key per call without a host split.
  actions, logits = learning.cem_best_actions(network, params, observation, task, key,
                                              minimum, maximum, cem, acting=True)
  return actions, jax.nn.sigmoid(logits)


class CEMPolicy:
  """Greedy (CEM) action for one observation and task slot, with optional exploration.

  Exploration: with probability `epsilon` a uniformly random action that never presses
  terminate (exploration must not end episodes by chance); otherwise the CEM action plus
  Gaussian noise of std `gaussian_std` (a fraction of each dimension's half range),
  clipped to the bounds. Discrete dimensions are not perturbed by the noise. `seed` may be
  an int or a sequence of ints (e.g. [run seed, robot id]).
  """

  def __init__(self, env_spec: EnvSpec, max_tasks: int, network_config: NetworkConfig,
               params=None, cem_config: CEMConfig = CEMConfig(), *,
               gaussian_std: float = 0.0, epsilon: float = 0.0, seed: int = 0):
    if gaussian_std < 0 or not 0.0 <= epsilon <= 1.0:
      raise ValueError(f"need gaussian_std >= 0 and epsilon in [0, 1], got "
                       f"{gaussian_std}, {epsilon}")
    self.env_spec = env_spec
    self.max_tasks = max_tasks
    self.gaussian_std = float(gaussian_std)
    self.epsilon = float(epsilon)
    self.network = networks.make_q_network(env_spec, max_tasks, network_config)
    self._minimum = np.asarray(env_spec.action.minimum, np.float32)
    self._maximum = np.asarray(env_spec.action.maximum, np.float32)
    self._continuous = np.ones(self._minimum.shape, bool)
    self._continuous[list(cem_config.discrete_dims)] = False
    self._act = jax.jit(functools.partial(_act, self.network, cem_config, self._minimum,
                                          self._maximum))
    self._terminate_dim = env_spec.terminate_dim
    self._key = jax.random.PRNGKey(np.random.SeedSequence(seed).generate_state(1)[0])
    self._rng = np.random.default_rng(seed)
    self._calls = 0
    self._params = None
    self.last_q = float("nan")  # Q of the last greedy action, for logging.
    if params is not None:
      self.set_params(params)

  def set_params(self, params) -> None:
    """Acts with `params` (e.g. `Learner.get_params()`) from the next call on."""
    self._params = jax.device_put(params)

  def __call__(self, observation: Mapping[str, np.ndarray], task_slot: int) -> np.ndarray:
    """The action (float32 [A]) for one observation (no batch axis) and task slot."""
    if not 0 <= int(task_slot) < self.max_tasks:
      raise ValueError(f"task slot {task_slot} outside [0, {self.max_tasks})")
    if self.epsilon and self._rng.random() < self.epsilon:
      a = self._rng.uniform(self._minimum, self._maximum).astype(np.float32)
      if self._terminate_dim is not None:
        a[self._terminate_dim] = self._minimum[self._terminate_dim]
      return a
    batched = {}
    for k, spec in self.env_spec.observation.items():
      if k not in observation:
        raise KeyError(f"observation lacks {k!r}; the env spec has {sorted(self.env_spec.observation)}")
      v = np.asarray(observation[k], spec.dtype)
      if v.shape != spec.shape:
        raise ValueError(f"observation {k!r}: expected shape {spec.shape}, got {v.shape}")
      batched[k] = v[None]
    actions, q = self.act_batch(batched, np.asarray([task_slot], np.int32))
    self.last_q = float(q[0])
    return actions[0]

  def act_batch(self, observation: Mapping[str, np.ndarray],
                task: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Actions [B, A] and their Q [B] for batched observations; noise as in `__call__`."""
    if self._params is None:
      raise RuntimeError("CEMPolicy has no parameters yet: call set_params() first")
    self._calls += 1
    actions, q = self._act(self._params, dict(observation), jnp.asarray(task, jnp.int32),
                           self._key, self._calls)
    actions = np.asarray(actions)
    if self.gaussian_std:
      half = (self._maximum - self._minimum) / 2
      noise = self._rng.normal(size=actions.shape) * self.gaussian_std * half
      actions = np.clip(actions + noise * self._continuous, self._minimum, self._maximum)
    return actions.astype(np.float32), np.asarray(q)
