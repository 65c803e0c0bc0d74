"""Task-conditioned Q-networks Q(s, a, task) -> logit, for state and image observations.

Every network has two halves so that CEM, which scores many actions per state, pays for
the observation only once:

- `torso(observation, task) -> features`: runs once per state.
- `head(features, action) -> logit`: runs per action; `action` is [B, A] or [B, N, A].

In the "split" architecture (ours) the torso encodes the observation and task and ends in
the observation's half of the merge layer; the head adds the action's half (QT-Opt merges
the action into the torso's features), then a small MLP. Per CEM sample that costs about
merge_width * (A + head widths) multiply-adds instead of the whole network.

In the "whole" architecture (the reference) the torso only gathers the inputs and the
head runs the whole network, convolutions included, on (observation, action) per sample.

Q = sigmoid(logit) lies in [0, 1]. Task slots index a learned embedding with `max_tasks`
rows, so a new task needs no new network shape.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from learners.config import NetworkConfig
from mtopt.specs import EnvSpec

IMAGE_KEY = "image"


@jax.custom_vjp
def _matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return x @ kernel


def _matmul_fwd(x, kernel):
  return x @ kernel, (x, kernel)


def _matmul_bwd(residuals, g):
  x, kernel = residuals
  rows = x.reshape((-1, x.shape[-1]))
  g_rows = g.reshape((-1, g.shape[-1]))
  # XLA:CPU runs a dot that reads an operand transposed (x^T g, g kernel^T) up to 2x slower
  # than a plain one (256^3: 310 vs 140 us); the barrier keeps the transposes as copies
  # instead of letting XLA fold them back into the dots.
  rows_t, kernel_t = jax.lax.optimization_barrier((rows.T, kernel.T))
  return (g_rows @ kernel_t).reshape(x.shape), rows_t @ g_rows


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


class Dense(nn.Module):
  """x [..., in] -> x @ kernel + bias [..., features]; the parameters of `nn.Dense`, with a
  backward pass of plain dots (see `_matmul_bwd`)."""

  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
    return _matmul(x, kernel) + bias


class ImageEncoder(nn.Module):
  """uint8 images [..., H, W, C] -> features [..., image_embedding_dim]; small for CPU."""

  channels: Sequence[int]
  embedding_dim: int

  @nn.compact
  def __call__(self, image: jax.Array) -> jax.Array:
    lead = image.shape[:-3]
    x = image.reshape((-1, *image.shape[-3:])).astype(jnp.float32) / 255.0
    for c in self.channels:
      x = nn.relu(nn.Conv(c, (3, 3), strides=(2, 2), padding="SAME")(x))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(Dense(self.embedding_dim)(x))
    return x.reshape((*lead, self.embedding_dim))


# Up to this many action dimensions the action's half of the merge is a fused multiply-add
# per dimension rather than a dot with a tiny contraction (which XLA:CPU runs slowly).
_ELEMENTWISE_MERGE_MAX_DIMS = 8


class ActionMerge(nn.Module):
  """action [..., A] -> action @ kernel [..., features]; the parameters of `nn.Dense(features,
  use_bias=False)`, so checkpoints are interchangeable. For a small A it is A broadcast
  multiply-adds that XLA fuses with the merge's add and ReLU: one pass over [B, N, width]
  instead of a K=A matmul plus a separate add."""

  features: int

  @nn.compact
  def __call__(self, action: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (action.shape[-1], self.features), jnp.float32)
    if action.shape[-1] > _ELEMENTWISE_MERGE_MAX_DIMS:
      return action @ kernel
    out = action[..., :1] * kernel[0]
    for i in range(1, action.shape[-1]):
      out = out + action[..., i:i + 1] * kernel[i]
    return out


class Output(nn.Module):
  """x [..., H] -> logit [...]; the parameters of `nn.Dense(1)`. A multiply and a row sum:
  XLA:CPU fuses that into one reduction, where a dot with one output column is a slow loop."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], 1), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (1,), jnp.float32)
    return jnp.sum(x * kernel[:, 0], axis=-1) + bias[0]


