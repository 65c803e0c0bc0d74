"""The multi-task success classifier: a final observation -> one success logit per task slot.

One forward pass scores an observation for all `max_tasks` slots. The network is a shared
torso (a small conv net per image plus the state vector, then an MLP) and one small MLP head
per slot, stored as stacked arrays with the slot as the leading axis. Keeping each slot's
head separate is what lets `add_task` train only the new slot's parameters while every other
slot's outputs stay bit-for-bit the same.

State inputs are normalised inside the network with statistics kept in the `norm`
collection (set from training data once, then fixed), so a saved detector carries them.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mtopt.specs import EnvSpec


def is_image(shape: Sequence[int], dtype) -> bool:
  return np.dtype(dtype) == np.uint8 and len(shape) == 3 and shape[-1] in (1, 3)


def split_keys(spec: EnvSpec) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(image keys, state keys) of an env spec, sorted; anything else is an error."""
  images, states = [], []
  for name, s in sorted(spec.observation.items()):
    if is_image(s.shape, s.dtype):
      images.append(name)
    elif len(s.shape) == 1 and np.issubdtype(s.dtype, np.floating):
      states.append(name)
    else:
      raise ValueError(f"observation {name!r}: the detector takes uint8 images [H, W, C] or "
                       f"float vectors [D], got {s.dtype} {s.shape}")
  return tuple(images), tuple(states)


class ImageEncoder(nn.Module):
  """uint8 [B, H, W, C] -> features [B, out]; strided 3x3 convs, small enough for CPU."""

  channels: Sequence[int] = (16, 32, 32, 64)
  out: int = 256

  @nn.compact
  def __call__(self, image):
    x = image.astype(jnp.float32) / 255.0
    for c in self.channels:
      x = nn.relu(nn.Conv(c, (3, 3), strides=(2, 2), padding="SAME")(x))
    x = x.reshape(x.shape[0], -1)
    return nn.relu(nn.Dense(self.out)(x))


class SlotHeads(nn.Module):
  """features [B, F] -> logits [B, num_slots]; one independent 1-hidden-layer MLP per slot."""

  num_slots: int
  hidden: int = 64

  @nn.compact
  def __call__(self, x):
    if isinstance(x, Mapping):  # Precomputed head inputs {"features": [B, F]}.
      x = x["features"]
    f = x.shape[-1]
    init = nn.initializers.lecun_normal(batch_axis=(0,))
    w1 = self.param("w1", init, (self.num_slots, f, self.hidden))
    b1 = self.param("b1", nn.initializers.zeros, (self.num_slots, self.hidden))
    w2 = self.param("w2", init, (self.num_slots, self.hidden, 1))
    b2 = self.param("b2", nn.initializers.zeros, (self.num_slots,))
    h = nn.relu(jnp.einsum("bf,sfh->bsh", x, w1) + b1)
    return jnp.einsum("bsh,sho->bso", h, w2)[..., 0] + b2


class SuccessClassifier(nn.Module):
  """Observation dict (batched) -> success logits [B, max_tasks].

  Attributes:
    image_keys: observation names fed through a conv encoder.
    state_keys: observation names that are float vectors (normalised, then concatenated).
    max_tasks: number of output slots.
    torso: hidden sizes of the shared MLP.
    head_hidden: hidden size of each slot's head (of each fold's head).
    head_folds: heads per slot, packed as one head of head_folds * head_hidden units whose
      logit is their mean (the detector trains them cross-fitted; see training.fit_fold_heads).
    conv_channels: channels of the image encoder's strided convs.
    state_pairs: also feed log(|x_i - x_j| + 1e-3) for every pair of a state vector's
      entries. Success predicates are mostly thresholds on small distances (gripper to
      object, object to object); the log gives those millimetre-scale differences the
      resolution that a plain normalised input lacks (measured on tabletop: reach and push
      precision rose from ~0.8 to ~0.9).
    state_distances: for each d, also feed log(||x[i:i+d] - x[j:j+d]|| + 1e-3) for every
      two runs of d consecutive entries (`window_log_distances`): a distance between two
      points (d=3) or in the table's plane (d=2) is then one input, where the pairwise
      differences give it only per axis (tabletop push predicates are planar distances).
    state_squares: also feed the square of each normalised state entry: a predicate "the
      gripper within r of a point offset from an object" is a sphere in the relative
      coordinates, which is one linear threshold on the entries and their squares, where a
      ReLU net fits it piecewise from the few hundred positives (reach precision).
    feature_squash: if > 0, every normalised state feature z becomes squash(z) = c *
      tanh(z / c): unchanged near the data, bounded far from it. A rare state (a cube
      knocked onto its side gives quaternion entries and their derived features 20-30
      standard deviations out) then cannot drive the logits anywhere by extrapolation.
  """

  image_keys: tuple[str, ...]
  state_keys: tuple[str, ...]
  max_tasks: int
  torso: tuple[int, ...] = (256, 256)
  head_hidden: int = 64
  head_folds: int = 1
  conv_channels: tuple[int, ...] = (16, 32, 32, 64)
  state_pairs: bool = False
  state_distances: tuple[int, ...] = ()
  state_squares: bool = False
  feature_squash: float = 0.0

  @nn.compact
  def __call__(self, obs: Mapping[str, jax.Array], head_inputs: bool = False,
               with_torso: bool = True) -> jax.Array:
    """Logits [B, max_tasks]; with head_inputs, the heads' input features [B, F] instead
    (what a frozen torso gives a new head: it is computed once when a task is added), and
    with_torso=False as well, only the state features that skip the torso (the last F - T
    of them, T = torso[-1]): what heads that read no torso unit need."""
    parts, states = [], []
    for k in self.image_keys:
      parts.append(ImageEncoder(self.conv_channels, name=f"encoder_{k}")(obs[k]))
    for k in self.state_keys:
      x = obs[k].astype(jnp.float32)
      feats = state_features(k, x, self.state_pairs, self.state_distances)
      for name, f in feats.items():
        d = f.shape[-1]
        mean = self.variable("norm", f"{name}_mean", jnp.zeros, (d,), jnp.float32)
        std = self.variable("norm", f"{name}_std", jnp.ones, (d,), jnp.float32)
        z = (f - mean.value) / std.value
        if self.feature_squash > 0:
          z = squash(z, self.feature_squash)
        states.append(z)
        if self.state_squares and name == k:
          states.append(z * z)
    if head_inputs and not with_torso and self.torso and states:
      return jnp.concatenate(states, axis=-1)
    h = jnp.concatenate(parts + states, axis=-1)
    for i, n in enumerate(self.torso):
      h = nn.relu(nn.Dense(n, name=f"torso_{i}")(h))
    # The raw (normalised) state skips the torso, so a head trained on a frozen torso can
    # still read state features that the old tasks never needed (without a torso, the
    # heads read the inputs once).
    head_in = jnp.concatenate([h] + states, axis=-1) if self.torso else h
    if head_inputs:
      return head_in
    return SlotHeads(self.max_tasks, self.head_hidden * self.head_folds, name="heads")(head_in)


