"""The act function that `mtopt serve` runs and `mtopt export` serializes.

`act(params, observation [B, ...], task [B], keys uint32 [B, 2]) -> (actions [B, A], q [B])`
is the learner's greedy CEM (`learners.learning.cem_best_actions`) with one key per row
(`mtopt.cem`): a robot's CEM samples depend on its own key, not on which other robots
shared its batch. Batches are padded to a power of two so that a few compiled sizes
serve any number of robots.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from learners import learning


def make_act_fn(network, cem_config, minimum, maximum):
  """The pure (unjitted) act function for one network and CEM config."""
  minimum = np.asarray(minimum, np.float32)
  maximum = np.asarray(maximum, np.float32)

  def act(params, observation, task, keys):
    actions, logits = learning.cem_best_actions(
        network, params, observation, task.astype(jnp.int32), keys.astype(jnp.uint32),
        minimum, maximum, cem_config, acting=True)
    return actions, jax.nn.sigmoid(logits)
  return act


def bucket(n: int, max_batch: int) -> int:
  """The compiled batch size that holds n rows: the next power of two, at most max_batch."""
  b = 1
  while b < n:
    b *= 2
  return min(b, max(max_batch, n))


class BatchedPolicy:
  """Runs the act function on lists of requests, padded to power-of-two buckets."""

  def __init__(self, source, max_batch: int):
    spec = source.spec
    self.spec, self.max_batch = spec, int(max_batch)
    self._fn = jax.jit(make_act_fn(source.network, source.lcfg.cem, spec.action.minimum,
                                   spec.action.maximum))
    self._obs_specs = dict(spec.observation)

  def warm_up(self, params, sizes=None) -> None:
    """Compiles every bucket up to max_batch now, not on a robot's first request."""
    for b in sizes or sorted({bucket(n, self.max_batch) for n in range(1, self.max_batch + 1)}):
      obs = {k: s.zeros(b) for k, s in self._obs_specs.items()}
      jax.block_until_ready(self._fn(params, obs, np.zeros(b, np.int32),
                                     np.zeros((b, 2), np.uint32)))

  def __call__(self, params, observations: list[dict], tasks: list[int],
               keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = len(tasks)
    b = bucket(n, self.max_batch)
    obs = {}
    for k, s in self._obs_specs.items():
      arr = np.zeros((b, *s.shape), s.dtype)
      arr[:n] = np.stack([o[k] for o in observations])
      obs[k] = arr
    task = np.zeros(b, np.int32)
    task[:n] = tasks
    key = np.zeros((b, 2), np.uint32)
    key[:n] = keys
    actions, q = self._fn(params, obs, task, key)
    return np.asarray(actions)[:n], np.asarray(q)[:n]
