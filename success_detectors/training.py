"""Training the success classifier from examples: targets, class balancing, fold heads.

Targets: an example given for slot s is a positive or negative for s. With
`other_task_negatives`, a positive for another slot is also a negative for s (MT-Opt's
"a success of task B is a failure of task A"); examples say nothing about the remaining
(slot, example) pairs, which get weight 0. Each trained slot's positives and negatives
carry half of its loss each, whatever their counts (class balancing).

`fit` trains the whole network. `fit_fold_heads` fits slot heads alone on a frozen torso's
features: a new task's head (the other slots stay as they were), or every head after `fit`,
as cross-fitted fold heads whose out-of-fold logits calibrate each slot's cut.
"""

from __future__ import annotations

import functools
from typing import Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.nn import initializers as nn_init

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
  heads = params.get("heads")
  if heads is not None:
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
def update_step(model, params, opt_state, norm, obs, labels, weights, learning_rate,
                sparsity=0.0):
  """One Adam step on the weighted loss."""
  loss, grads = jax.value_and_grad(
      lambda p: loss_fn(model, p, norm, obs, labels, weights, sparsity))(params)
  opt_state.hyperparams["learning_rate"] = learning_rate
  updates, opt_state = OPTIMIZER.update(grads, opt_state, params)
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


def compact_heads(model, heads: Mapping[str, np.ndarray], slots: Sequence[int]
                  ) -> tuple[bool, tuple]:
  """`slots`' heads reduced to the head inputs they read: (with_torso, ((rows, w1, b1, w2,
  b2), ...)) for `compact_logits`.

  The group-lasso fits (DetectorConfig.head_sparsity, head_relax) leave most of a head's
  input rows exactly zero (tabletop: 8-491 of 3054 per task), and slots without a task have
  no head worth computing, so labelling reads the kept rows only (~10x fewer multiply-adds
  than all heads on all inputs) and skips the torso where no head reads it. The logits are
  the same up to float rounding: only exact zeros are dropped.
  """
  width = model.torso[-1] if model.torso else 0
  kept = [np.flatnonzero(np.any(np.asarray(heads["w1"][s]) != 0, axis=1)) for s in slots]
  with_torso = width == 0 or any(len(r) and r[0] < width for r in kept)
  shift = 0 if with_torso else width
  return with_torso, tuple(
      (r - shift, np.asarray(heads["w1"][s][r]), np.asarray(heads["b1"][s]),
       np.asarray(heads["w2"][s]), np.asarray(heads["b2"][s])) for s, r in zip(slots, kept))


@functools.partial(jax.jit, static_argnames=("model", "with_torso"))
def compact_logits(model, variables, obs, heads, with_torso: bool):
  """Logits [B, len(heads)] of `compact_heads`' heads."""
  x = model.apply(variables, obs, head_inputs=True, with_torso=with_torso)
  return jnp.stack([(jax.nn.relu(jnp.take(x, rows, axis=1) @ w1 + b1) @ w2)[:, 0] + b2
                    for rows, w1, b1, w2, b2 in heads], axis=1)


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
        steps: int, batch_size: int, learning_rate: float, seed: int = 0,
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
                                          weights[idx],
                                          jnp.float32(schedule(step)), jnp.float32(sparsity))
    if step % 50 == 0 or step == steps - 1:
      history.append(float(loss))
  return {**variables, "params": params}, history


