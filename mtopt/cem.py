"""The cross-entropy method (CEM): maximises a score over bounded actions, batched over states.

One implementation for the learner's Bellman targets, the actors and serving. It is a pure
function that traces into the caller's `jax.jit` (the learner's update, the policy's act);
called on its own it is jitted with `score_fn` and the sizes static.

QT-Opt uses 64 samples, 6 elites and 2 iterations. The first iteration samples uniformly
within the bounds (so that CEM sees every mode of a multimodal score), later ones sample
from a Gaussian fitted to the previous elites, clipped to the bounds. Discrete dimensions
(gripper open/close, terminate) are binary: each takes its minimum or its maximum, drawn
from a Bernoulli whose probability is refitted to the elites. The best sample seen over
all iterations is returned, so more iterations never return a worse action.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# Keeps a collapsed Gaussian exploring a little, as a fraction of the action range.
_MIN_STD_FRACTION = 1e-3


def check_cem_sizes(num_samples: int, num_elites: int, num_iterations: int) -> None:
  """Raises ValueError naming the bad CEM size."""
  if num_samples < 1:
    raise ValueError(f"cem num_samples must be >= 1, got {num_samples}")
  if not 1 <= num_elites <= num_samples:
    raise ValueError(f"cem num_elites must be in [1, num_samples={num_samples}], got {num_elites}")
  if num_iterations < 1:
    raise ValueError(f"cem num_iterations must be >= 1, got {num_iterations}")


@functools.partial(jax.jit, static_argnames=(
    "score_fn", "batch_size", "num_samples", "num_elites", "num_iterations", "discrete_dims"))
def cem_maximize(score_fn: Callable[..., jax.Array],
                 key: jax.Array,
                 batch_size: int,
                 minimum: jax.Array,
                 maximum: jax.Array,
                 score_args=(),
                 num_samples: int = 64,
                 num_elites: int = 6,
                 num_iterations: int = 2,
                 discrete_dims: Sequence[int] = ()) -> tuple[jax.Array, jax.Array]:
  """Maximises `score_fn` over actions in [minimum, maximum], independently per batch row.

  Args:
    score_fn: `score_fn(actions [B, N, A], *score_args) -> scores [B, N]`. Pass what changes
      between calls (parameters, encoded observations) through `score_args`, so that a
      jitted caller is not retraced.
    key: a PRNG key.
    batch_size: B, the number of independent problems (states).
    minimum: action lower bounds, [A].
    maximum: action upper bounds, [A].
    score_args: a tuple of arrays / pytrees passed to `score_fn` after the actions.
    num_samples: N, candidate actions per row and iteration.
    num_elites: how many of the best samples the next distribution is fitted to.
    num_iterations: sampling rounds.
    discrete_dims: indices of binary action dimensions (take their minimum or maximum).

  Returns:
    (best_actions [B, A], best_scores [B]): the best sample seen per row and its score.
  """
  check_cem_sizes(num_samples, num_elites, num_iterations)
  minimum = jnp.asarray(minimum, jnp.float32)
  maximum = jnp.asarray(maximum, jnp.float32)
  if minimum.ndim != 1 or minimum.shape != maximum.shape:
    raise ValueError(f"cem bounds must both be [A], got {minimum.shape} and {maximum.shape}")
  action_dim = minimum.shape[0]
  discrete = np.zeros(action_dim, bool)
  for d in discrete_dims:
    if not 0 <= d < action_dim:
      raise ValueError(f"cem discrete dim {d} outside the action's {action_dim} dims")
    discrete[d] = True
  discrete = jnp.asarray(discrete)
  span = maximum - minimum
  shape = (batch_size, num_samples, action_dim)

  mean = jnp.broadcast_to((minimum + maximum) / 2, (batch_size, action_dim))
  std = jnp.broadcast_to(span / 2, (batch_size, action_dim))
  prob_max = jnp.full((batch_size, action_dim), 0.5)  # P(discrete dim at its maximum).
  best_actions = jnp.broadcast_to(mean, (batch_size, action_dim))
  best_scores = jnp.full((batch_size,), -jnp.inf)
  for it in range(num_iterations):
    key, k_cont, k_disc = jax.random.split(key, 3)
    if it == 0:
      cont = minimum + span * jax.random.uniform(k_cont, shape)
    else:
      noise = jax.random.normal(k_cont, shape)
      cont = jnp.clip(mean[:, None] + std[:, None] * noise, minimum, maximum)
    samples = cont
    if discrete_dims:  # Static: no Bernoulli draws when every dimension is continuous.
      upper = jax.random.uniform(k_disc, shape) < prob_max[:, None]
      samples = jnp.where(discrete, jnp.where(upper, maximum, minimum), cont)
    scores = score_fn(samples, *score_args)
    top_scores, top_idx = jax.lax.top_k(scores, num_elites)  # [B, K], best first.
    # The barriers stop XLA:CPU from fusing sampling, top-k and gather into one loop that
    # recomputes the samples (measured 2.0 -> 0.4 ms per iteration at B=256, N=64).
    samples, top_idx = jax.lax.optimization_barrier((samples, top_idx))
    elites = jnp.take_along_axis(samples, top_idx[..., None], axis=1)  # [B, K, A]
    elites, top_scores = jax.lax.optimization_barrier((elites, top_scores))
    better = top_scores[:, 0] > best_scores
    best_actions = jnp.where(better[:, None], elites[:, 0], best_actions)
    best_scores = jnp.where(better, top_scores[:, 0], best_scores)
    mean = elites.mean(axis=1)
    std = jnp.maximum(elites.std(axis=1), _MIN_STD_FRACTION * span)
    if discrete_dims:
      prob_max = (elites == maximum).mean(axis=1)
  return best_actions, best_scores
