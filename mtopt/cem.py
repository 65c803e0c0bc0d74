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
import scipy.special

# Keeps a collapsed Gaussian exploring a little, as a fraction of the action range.
_MIN_STD_FRACTION = 1e-3
# Up to this many elites they are picked by rounds of reductions, beyond it by top_k.
_MAX_ELITE_ROUNDS = 16


def check_cem_sizes(num_samples: int, num_elites: int, num_iterations: int) -> None:
  """Raises ValueError naming the bad CEM size."""
  if num_samples < 1:
    raise ValueError(f"cem num_samples must be >= 1, got {num_samples}")
  if not 1 <= num_elites <= num_samples:
    raise ValueError(f"cem num_elites must be in [1, num_samples={num_samples}], got {num_elites}")
  if num_iterations < 1:
    raise ValueError(f"cem num_iterations must be >= 1, got {num_iterations}")


@functools.partial(jax.jit, static_argnames=(
    "score_fn", "batch_size", "num_samples", "num_elites", "num_iterations", "discrete_dims",
    "terminate_dim"))
def cem_maximize(score_fn: Callable[..., jax.Array],
                 key: jax.Array,
                 batch_size: int,
                 minimum: jax.Array,
                 maximum: jax.Array,
                 score_args=(),
                 num_samples: int = 64,
                 num_elites: int = 6,
                 num_iterations: int = 2,
                 discrete_dims: Sequence[int] = (),
                 prior: jax.Array | None = None,
                 prior_std: float = 0.2,
                 terminate_dim: int | None = None) -> tuple[jax.Array, jax.Array]:
  """Maximises `score_fn` over actions in [minimum, maximum], independently per batch row.

  Args:
    score_fn: `score_fn(actions [B, N, A], *score_args) -> scores [B, N]`. Pass what changes
      between calls (parameters, encoded observations) through `score_args`, so that a
      jitted caller is not retraced.
    key: a PRNG key, or raw uint32 keys [B, 2], one per row (a row's samples then depend
      on its own key only, whatever else is in the batch).
    batch_size: B, the number of independent problems (states).
    minimum: action lower bounds, [A].
    maximum: action upper bounds, [A].
    score_args: a tuple of arrays / pytrees passed to `score_fn` after the actions.
    num_samples: N, candidate actions per row and iteration.
    num_elites: how many of the best samples the next distribution is fitted to.
    num_iterations: sampling rounds.
    discrete_dims: indices of binary action dimensions (take their minimum or maximum).
    prior: optional [B, A] actions (e.g. a behaviour model's) that the first round samples
      around instead of the whole box: continuous dims at N(prior, (prior_std * half
      range)^2), discrete dims as the prior chose; the prior itself is the first sample.
      Or K priors per row, [B, K, A]: the first round's samples go around each in turn,
      the K priors are the first K samples, and the next round's Gaussian is fitted to the
      elites around the prior of the round's best sample (when each prior has at least
      `num_elites` samples), so that it does not fall between modes.
    prior_std: see `prior`.
    terminate_dim: a discrete dim whose maximum ends the episode whatever the other dims
      (the score must treat it so). Then every round's samples continue (that dim at its
      minimum) but the last, which terminates: Q chooses between stopping now and the best
      motion found, and no samples are spent on copies of the one terminate action.

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
  if prior is not None:
    prior = jnp.clip(jnp.asarray(prior, jnp.float32), minimum, maximum)
    if prior.ndim == 2:
      prior = prior[:, None]
    modes = prior.shape[1]
    if modes > num_samples:
      raise ValueError(f"cem got {modes} prior actions per row for {num_samples} samples")
    # The first round's samples take the K priors in turn: [B, N, A] centres.
    centre = prior[:, np.arange(num_samples) % modes]
    first_prob = (centre > mean[:, None]).astype(jnp.float32)
    mean, std = prior[:, 0], jnp.broadcast_to(prior_std * span / 2, (batch_size, action_dim))
  best_actions = jnp.broadcast_to(mean, (batch_size, action_dim))
  best_scores = jnp.full((batch_size,), -jnp.inf)
  for it in range(num_iterations):
    # One uniform per sample and dimension, on a 16-bit grid: a continuous dim maps it to the
    # box (first iteration) or through the inverse normal CDF, a table lookup (later ones); a
    # discrete dim compares it with its Bernoulli probability. Iteration `it` hashes its own
    # block of counters, so its samples do not depend on how many iterations follow.
    grid = _grid16(key, shape, block=it)
    u = (grid.astype(jnp.float32) + 0.5) * (1.0 / 65536)
    around_prior = it == 0 and prior is not None
    if it == 0 and prior is None:
      cont = minimum + span * u
    else:
      noise = jnp.asarray(_normal_icdf16())[grid]  # The standard normal quantile of u.
      cont = jnp.clip((centre if around_prior else mean[:, None]) + std[:, None] * noise,
                      minimum, maximum)
    samples = cont
    if discrete_dims:  # Static: continuous-only actions skip the select.
      prob = first_prob if around_prior else prob_max[:, None]
      samples = jnp.where(discrete, jnp.where(u < prob, maximum, minimum), cont)
    if around_prior:
      samples = samples.at[:, :modes].set(prior)
    if terminate_dim is not None:
      samples = samples.at[..., terminate_dim].set(minimum[terminate_dim])
      stop = mean.at[:, terminate_dim].set(maximum[terminate_dim])
      samples = samples.at[:, -1].set(jnp.clip(stop, minimum, maximum))
    scores = score_fn(samples, *score_args)
    top_score, best, elite = elite_masks(scores, num_elites)
    if around_prior and 1 < modes and num_elites <= num_samples // modes:
      # The next Gaussian is fitted to the elites of the best sample's prior only: fitted
      # to elites of several modes its mean would fall between them, where the score is low.
      mode = jnp.asarray(np.arange(num_samples) % modes)
      best_mode = jnp.sum(jnp.where(best, mode, 0), axis=1, keepdims=True)
      _, _, elite = elite_masks(jnp.where(mode == best_mode, scores, -jnp.inf), num_elites)
    # The barrier stops XLA:CPU from fusing the sampling into each masked sum below, which
    # would recompute the samples once per use.
    samples, best, elite = jax.lax.optimization_barrier((samples, best, elite))
    weight = elite.astype(jnp.float32)[..., None] * (1.0 / num_elites)  # [B, N, 1]
    better = top_score > best_scores
    # One row of each is kept, the rest zeroed: the sum is the best sample exactly.
    best_sample = jnp.sum(jnp.where(best[..., None], samples, 0.0), axis=1)
    best_actions = jnp.where(better[:, None], best_sample, best_actions)
    best_scores = jnp.where(better, top_score, best_scores)
    mean = jnp.sum(weight * samples, axis=1)
    std = jnp.sqrt(jnp.sum(weight * jnp.square(samples - mean[:, None]), axis=1))
    std = jnp.maximum(std, _MIN_STD_FRACTION * span)
    if discrete_dims:
      prob_max = jnp.sum(weight * (samples == maximum), axis=1)
  return best_actions, best_scores


def elite_masks(scores: jax.Array, num_elites: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The `num_elites` best of each row of scores [B, N], as masks rather than indices.

  Returns (top score [B], best [B, N]: the best sample, elite [B, N]: the best
  `num_elites`). Ties go to the lower index, as in `jax.lax.top_k`; a NaN score ranks
  last. Rounds of max and first-index reductions: on XLA:CPU these and the masked sums
  that use them are cheaper than top_k (a single-threaded custom call, ~140 us at B=256,
  N=64) followed by a gather.
  """
  scores = jnp.where(jnp.isnan(scores), -jnp.inf, scores)
  index = jax.lax.broadcasted_iota(jnp.int32, scores.shape, 1)
  if num_elites > _MAX_ELITE_ROUNDS:  # Many rounds would cost more than top_k.
    top, picked = jax.lax.top_k(scores, num_elites)
    elite = jnp.any(index[..., None] == picked[:, None, :], axis=-1)
    return top[:, 0], index == picked[:, :1], elite
  elite = jnp.zeros(scores.shape, bool)
  for k in range(num_elites):
    left = jnp.where(elite, -jnp.inf, scores)
    top = jnp.max(left, axis=1, keepdims=True)
    # The lowest index among the remaining rows at the maximum (all -inf rows included).
    first = jnp.min(jnp.where((left == top) & ~elite, index, scores.shape[1]), axis=1,
                    keepdims=True)
    pick = index == first
    if k == 0:
      top_score, best = top[:, 0], pick
    elite = elite | pick
  return top_score, best, elite