def canonical_action(action: jax.Array, terminate_dim: int | None) -> jax.Array:
  """Where the terminate dimension is > 0, the action becomes the one-hot terminate action.

  The env ignores the other dimensions when it terminates, so Q(s, terminate) must not
  depend on them. Without this CEM found terminate actions whose irrelevant dimensions
  the network scored high (tabletop reach: terminating 3-5 cm from the cube at Q 0.95-1.0).
  """
  if terminate_dim is None:
    return action
  stop = action[..., terminate_dim:terminate_dim + 1] > 0
  onehot = (jnp.arange(action.shape[-1]) == terminate_dim).astype(action.dtype)
  return jnp.where(stop, onehot, action)


def select_terminate(stop_logit: jax.Array, action: jax.Array, logits: jax.Array,
                     terminate_dim: int) -> jax.Array:
  """The terminate head's logit [B] where `action` terminates, else the shared head's
  `logits` ([B] or [B, N]) for it."""
  stop = action[..., terminate_dim] > 0
  return jnp.where(stop, stop_logit[:, None] if action.ndim == 3 else stop_logit, logits)


class QNetwork(nn.Module):
  """Q(s, a, task) as a logit; see the module docstring for the split."""

  state_keys: tuple[str, ...]
  has_image: bool
  max_tasks: int
  config: NetworkConfig
  terminate_dim: int | None = None  # See `canonical_action`.
  action_dim: int = 0  # The behaviour head's output width (`config.behaviour_sizes`).

  def setup(self):
    c = self.config
    self.task_embedding = nn.Embed(self.max_tasks, c.task_embedding_dim)
    if self.has_image:
      self.image_encoder = ImageEncoder(c.conv_channels, c.image_embedding_dim)
    if c.architecture == "split":
      self.torso_layers = [Dense(s) for s in c.torso_sizes]
      if c.layer_norm:
        self.torso_norms = [nn.LayerNorm() for _ in c.torso_sizes]
      self.merge_observation = Dense(c.merge_width)
      self.merge_action = ActionMerge(c.merge_width)
      self.head_layers = [Dense(s) for s in c.head_sizes]
    else:
      sizes = (*c.torso_sizes, c.merge_width, *c.head_sizes)
      self.whole_layers = [Dense(s) for s in sizes]
    self.output = Output()
    if c.behaviour_sizes:
      self.behaviour_layers = [Dense(s) for s in c.behaviour_sizes]
      self.behaviour_output = Dense(self.action_dim * c.behaviour_modes)
    if self._has_terminate_head:
      self.terminate_layers = [Dense(s) for s in c.terminate_sizes]
      self.terminate_output = Output()

  @property
  def _has_terminate_head(self) -> bool:
    return bool(self.config.terminate_sizes) and self.terminate_dim is not None

  def _vector(self, observation: dict) -> list[jax.Array]:
    parts = []
    for k in self.state_keys:
      v = jnp.asarray(observation[k], jnp.float32)
      parts.append(v.reshape((v.shape[0], -1)))
    return parts

  def _embed_task(self, task: jax.Array) -> jax.Array:
    # one_hot @ table: the same rows as a gather, but its gradient is a small matmul where
    # the gather's is a scatter-add that XLA:CPU runs as a serial loop over the batch.
    table = self.task_embedding.embedding
    return jax.nn.one_hot(task, self.max_tasks, dtype=table.dtype) @ table

  def torso(self, observation: dict, task: jax.Array):
    """Per-state features: [B, merge_width] ("split") or the gathered inputs ("whole")."""
    return self._torso(observation, task)[0]

  def torso_and_behaviour(self, observation: dict, task: jax.Array):
    """(`torso`, `behaviour`) with the observation encoded once for both (split)."""
    if self.config.architecture == "whole":
      return self.torso(observation, task), self.behaviour(observation, task)
    features, heads_input = self._torso(observation, task)
    return features, self._behaviour_of(heads_input)

  def _torso(self, observation: dict, task: jax.Array):
    """(features, what the behaviour and terminate heads read: the torso's inputs, i.e.
    the state vectors and task embedding [and image features], or with `heads_input`
    "torso" its last hidden layer)."""
    embedding = self._embed_task(task)
    vector = jnp.concatenate([*self._vector(observation), embedding], axis=-1)
    if self.config.architecture == "whole":
      features = {"vector": vector}
      if self.has_image:
        features["image"] = observation[IMAGE_KEY]
      # Only a terminate head needs the image encoded once per state here.
      image = [self.image_encoder(observation[IMAGE_KEY])] \
          if self.has_image and self._has_terminate_head else []
      inputs = jnp.concatenate([vector, *image], axis=-1)
      return self._with_terminate(features, inputs), inputs
    parts = [vector]
    if self.has_image:
      parts.append(self.image_encoder(observation[IMAGE_KEY]))
    x = inputs = jnp.concatenate(parts, axis=-1)
    for i, layer in enumerate(self.torso_layers):
      x = layer(x)
      x = nn.relu(self.torso_norms[i](x) if self.config.layer_norm else x)
    features = self.merge_observation(x)  # Pre-activation: the head adds the action's half.
    heads_input = x if self.config.heads_input == "torso" else inputs
    return self._with_terminate(features, heads_input), heads_input

  def _with_terminate(self, features, heads_input):
    """(features, Q(s, terminate) logit [B]) where the network has a terminate head.

    Terminating is being judged at s, so its Q is a success classifier of the state alone.
    Its own MLP keeps that classifier (trained on every row where state labels are given,
    `learners.learning`) from competing with the per-sample head for the torso's width.
    """
    if not self._has_terminate_head:
      return features
    # Its gradient stops at what it shares (task embedding, image features, or the torso's
    # layer): on every row it would otherwise outweigh what the Q-head and the behaviour
    # head need of them.
    x = jax.lax.stop_gradient(heads_input)
    for layer in self.terminate_layers:
      x = nn.relu(layer(x))
    return features, self.terminate_output(x)

  def head(self, features, action: jax.Array) -> jax.Array:
    """Logits [B] for action [B, A], or [B, N] for action [B, N, A]."""
    per_sample = action.ndim == 3
    if isinstance(features, tuple):  # A terminate head's logit scores terminating.
      features, stop_logit = features
      return select_terminate(stop_logit, action, self.head(features, action),
                              self.terminate_dim)
    action = canonical_action(action, self.terminate_dim)
    if self.config.architecture == "split":
      if per_sample:
        features = features[:, None, :]
      x = nn.relu(features + self.merge_action(action))
      for layer in self.head_layers:
        x = nn.relu(layer(x))
      return self.output(x)
    # Reference: the whole network, convolutions included, per (state, action).
    def tile(x):
      return jnp.broadcast_to(x[:, None], (x.shape[0], action.shape[1], *x.shape[1:])) \
          if per_sample else x
    parts = [tile(features["vector"]), action]
    if self.has_image:
      parts.append(self.image_encoder(tile(features["image"])))
    x = jnp.concatenate(parts, axis=-1)
    for layer in self.whole_layers:
      x = nn.relu(layer(x))
    return self.output(x)

  def behaviour(self, observation: dict, task: jax.Array) -> jax.Array:
    """The behaviour head's action in [-1, 1]^A (tanh; `learning` maps it to the bounds),
    [B, A], or its K actions [B, K, A] with `behaviour_modes` K > 1: its own MLP over the
    state vectors and the task embedding (and the image features), or over the torso's last
    hidden layer (`heads_input`)."""
    if self.config.heads_input == "torso":
      return self.torso_and_behaviour(observation, task)[1]
    vector = jnp.concatenate([*self._vector(observation), self._embed_task(task)], axis=-1)
    image = [self.image_encoder(observation[IMAGE_KEY])] if self.has_image else []
    return self._behaviour_of(jnp.concatenate([vector, *image], axis=-1))

  def _behaviour_of(self, x: jax.Array) -> jax.Array:
    for layer in self.behaviour_layers:
      x = nn.relu(layer(x))
    out = jnp.tanh(self.behaviour_output(x))
    modes = self.config.behaviour_modes
    return out if modes == 1 else out.reshape((*out.shape[:-1], modes, self.action_dim))

  def __call__(self, observation: dict, task: jax.Array, action: jax.Array) -> jax.Array:
    if self.config.behaviour_sizes and self.is_initializing():
      self.behaviour(observation, task)  # Creates its parameters too.
    return self.head(self.torso(observation, task), action)