def used_head_inputs(params, slots, threshold: float = 0.01) -> np.ndarray | None:
  """Columns of the heads' inputs that a trained network reads: all of the torso's output,
  plus the state features whose group-lasso norm (see `input_group_norm`) in the first
  torso layer or in a trained slot's head exceeds `threshold` of the largest there. Refitted
  heads need no others (tabletop: ~300 of ~1750 state features), which makes them several
  times cheaper to fit. None: every column (a network without a torso)."""
  if "torso_0" not in params:
    return None
  heads = np.asarray(params["heads"]["w1"])[list(slots)]  # [S, F, H]
  first = np.linalg.norm(np.asarray(params["torso_0"]["kernel"]), axis=1)
  head_rows = np.linalg.norm(heads, axis=2)  # [S, F]
  last = max(int(k[len("torso_"):]) for k in params if k.startswith("torso_"))
  torso_out = np.asarray(params[f"torso_{last}"]["kernel"]).shape[1]
  states = head_rows.shape[1] - torso_out  # The head reads [torso output, state features].
  used = first[-states:] > threshold * first.max() if states else np.zeros(0, bool)
  used |= np.any(head_rows[:, torso_out:] > threshold * head_rows.max(1, keepdims=True), axis=0)
  return np.r_[np.arange(torso_out), torso_out + np.flatnonzero(used)]


def fold_assignment(examples: ExampleSet, num_folds: int, seed: int = 0) -> np.ndarray:
  """int [N] in [0, num_folds): every (slot, success) group dealt out evenly, in random order."""
  rng = np.random.default_rng(seed)
  folds = np.zeros(len(examples), np.int32)
  for s in np.unique(examples.slot):
    for y in (True, False):
      idx = rng.permutation(np.flatnonzero((examples.slot == s) & (examples.success == y)))
      folds[idx] = np.arange(len(idx)) % num_folds
  return folds


def _fold_head_logits(params, x):
  """Every fold head's logits [S, B, K] for head inputs x [S, B, F] (a batch per slot)."""
  h = jax.nn.relu(jnp.einsum("sbf,sfkh->sbkh", x, params["w1"]) + params["b1"][:, None])
  return jnp.einsum("sbkh,skh->sbk", h, params["w2"]) + params["b2"][:, None]