def _grid16(key: jax.Array, shape: tuple[int, ...], block: int = 0) -> jax.Array:
  """Integers i < 2**16 for the uniforms (i + 1/2) / 2**16, strictly inside (0, 1): the high
  and low halves of 32-bit Threefry words, so half the random bits of float32 uniforms.

  16 bits are ample for CEM's samples (a step of 3e-5 of the action range; normals reach
  4.3 standard deviations), and the bit generation is a large share of a CEM iteration's
  cost on a CPU. `block` selects a disjoint range of Threefry counters for the same key.
  """
  *lead, last = shape
  words = (last + 1) // 2
  if jnp.ndim(key) == 2:  # One raw key per batch row (serving): rows draw independently.
    n = int(np.prod(lead[1:], dtype=np.int64)) * words
    bits = jax.vmap(lambda k: random_bits(k, n, block))(key)
    bits = bits.reshape((*lead, words))
    return jnp.concatenate([bits >> 16, bits & 0xFFFF], axis=-1)[..., :last].astype(jnp.int32)
  bits = random_bits(key, int(np.prod(lead, dtype=np.int64)) * words, block)
  bits = bits.reshape((*lead, words))
  return jnp.concatenate([bits >> 16, bits & 0xFFFF], axis=-1)[..., :last].astype(jnp.int32)


