"""Training the success classifier from examples: targets, class balancing, masked updates.

Targets: an example given for slot s is a positive or negative for s. With
`other_task_negatives`, a positive for another slot is also a negative for s (MT-Opt's
"a success of task B is a failure of task A"); examples say nothing about the remaining
(slot, example) pairs, which get weight 0. Each trained slot's positives and negatives
carry half of its loss each, whatever their counts (class balancing).

`update_mask` (a 0/1 pytree like the params) chooses what may change: everything for a
fresh detector or a retrain, only one slot's head when a task is added.
"""

from __future__ import annotations

import functools
from typing import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from success_detectors.examples import ExampleSet, ExamplesError
from success_detectors.networks import pairwise_log_distances

# Adam with the learning rate in its state, so one compiled update serves any rate.
OPTIMIZER = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)


def targets(examples: ExampleSet, max_tasks: int, train_slots: Iterable[int],
            other_task_negatives: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Labels and class-balanced loss weights, both float32 [N, max_tasks].

  Args:
    examples: the training examples.
    max_tasks: number of slots.
    train_slots: slots that get a loss; every one needs positives and negatives.
    other_task_negatives: use other slots' positives as negatives.
  """
  n = len(examples)
  rows = np.arange(n)
  labels = np.zeros((n, max_tasks), np.float32)
  known = np.zeros((n, max_tasks), bool)
  labels[rows, examples.slot] = examples.success
  known[rows, examples.slot] = True
  train_slots = sorted(set(int(s) for s in train_slots))
  donors = examples.success
  weights = np.zeros((n, max_tasks), np.float32)
  for s in train_slots:
    col = known[:, s].copy()
    if other_task_negatives:
      col |= donors & (examples.slot != s)
    pos = col & (labels[:, s] > 0.5)
    neg = col & ~pos
    if not pos.any() or not neg.any():
      raise ExamplesError(f"slot {s}: training needs both successes and failures "
                          f"(has {int(pos.sum())} and {int(neg.sum())})")
    # Each class carries half the slot's loss; scaled by n so a weight is ~1 on average.
    weights[pos, s] = 0.5 * n / pos.sum()
    weights[neg, s] = 0.5 * n / neg.sum()
  return labels, weights


def state_statistics(examples: ExampleSet, norm: Mapping) -> dict:
  """The classifier's `norm` collection (same keys as `norm`) from the examples: mean and
  std (floored at 1e-3) of each state vector and of its pairwise features."""
  out = {}
  for name in norm:
    if not name.endswith("_mean"):
      continue
    base = name[:-len("_mean")]
    if base in examples.observations:
      x = examples.observations[base].astype(np.float64)
    else:  # "{key}_pairs"
      x = np.asarray(pairwise_log_distances(
          examples.observations[base[:-len("_pairs")]].astype(np.float64)))
    out[f"{base}_mean"] = jnp.asarray(x.mean(0), jnp.float32)
    out[f"{base}_std"] = jnp.asarray(np.maximum(x.std(0), 1e-3), jnp.float32)
  return out


def full_mask(params) -> dict:
  return jax.tree_util.tree_map(jnp.ones_like, params)


def slot_mask(head_params, slot: int) -> dict:
  """For the SlotHeads parameters: 1 on `slot`'s entries, 0 on every other slot's."""
  return {k: jnp.zeros_like(v).at[slot].set(1) for k, v in head_params.items()}


def loss_fn(model, params, norm, obs, labels, weights):
  logits = model.apply({"params": params, "norm": norm}, obs)
  losses = optax.sigmoid_binary_cross_entropy(logits, labels)
  num_slots = jnp.maximum(jnp.sum(jnp.any(weights > 0, axis=0)), 1)
  return jnp.sum(losses * weights) / (labels.shape[0] * num_slots)


@functools.partial(jax.jit, static_argnames="model", donate_argnames=("params", "opt_state"))
def update_step(model, params, opt_state, norm, obs, labels, weights, update_mask,
                learning_rate):
  """One Adam step on the weighted loss; parameters outside `update_mask` stay put."""
  loss, grads = jax.value_and_grad(lambda p: loss_fn(model, p, norm, obs, labels, weights))(
      params)
  opt_state.hyperparams["learning_rate"] = learning_rate
  updates, opt_state = OPTIMIZER.update(grads, opt_state, params)
  updates = jax.tree_util.tree_map(lambda u, m: u * m, updates, update_mask)
  return optax.apply_updates(params, updates), opt_state, loss


@functools.partial(jax.jit, static_argnames="model")
def probabilities(model, variables, obs):
  """Success probabilities [B, max_tasks] for a batch of observations."""
  return jax.nn.sigmoid(model.apply(variables, obs))


@functools.partial(jax.jit, static_argnames="model")
def head_inputs(model, variables, obs):
  """The slot heads' input features [B, F] for a batch of observations."""
  return model.apply(variables, obs, head_inputs=True)


def _padded_size(n: int, chunk: int) -> int:
  """Pads to a power of two (at least 16) so that few batch shapes get compiled."""
  return min(chunk, max(16, 1 << (max(n, 1) - 1).bit_length()))


def predict(model, variables, obs: Mapping[str, np.ndarray], chunk: int = 4096,
            fn=probabilities) -> np.ndarray:
  """float32 [N, max_tasks] (or [N, F] with fn=head_inputs) for observations
  name -> [N, ...], in padded chunks."""
  n = len(next(iter(obs.values())))
  out = None
  for start in range(0, n, chunk):
    part = {k: v[start:start + chunk] for k, v in obs.items()}
    m = len(next(iter(part.values())))
    size = _padded_size(m, chunk)
    if size != m:
      part = {k: np.concatenate([v, np.zeros((size - m, *v.shape[1:]), v.dtype)])
              for k, v in part.items()}
    res = np.asarray(fn(model, variables, part))[:m]
    if out is None:
      out = np.zeros((n, *res.shape[1:]), np.float32)
    out[start:start + m] = res
  return out if out is not None else np.zeros((0, model.max_tasks), np.float32)


def fit(model, variables: dict, examples: ExampleSet, labels: np.ndarray, weights: np.ndarray,
        update_mask, steps: int, batch_size: int, learning_rate: float, seed: int = 0
        ) -> tuple[dict, list[float]]:
  """Trains `variables["params"]` for `steps` Adam steps with a cosine-decayed rate.

  Batches are drawn uniformly from the examples with any nonzero weight. Returns the new
  variables and the loss every 50 steps.
  """
  usable = np.flatnonzero(weights.sum(1) > 0)
  if len(usable) == 0:
    raise ExamplesError("no examples carry a training signal")
  rng = np.random.default_rng(seed)
  params = jax.tree_util.tree_map(jnp.array, variables["params"])  # a copy: donated below
  norm = variables["norm"]
  opt_state = OPTIMIZER.init(params)
  batch_size = min(batch_size, len(usable))
  schedule = optax.cosine_decay_schedule(learning_rate, max(steps, 1), alpha=0.05)
  history = []
  for step in range(steps):
    idx = usable[rng.integers(0, len(usable), batch_size)]
    obs = {k: v[idx] for k, v in examples.observations.items()}
    params, opt_state, loss = update_step(model, params, opt_state, norm, obs, labels[idx],
                                          weights[idx], update_mask,
                                          jnp.float32(schedule(step)))
    if step % 50 == 0 or step == steps - 1:
      history.append(float(loss))
  return {**variables, "params": params}, history