def make_q_network(env_spec: EnvSpec, max_tasks: int, config: NetworkConfig) -> QNetwork:
  """Builds the Q-network for `env_spec`'s observations: an image (if any) plus vectors."""
  if max_tasks < 1:
    raise ValueError(f"max_tasks must be >= 1, got {max_tasks}")
  obs = dict(env_spec.observation)
  has_image = IMAGE_KEY in obs
  if has_image and len(obs[IMAGE_KEY].shape) != 3:
    raise ValueError(f"observation {IMAGE_KEY!r} must be [H, W, C], got {obs[IMAGE_KEY].shape}")
  state_keys = tuple(sorted(k for k in obs if k != IMAGE_KEY))
  if not state_keys and not has_image:
    raise ValueError("env spec has no observations")
  return QNetwork(state_keys=state_keys, has_image=has_image, max_tasks=max_tasks,
                  config=config, terminate_dim=env_spec.terminate_dim,
                  action_dim=int(env_spec.action.shape[-1]))


def dummy_inputs(env_spec: EnvSpec, batch_size: int = 1):
  """Zero (observation, task, action) with a batch axis, for `init`."""
  obs = {k: jnp.zeros((batch_size, *s.shape), s.dtype) for k, s in env_spec.observation.items()}
  return (obs, jnp.zeros((batch_size,), jnp.int32),
          jnp.zeros((batch_size, *env_spec.action.shape), jnp.float32))