@functools.cache
def _normal_icdf16() -> np.ndarray:
  """The standard normal quantile at each (i + 1/2) / 2**16, float32[65536].

  A table lookup (exact at the grid's points): erf_inv's polynomials, which XLA:CPU fuses
  into the head's merge and recomputes once per merge unit, cost ~2.5x the merge itself
  (B=256, N=64, width 64: ~270 us more per iteration; the lookup ~40 us).
  """
  return scipy.special.ndtri((np.arange(65536) + 0.5) / 65536).astype(np.float32)


# Threefry-2x32 (20 rounds), the hash behind jax.random's default generator, written out
# without a loop. JAX lowers its own to a rolled 5-step while loop on CPU (to compile
# faster), which XLA:CPU runs as ~40 separately dispatched tiny kernels per call; unrolled,
# the whole draw is one fused elementwise kernel. tests/test_cem.py checks it bit for bit
# against jax's primitive.
_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry2x32(key: jax.Array, x0: jax.Array, x1: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Threefry-2x32 of the counter pairs (x0, x1) under key uint32[2]."""
  k0, k1 = key[0], key[1]
  ks = (k0, k1, k0 ^ k1 ^ np.uint32(0x1BD11BDA))
  x0, x1 = x0 + ks[0], x1 + ks[1]
  for i in range(5):
    for r in _THREEFRY_ROTATIONS[i % 2]:
      x0 = x0 + x1
      x1 = x0 ^ ((x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r)))
    x0 = x0 + ks[(i + 1) % 3]
    x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
  return x0, x1


def _key_words(key: jax.Array) -> jax.Array:
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  if key.shape != (2,) or key.dtype != jnp.uint32:
    raise ValueError(f"expected a Threefry key (uint32[2]), got {key.dtype}{list(key.shape)}")
  return key


def random_bits(key: jax.Array, n: int, block=0) -> jax.Array:
  """n random uint32 words: Threefry-2x32 of counters [block * n, (block + 1) * n) (n rounded
  up to even) under key, a raw uint32[2] key (jax.random.PRNGKey) or a typed Threefry key.
  `block` may be traced. For even n and block 0 this equals jax.random.bits(key, (n,)) with
  jax's default (non-partitionable) Threefry."""
  key = _key_words(key)
  half = (n + 1) // 2
  counter = jax.lax.iota(jnp.uint32, half) + jnp.asarray(block, jnp.uint32) * np.uint32(2 * half)
  x0, x1 = threefry2x32(key, counter, counter + np.uint32(half))
  return jnp.concatenate([x0, x1])[:n]


def split_key(key: jax.Array, num: int = 2) -> jax.Array:
  """`num` new raw keys [num, 2] from `key`, like jax.random.split (the same Threefry
  construction: the hash of counters 0 .. 2*num-1), without jax's rolled loop on CPU."""
  return random_bits(key, 2 * num).reshape(num, 2)