@functools.partial(jax.jit, donate_argnames=("params", "opt_state"))
def _fold_heads_step(params, opt_state, features, labels, weights, folds, idx, learning_rate,
                     sparsity, mask):
  """One Adam step of every slot's fold heads on its own batch: rows idx [S, B] of
  features [N, F], labels / weights [N, S] and folds [N] (all on the device). Fold head k
  of slot column j reads feature f only where mask [S, F, K] is 1."""
  num_folds = params["b2"].shape[-1]
  x = features[idx]
  y = jnp.take_along_axis(labels.T, idx, axis=1)
  w = jnp.take_along_axis(weights.T, idx, axis=1)
  # Fold k's head learns from every example outside fold k.
  use = (folds[idx][..., None] != jnp.arange(num_folds)) if num_folds > 1 else \
      jnp.ones((*idx.shape, 1), bool)
  use = use.astype(jnp.float32) * w[..., None]

  def loss_fn(p):
    p = {**p, "w1": p["w1"] * mask[..., None]}
    losses = optax.sigmoid_binary_cross_entropy(_fold_head_logits(p, x), y[..., None])
    # Each (slot, fold) head's mean loss over its examples, plus its own group lasso: the
    # heads are trained as if apart.
    per_head = jnp.sum(losses * use, axis=1) / jnp.maximum(jnp.sum(use, axis=1), 1e-6)
    rows = jnp.sqrt(jnp.sum(p["w1"] ** 2, axis=3) + 1e-12)  # [S, F, K]
    return jnp.sum(per_head) + sparsity * jnp.sum(rows)

  grads = jax.grad(loss_fn)(params)
  opt_state.hyperparams["learning_rate"] = learning_rate
  updates, opt_state = OPTIMIZER.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def balanced_log_loss(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
  """Each column's weighted sigmoid cross-entropy [S] of logits [N, S] against labels [N, S]
  (`targets`' class-balanced weights: both classes count half, whatever their counts)."""
  losses = np.where(labels > 0.5, np.logaddexp(0.0, -logits), np.logaddexp(0.0, logits))
  return (losses * weights).sum(0) / np.maximum(weights.sum(0), 1e-12)


# A refit keeps the inputs whose weights' norm is at least this fraction of the largest.
SUPPORT_FRACTION = 0.05


def head_support(w1: np.ndarray, num_folds: int, fraction: float = SUPPORT_FRACTION
                 ) -> np.ndarray:
  """bool [S, F, num_folds]: the inputs each fold head reads, from packed heads' w1
  [S, F, num_folds * h]: those whose row norm is at least `fraction` of the head's largest
  (the group lasso drives the others to about zero, but Adam leaves them jittering)."""
  norms = np.linalg.norm(w1.reshape(*w1.shape[:2], num_folds, -1), axis=3)
  return norms >= fraction * norms.max(axis=1, keepdims=True)


def fit_fold_heads_selected(features: np.ndarray, labels: np.ndarray, weights: np.ndarray,
                            folds: np.ndarray, num_folds: int, hidden: int, steps: int,
                            batch_size: int, learning_rate: float, seed: int,
                            sparsities: Sequence[float], columns: np.ndarray | None = None,
                            relax: float = 0.0) -> tuple[dict, np.ndarray, dict]:
  """`fit_fold_heads` at each group-lasso weight in `sparsities` (num_folds >= 2) and, with
  `relax` > 0, each of those fits refitted on the inputs it kept with the weight times
  `relax`; every slot column keeps the candidate whose out-of-fold logits have the lowest
  class-balanced log loss (cross-validated: the held-out examples are not used).

  With a few hundred positives a head can fit a task through features that merely co-occur
  with success in the examples (tabletop push: the gripper is near the pushed cube in 95% of
  the positives, and pushes that ended with the gripper elsewhere were missed); a stronger
  penalty prefers the few features that decide the task, but a task that needs more loses
  from it, so each slot's own out-of-fold loss decides. The penalty that selects the inputs
  also shrinks the weights on them, and a success predicate is a sharp threshold (tabletop
  push: cubes within 6.7 cm, to the millimetre) that needs large weights; the refit (the
  "relaxed" group lasso) keeps the selection and eases the shrinkage. Each fold head's
  inputs come from its own first fit, which never saw its fold, so its out-of-fold logits
  stay honest. Returns (packed heads, their out-of-fold logits [N, S], per column [S]:
  {"sparsity": the weight that selected the inputs, "relaxed": whether refitted}).
  """
  if num_folds < 2:
    raise ValueError("choosing the sparsity needs out-of-fold logits (num_folds >= 2)")
  best = None
  fit_args = (features, labels, weights, folds, num_folds, hidden, steps, batch_size,
              learning_rate, seed)
  for sparsity in sparsities:
    lasso = fit_fold_heads(*fit_args, sparsity, columns)
    candidates = [(*lasso, False)]
    if relax > 0 and sparsity > 0:
      support = head_support(lasso[0]["w1"], num_folds)
      candidates.append((*fit_fold_heads(*fit_args, sparsity * relax, columns, support), True))
    for packed, oof, relaxed in candidates:
      loss = balanced_log_loss(oof, labels, weights)
      info = {"sparsity": np.full(labels.shape[1], float(sparsity)),
              "relaxed": np.full(labels.shape[1], relaxed)}
      if best is not None:  # Keep, per column, the earlier fit wherever it was as good.
        keep = best[2] <= loss
        packed = {k: np.where(keep.reshape(-1, *[1] * (v.ndim - 1)), best[0][k], v)
                  for k, v in packed.items()}
        oof, loss = np.where(keep, best[1], oof), np.where(keep, best[2], loss)
        info = {k: np.where(keep, best[3][k], v) for k, v in info.items()}
      best = (packed, oof, loss, info)
  return best[0], best[1], best[3]


def fit_fold_heads(features: np.ndarray, labels: np.ndarray, weights: np.ndarray,
                   folds: np.ndarray, num_folds: int, hidden: int, steps: int,
                   batch_size: int, learning_rate: float, seed: int = 0,
                   sparsity: float = 0.0, columns: np.ndarray | None = None,
                   support: np.ndarray | None = None) -> tuple[dict, np.ndarray | None]:
  """Cross-fitted slot heads on fixed head inputs: `num_folds` fresh one-hidden-layer heads
  per slot column, head k trained on the examples outside fold k.

  Their mean is the slot's head (an ensemble of the folds' heads, packed as one head with
  num_folds * hidden units), and each example's out-of-fold logit (from the head that never
  saw it) calibrates the slot's cut on every training example instead of the few held out.
  With num_folds == 1 there is one head trained on everything and no out-of-fold logits.
  Every slot draws its own batches from its own examples (weight > 0), whose weights are
  rescaled to mean 1.

  Args:
    features: head inputs [N, F] (the frozen torso's `head_inputs`).
    labels, weights: [N, S] for the S slot columns trained (see `targets`).
    folds: int [N], each example's fold (`fold_assignment`).
    sparsity: group-lasso weight on each head's input rows.
    columns: if given, the heads read only these features (the others get zero weights).
    support: if given, bool [S, F, num_folds]: fold head k of slot column j reads only the
      features where support[j, :, k] (and that are in `columns`).

  Returns:
    ({"w1": [S, F, K*h], "b1": [S, K*h], "w2": [S, K*h, 1], "b2": [S]} in SlotHeads' layout,
     out-of-fold logits [N, S] or None).
  """
  n, f = features.shape
  s = labels.shape[1]
  columns = np.arange(f) if columns is None else np.asarray(columns)
  if support is None:
    mask = np.ones((s, len(columns), num_folds), np.float32)
  else:  # Only the features some head reads are gathered; the mask does the rest.
    columns = columns[support[:, columns].any(axis=(0, 2))]
    mask = support[:, columns].astype(np.float32)
  members = [np.flatnonzero(weights[:, j] > 0) for j in range(s)]  # Each slot's examples.
  if any(len(m) == 0 for m in members):
    raise ExamplesError("a slot has no examples that carry a training signal")
  weights = weights / np.array([weights[m, j].mean() for j, m in enumerate(members)])
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  params = {"w1": nn_init.lecun_normal(in_axis=1, out_axis=3, batch_axis=(0, 2))(
                k1, (s, len(columns), num_folds, hidden)),
            "b1": jnp.zeros((s, num_folds, hidden)),
            "w2": nn_init.lecun_normal(in_axis=2, out_axis=(), batch_axis=(0, 1))(
                k2, (s, num_folds, hidden)),
            "b2": jnp.zeros((s, num_folds))}
  opt_state = OPTIMIZER.init(params)
  schedule = optax.cosine_decay_schedule(learning_rate, max(steps, 1), alpha=0.05)
  rng = np.random.default_rng(seed)
  on_device = [jnp.asarray(a) for a in (features[:, columns], labels, weights, folds)]
  mask = jnp.asarray(mask)
  for step in range(steps):
    idx = np.stack([m[rng.integers(0, len(m), batch_size)] for m in members])
    params, opt_state = _fold_heads_step(params, opt_state, *on_device, jnp.asarray(idx),
                                         jnp.float32(schedule(step)), jnp.float32(sparsity),
                                         mask)
  params = {**params, "w1": params["w1"] * mask[..., None]}
  oof = None
  if num_folds > 1:
    x = on_device[0]
    logits = np.concatenate([np.asarray(_fold_head_logits(
        params, jnp.broadcast_to(x[i:i + 1024], (s, *x[i:i + 1024].shape))))
        for i in range(0, n, 1024)], axis=1)  # [S, N, K]
    oof = np.take_along_axis(logits, folds[None, :, None].repeat(s, 0), axis=2)[..., 0].T
  w1 = np.zeros((s, f, num_folds * hidden), np.float32)
  w1[:, columns] = np.asarray(params["w1"]).reshape(s, len(columns), num_folds * hidden)
  packed = {"w1": w1, "b1": np.asarray(params["b1"]).reshape(s, num_folds * hidden),
            # The mean of the folds' logits: their output weights and biases, divided by K.
            "w2": np.asarray(params["w2"]).reshape(s, num_folds * hidden, 1) / num_folds,
            "b2": np.asarray(params["b2"]).mean(axis=1)}
  return packed, oof