def init_params(network: QNetwork, env_spec: EnvSpec, key: jax.Array):
  """Fresh parameters for `network`."""
  return network.init(key, *dummy_inputs(env_spec))


def q_logits(network: QNetwork, params, observation: dict, task, action) -> jax.Array:
  """Logits [B] for one action per state."""
  return network.apply(params, observation, task, action)


def encode(network: QNetwork, params, observation: dict, task):
  """Per-state features (run once per state)."""
  return network.apply(params, observation, task, method=QNetwork.torso)


def encode_with_behaviour(network: QNetwork, params, observation: dict, task, minimum,
                          maximum):
  """(`encode`, the behaviour head's actions [B, A] (or [B, K, A], `behaviour_modes`)
  within [minimum, maximum]), in one pass over the observation: the image is encoded once
  for both."""
  features, unit = network.apply(params, observation, task,
                                 method=QNetwork.torso_and_behaviour)
  return features, minimum + (unit + 1.0) * 0.5 * (maximum - minimum)


def head_logits(network: QNetwork, params, features, action) -> jax.Array:
  """Logits for actions [B, A] or [B, N, A] from encoded features."""
  return network.apply(params, features, action, method=QNetwork.head)


def head_and_shared_logits(network: QNetwork, params, features,
                           action) -> tuple[jax.Array, jax.Array]:
  """(`head_logits`, the shared head's logits for the same actions), the shared head run
  once for both: they differ only where a terminate head scores terminating actions."""
  if not isinstance(features, tuple):
    logits = head_logits(network, params, features, action)
    return logits, logits
  shared = head_logits(network, params, features[0], action)
  return select_terminate(features[1], action, shared, network.terminate_dim), shared
