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
from success_detectors.networks import state_features

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
  std (floored at 1e-3) of each state vector and of its derived features."""
  bases = [name[:-len("_mean")] for name in norm if name.endswith("_mean")]
  feats = {}
  for key, v in examples.observations.items():
    if v.ndim == 2 and np.issubdtype(v.dtype, np.floating):
      dists = tuple(int(b[len(key) + 5:]) for b in bases if b.startswith(f"{key}_dist"))
      feats.update(state_features(key, v.astype(np.float64), f"{key}_pairs" in bases, dists))
  out = {}
  for name in norm:
    if not name.endswith("_mean"):
      continue
    base = name[:-len("_mean")]
    x = np.asarray(feats[base])
    out[f"{base}_mean"] = jnp.asarray(x.mean(0), jnp.float32)
    out[f"{base}_std"] = jnp.asarray(np.maximum(x.std(0), 1e-3), jnp.float32)
  return out


def full_mask(params) -> dict:
  return jax.tree_util.tree_map(jnp.ones_like, params)


def slot_mask(head_params, slot: int) -> dict:
  """For the SlotHeads parameters: 1 on `slot`'s entries, 0 on every other slot's."""
  return {k: jnp.zeros_like(v).at[slot].set(1) for k, v in head_params.items()}


def input_group_norm(params, active_slots) -> jax.Array:
  """Sum over input features of the L2 norm of the weights that read them: the first
  torso layer's rows and, for each slot in `active_slots` (bool [S]), its head's rows.

  A group-lasso penalty on it switches whole input features off: success predicates read a
  few distances among hundreds of candidate features, and without it the network also fits
  the few hundred positives with spurious ones (on tabletop, push precision on held-out
  episodes stayed at 0.75-0.85 with weight decay or smaller networks, with errors far from
  the predicate's boundary; at 1e-3 the errors left are near it)."""
  total = jnp.float32(0.0)
  torso = params.get("torso_0")
  if torso is not None:
    total += jnp.sum(jnp.sqrt(jnp.sum(torso["kernel"] ** 2, axis=1) + 1e-12))
  heads = params.get("heads", params)
  if "w1" in heads:
    rows = jnp.sqrt(jnp.sum(heads["w1"] ** 2, axis=2) + 1e-12)  # [S, F]
    total += jnp.sum(rows * active_slots[:, None])
  return total


def loss_fn(model, params, norm, obs, labels, weights, sparsity=0.0):
  logits = model.apply({"params": params, "norm": norm}, obs)
  losses = optax.sigmoid_binary_cross_entropy(logits, labels)
  active = jnp.any(weights > 0, axis=0)
  num_slots = jnp.maximum(jnp.sum(active), 1)
  loss = jnp.sum(losses * weights) / (labels.shape[0] * num_slots)
  return loss + sparsity * input_group_norm(params, active.astype(jnp.float32))


@functools.partial(jax.jit, static_argnames="model", donate_argnames=("params", "opt_state"))
def update_step(model, params, opt_state, norm, obs, labels, weights, update_mask,
                learning_rate, sparsity=0.0):
  """One Adam step on the weighted loss; parameters outside `update_mask` stay put."""
  loss, grads = jax.value_and_grad(
      lambda p: loss_fn(model, p, norm, obs, labels, weights, sparsity))(params)
  opt_state.hyperparams["learning_rate"] = learning_rate
  updates, opt_state = OPTIMIZER.update(grads, opt_state, params)
  updates = jax.tree_util.tree_map(lambda u, m: u * m, updates, update_mask)
  return optax.apply_updates(params, updates), opt_state, loss


@functools.partial(jax.jit, static_argnames="model")
def logits(model, variables, obs):
  """Success logits [B, max_tasks] for a batch of observations."""
  return model.apply(variables, obs)


def calibration_offset(logit: np.ndarray, truth: np.ndarray, threshold: float = 0.5,
                       limit: float = 8.0) -> float:
  """The logit shift that makes `threshold` the best cut for held-out logits `logit` [N]
  against `truth` [N]: the cut maximises min(precision, recall), and among equally good cuts
  the middle of the widest run of them is taken (the widest margin). 0 without both classes.
  """
  logit = np.clip(np.asarray(logit, np.float64), -limit, limit)
  truth = np.asarray(truth, bool)
  if truth.all() or not truth.any():
    return 0.0
  values = np.unique(logit)
  cuts = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2,
                         [values[-1] + 1e-6]])
  pred = logit[None, :] >= cuts[:, None]
  tp = (pred & truth).sum(1)
  precision = np.where(pred.sum(1) > 0, tp / np.maximum(pred.sum(1), 1), 0.0)
  score = np.minimum(precision, tp / truth.sum())
  best = np.flatnonzero(score >= score.max() - 1e-12)
  # Consecutive best cuts form runs; a run a..b is the logit range (values[a-1], values[b]).
  runs = np.split(best, np.flatnonzero(np.diff(best) > 1) + 1)
  ranges = [(values[r[0] - 1] if r[0] > 0 else -limit,
             values[r[-1]] if r[-1] < len(values) else limit) for r in runs]
  lo, hi = max(ranges, key=lambda t: t[1] - t[0])
  cut = float(np.clip((lo + hi) / 2, -limit, limit))
  return float(np.log(threshold / (1 - threshold)) - cut)


@functools.partial(jax.jit, static_argnames="model")
def head_inputs(model, variables, obs):
  """The slot heads' input features [B, F] for a batch of observations."""
  return model.apply(variables, obs, head_inputs=True)


def _padded_size(n: int, chunk: int) -> int:
  """Pads to a power of two (at least 16) so that few batch shapes get compiled."""
  return min(chunk, max(16, 1 << (max(n, 1) - 1).bit_length()))


def predict(model, variables, obs: Mapping[str, np.ndarray], chunk: int = 4096,
            fn=logits) -> np.ndarray:
  """float32 logits [N, max_tasks] (or [N, F] with fn=head_inputs) for observations
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
        update_mask, steps: int, batch_size: int, learning_rate: float, seed: int = 0,
        sparsity: float = 0.0) -> tuple[dict, list[float]]:
  """Trains `variables["params"]` for `steps` Adam steps with a cosine-decayed rate, on the
  weighted loss plus `sparsity` times `input_group_norm`.

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
                                          jnp.float32(schedule(step)), jnp.float32(sparsity))
    if step % 50 == 0 or step == steps - 1:
      history.append(float(loss))
  return {**variables, "params": params}, history
