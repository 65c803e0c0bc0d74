"""Policies for robot actors: scripted experts, random actions, and exploration noise.

A policy is any callable `policy(obs, task_slot) -> action`; if it also has `reset()`,
actors call it at the start of every episode (noise segments and such end there).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import numpy as np

from mtopt.specs import BoundedArraySpec

Policy = Callable[[dict, int], np.ndarray]


class EnvWithExpert(Protocol):
  def expert_action(self) -> np.ndarray: ...


class ScriptedPolicy:
  """The env's scripted expert for its current task (it reads the privileged state)."""

  def __init__(self, env: EnvWithExpert):
    self._env = env

  def __call__(self, obs: dict, task_slot: int) -> np.ndarray:
    return self._env.expert_action()


class RandomPolicy:
  """Uniform random actions; the terminate dimension (if any) fires with `terminate_prob`."""

  def __init__(self, action_spec: BoundedArraySpec, terminate_dim: int | None = None,
               terminate_prob: float = 0.0, seed: Any = None):
    self._spec = action_spec
    self._terminate_dim = terminate_dim
    self._terminate_prob = terminate_prob
    self._rng = np.random.default_rng(seed)

  def __call__(self, obs: dict, task_slot: int) -> np.ndarray:
    a = self._rng.uniform(self._spec.minimum, self._spec.maximum).astype(np.float32)
    if self._terminate_dim is not None:
      fire = self._rng.random() < self._terminate_prob
      a[self._terminate_dim] = self._spec.maximum[self._terminate_dim] if fire else \
          self._spec.minimum[self._terminate_dim]
    return a


class NoisyPolicy:
  """Wraps a policy with the data-quality knobs that make mixed success and failure.

  Per step, in this order: with probability `epsilon` a uniform random action; while a
  sticky segment lasts, its random action (a segment starts with probability
  `sticky_prob` and lasts `sticky_steps` steps); otherwise the wrapped action plus
  Gaussian noise of std `gaussian_std`. Results are clipped to the action bounds. The
  terminate dimension is not randomised by these knobs (they must not end episodes by
  chance); `early_terminate_prob` alone presses it, per step, so that the data shows what
  terminating too early gives (a failure): without such data a Q-function learns that
  terminating always pays, because experts only terminate once they have succeeded.
  """

  def __init__(self, policy: Policy, action_spec: BoundedArraySpec, gaussian_std: float = 0.0,
               epsilon: float = 0.0, sticky_prob: float = 0.0, sticky_steps: int = 5,
               terminate_dim: int | None = None, early_terminate_prob: float = 0.0,
               seed: Any = None):
    for name, p in (("epsilon", epsilon), ("sticky_prob", sticky_prob),
                    ("early_terminate_prob", early_terminate_prob)):
      if not 0.0 <= p <= 1.0:
        raise ValueError(f"NoisyPolicy: {name} must be in [0, 1], got {p}")
    if gaussian_std < 0:
      raise ValueError(f"NoisyPolicy: gaussian_std must be >= 0, got {gaussian_std}")
    if sticky_steps < 1:
      raise ValueError(f"NoisyPolicy: sticky_steps must be >= 1, got {sticky_steps}")
    self._policy = policy
    self._spec = action_spec
    self._std, self._eps = float(gaussian_std), float(epsilon)
    self._sticky_prob, self._sticky_steps = float(sticky_prob), int(sticky_steps)
    self._terminate_dim = terminate_dim
    self._early_terminate = float(early_terminate_prob)
    self._rng = np.random.default_rng(seed)
    self._sticky_left = 0
    self._sticky_action = None

  def reset(self) -> None:
    self._sticky_left = 0
    if hasattr(self._policy, "reset"):
      self._policy.reset()

  def _random(self) -> np.ndarray:
    return self._rng.uniform(self._spec.minimum, self._spec.maximum).astype(np.float32)

  def __call__(self, obs: dict, task_slot: int) -> np.ndarray:
    base = np.asarray(self._policy(obs, task_slot), np.float32)
    if self._sticky_left == 0 and self._sticky_prob and self._rng.random() < self._sticky_prob:
      self._sticky_left, self._sticky_action = self._sticky_steps, self._random()
    if self._eps and self._rng.random() < self._eps:
      a = self._random()
    elif self._sticky_left > 0:
      self._sticky_left -= 1
      a = self._sticky_action.copy()
    elif self._std:
      a = base + self._rng.normal(0.0, self._std, base.shape).astype(np.float32)
    else:
      a = base.copy()
    if self._terminate_dim is not None:
      a[self._terminate_dim] = base[self._terminate_dim]
      if self._early_terminate and self._rng.random() < self._early_terminate:
        a[self._terminate_dim] = self._spec.maximum[self._terminate_dim]
    return np.clip(a, self._spec.minimum, self._spec.maximum)


def make_policy(kind: str | Policy, env, gaussian_std: float = 0.0, epsilon: float = 0.0,
                sticky_prob: float = 0.0, sticky_steps: int = 5,
                early_terminate_prob: float = 0.0, seed: Any = None) -> Policy:
  """A policy for `env`: "scripted", "random", or any callable; wrapped in noise if any knob
  is non-zero."""
  spec = env.spec().action
  terminate_dim = 4 if spec.shape == (5,) else None
  if callable(kind):
    policy = kind
  elif kind == "scripted":
    policy = ScriptedPolicy(env)
  elif kind == "random":
    policy = RandomPolicy(spec, terminate_dim, seed=seed)
  else:
    raise ValueError(f"unknown policy {kind!r}: use scripted, random or a callable "
                     f"policy(obs, task_slot) -> action")
  if gaussian_std or epsilon or sticky_prob or (early_terminate_prob and terminate_dim):
    policy = NoisyPolicy(policy, spec, gaussian_std, epsilon, sticky_prob, sticky_steps,
                         terminate_dim, early_terminate_prob, seed=seed)
  return policy