def squash(z, limit: float):
  """limit * tanh(z / limit): ~z within a few units, never beyond +-limit; monotone, so
  every threshold on z is still a threshold on the squashed value."""
  return limit * jnp.tanh(z / limit)


def state_features(name: str, x, pairs: bool, distances: Sequence[int] = ()) -> dict:
  """The inputs made from one state vector `name` [..., D]: itself, then (optionally) its
  pairwise log differences ("{name}_pairs") and its window log distances
  ("{name}_dist{d}" for each d in `distances`). Works on jax and numpy arrays."""
  feats = {name: x}
  if pairs:
    feats[f"{name}_pairs"] = pairwise_log_distances(x)
  for d in distances:
    feats[f"{name}_dist{d}"] = window_log_distances(x, d)
  return feats


def window_log_distances(x, d: int):
  """[..., D] -> [..., P]: log(||x[i:i+d] - x[j:j+d]|| + 1e-3) for every i < j <= D - d.

  Positions in a state vector are runs of consecutive coordinates (x, y[, z]); distances
  between any two runs of length d include every point-to-point distance (d=3) and every
  distance in the plane of the first two coordinates (d=2), whatever the layout."""
  i, j = window_pairs(x.shape[-1], d)
  xp = jnp if isinstance(x, jax.Array) else np
  diff = x[..., i] - x[..., j]  # [..., P, d]
  return xp.log(xp.sqrt(xp.sum(diff * diff, axis=-1)) + 1e-3)


def window_pairs(dim: int, d: int) -> tuple[np.ndarray, np.ndarray]:
  """Index arrays [P, d] of the windows compared by window_log_distances."""
  starts = np.arange(dim - d + 1)
  a, b = np.triu_indices(len(starts), k=1)
  offs = np.arange(d)
  return starts[a][:, None] + offs, starts[b][:, None] + offs


def pairwise_log_distances(x: jax.Array) -> jax.Array:
  """[..., D] -> [..., D(D-1)/2]: log(|x_i - x_j| + 1e-3) for i < j (1e-3: ~1 mm)."""
  i, j = np.triu_indices(x.shape[-1], k=1)
  return jnp.log(jnp.abs(x[..., i] - x[..., j]) + 1e-3)


def make_classifier(spec: EnvSpec, max_tasks: int, torso: Sequence[int] = (256, 256),
                    head_hidden: int = 64, head_folds: int = 1,
                    conv_channels: Sequence[int] = (16, 32, 32, 64),
                    state_pairs: bool = False, state_distances: Sequence[int] = (),
                    state_squares: bool = False, feature_squash: float = 0.0
                    ) -> SuccessClassifier:
  """The classifier for observations of `spec`, with `max_tasks` slots."""
  if not isinstance(max_tasks, int) or max_tasks < 1:
    raise ValueError(f"max_tasks must be a positive int, got {max_tasks!r}")
  images, states = split_keys(spec)
  if not images and not states:
    raise ValueError("the env spec has no observations for the detector")
  if int(head_folds) < 1:
    raise ValueError(f"head_folds must be >= 1, got {head_folds}")
  return SuccessClassifier(images, states, max_tasks, tuple(torso), int(head_hidden),
                           int(head_folds), tuple(conv_channels), bool(state_pairs),
                           tuple(int(d) for d in state_distances), bool(state_squares),
                           float(feature_squash))


def dummy_observation(spec: EnvSpec, batch: int = 1) -> dict[str, np.ndarray]:
  return {k: s.zeros(batch) for k, s in spec.observation.items()}
