"""Offline baselines beside mtopt's Q-learning: behaviour cloning, filtered BC and IQL.

Each trains a deterministic task-conditioned policy pi(s, task) on the same `Batch`es the
QT-Opt learner consumes, so a comparison changes only the learner:

- bc: min ||pi(s) - a||^2 over every row.
- filtered_bc: the same loss and code; the caller feeds it only successful episodes' rows.
- iql: Implicit Q-Learning (Kostrikov et al. 2021). V(s) is an upper expectile of the
  target Q(s, a) over the data's actions, so Q's target r + gamma * discount * V(s') never
  queries an action the data lacks; the policy is extracted by advantage-weighted
  regression, in its deterministic form exp(beta * (Q(s, a) - V(s))) * ||pi(s) - a||^2.

The policy's output is tanh-squashed into the action bounds; acting snaps the binary
(`discrete_dims`) dimensions to their bounds, as CEM does.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterable, Iterator, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from learners import networks
from learners.config import NetworkConfig
from mtopt.batch import Batch, check_task_slots
from mtopt.config import ConfigError
from mtopt.specs import EnvSpec

METHODS = ("bc", "filtered_bc", "iql")
_IMAGE = NetworkConfig()  # Images get the Q-network's default encoder.

# name -> (valid?, what is valid), checked for every BaselineConfig.
_VALID = {"batch_size": (lambda v: v >= 1, ">= 1"), "learning_rate": (lambda v: v > 0, "> 0"),
          "task_embedding_dim": (lambda v: v >= 1, ">= 1"),
          "gamma": (lambda v: 0 <= v < 1, "in [0, 1)"),
          "expectile": (lambda v: 0 < v < 1, "in (0, 1)"),
          "temperature": (lambda v: v >= 0, ">= 0"),
          "polyak_tau": (lambda v: 0 < v <= 1, "in (0, 1]"),
          "max_weight": (lambda v: v > 0, "> 0")}


@dataclasses.dataclass(frozen=True)
class BaselineConfig:
  """Baseline settings (IQL's defaults are the paper's for MuJoCo locomotion).

  Attributes:
    method: "bc", "filtered_bc" (bc's loss on the rows the caller filters) or "iql".
    batch_size: transitions per update; the caller's sampler draws batches this size.
    learning_rate: Adam step size of every network (policy, Q, V).
    hidden_sizes: ReLU widths of every network's MLP.
    task_embedding_dim: width of the learned task-slot embedding (`max_tasks` rows).
    gamma: discount; multiplied by the batch's per-row discount (0 at termination).
    expectile: V's expectile of Q (0.5: the mean; towards 1: the max over data actions).
    temperature: AWR's beta; 0 weights every row equally (BC).
    polyak_tau: the target Qs move this far towards the online ones per step.
    max_weight: AWR weights are clipped here, so a few high-advantage rows cannot dominate.
  """

  method: str = "bc"
  batch_size: int = 256
  learning_rate: float = 3e-4
  hidden_sizes: tuple[int, ...] = (256, 256)
  task_embedding_dim: int = 32
  gamma: float = 0.99
  expectile: float = 0.7
  temperature: float = 3.0
  polyak_tau: float = 0.005
  max_weight: float = 100.0

  def __post_init__(self):
    if self.method not in METHODS:
      raise ConfigError(f"baseline.method must be one of {METHODS}, got {self.method!r}")
    sizes = tuple(int(s) for s in self.hidden_sizes)
    if not sizes or any(s < 1 for s in sizes):
      raise ConfigError(f"baseline.hidden_sizes must be positive widths, got {sizes}")
    object.__setattr__(self, "hidden_sizes", sizes)
    for name, (valid, what) in _VALID.items():
      if not valid(getattr(self, name)):
        raise ConfigError(f"baseline.{name} must be {what}, got {getattr(self, name)!r}")

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "BaselineConfig":
    """From a dict or ConfigDict; values are converted to each field's type."""
    d = dict(d.to_dict() if hasattr(d, "to_dict") else d)
    fields = {f.name: f.default for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
      raise ConfigError(f"unknown key(s) in baseline config: {', '.join(unknown)}; known: "
                        f"{', '.join(fields)}")
    values = {}
    for k, v in d.items():
      kind = type(fields[k])
      try:
        values[k] = tuple(int(s) for s in v) if kind is tuple else kind(v)
      except (TypeError, ValueError):
        raise ConfigError(f"baseline.{k} expects {kind.__name__}, got {v!r}") from None
    return cls(**values)


class TaskMLP(nn.Module):
  """concat(task embedding, state vectors, image features[, action]) -> ReLU MLP -> [B]
  (`out_dim` None: Q or V) or [B, out_dim] (the policy's pre-tanh action)."""

  state_keys: tuple[str, ...]
  has_image: bool
  max_tasks: int
  hidden_sizes: tuple[int, ...]
  task_embedding_dim: int
  out_dim: int | None = None
  terminate_dim: int | None = None  # See `networks.canonical_action`.

  @nn.compact
  def __call__(self, observation: dict, task: jax.Array, action: jax.Array | None = None):
    table = self.param("task_embedding", nn.initializers.variance_scaling(
        1.0, "fan_in", "normal", out_axis=0), (self.max_tasks, self.task_embedding_dim))
    # one_hot @ table, not a gather: its gradient is a matmul, not a serial scatter on CPU.
    parts = [jax.nn.one_hot(task, self.max_tasks, dtype=table.dtype) @ table]
    for k in self.state_keys:
      v = jnp.asarray(observation[k], jnp.float32)
      parts.append(v.reshape((v.shape[0], -1)))
    if self.has_image:
      parts.append(networks.ImageEncoder(_IMAGE.conv_channels, _IMAGE.image_embedding_dim)(
          observation[networks.IMAGE_KEY]))
    if action is not None:
      parts.append(networks.canonical_action(action, self.terminate_dim))
    x = jnp.concatenate(parts, axis=-1)
    for size in self.hidden_sizes:
      x = nn.relu(networks.Dense(size)(x))
    return networks.Output()(x) if self.out_dim is None else networks.Dense(self.out_dim)(x)


class Networks(NamedTuple):
  """The policy, and for IQL the Q (applied to two parameter sets) and V networks."""

  policy: TaskMLP
  q: TaskMLP | None
  value: TaskMLP | None


class TrainingState(NamedTuple):
  """Everything an update changes: each network's params and Adam state, IQL's Polyak
  target Qs, and the int32 step. IQL's fields are None for BC. The two Qs are a pair of
  params, not stacked and vmapped: `networks.Dense`'s backward has no batching rule."""

  policy_params: Any
  policy_opt_state: Any
  q_params: Any
  q_target_params: Any
  q_opt_state: Any
  value_params: Any
  value_opt_state: Any
  step: jax.Array


def make_networks(env_spec: EnvSpec, max_tasks: int, config: BaselineConfig) -> Networks:
  q = networks.make_q_network(env_spec, max_tasks, _IMAGE)  # Checks the spec; gives the keys.
  mlp = functools.partial(TaskMLP, q.state_keys, q.has_image, max_tasks, config.hidden_sizes,
                          config.task_embedding_dim)
  policy = mlp(env_spec.action.shape[-1])
  if config.method != "iql":
    return Networks(policy, None, None)
  return Networks(policy, mlp(terminate_dim=env_spec.terminate_dim), mlp())


def init_training_state(nets: Networks, env_spec: EnvSpec, optimizer, key) -> TrainingState:
  obs, task, action = networks.dummy_inputs(env_spec)
  pi_key, q_key, v_key = jax.random.split(key, 3)
  pi = nets.policy.init(pi_key, obs, task)
  state = TrainingState(pi, optimizer.init(pi), None, None, None, None, None,
                        jnp.zeros((), jnp.int32))
  if nets.q is None:
    return state
  q = tuple(nets.q.init(k, obs, task, action) for k in jax.random.split(q_key, 2))
  v = nets.value.init(v_key, obs, task)
  return state._replace(q_params=q, q_target_params=q, q_opt_state=optimizer.init(q),
                        value_params=v, value_opt_state=optimizer.init(v))


def squash(raw: jax.Array, minimum, maximum) -> jax.Array:
  """Unbounded outputs -> actions in [minimum, maximum] (tanh, rescaled)."""
  return minimum + (jnp.tanh(raw) + 1.0) * 0.5 * (maximum - minimum)


def expectile_loss(diff: jax.Array, expectile: float) -> jax.Array:
  """Elementwise |expectile - 1(diff < 0)| * diff^2, diff = Q - V: errors where V is below Q
  weigh `expectile`, the others 1 - expectile (0.5: half the squared error)."""
  return jnp.where(diff > 0, expectile, 1.0 - expectile) * diff ** 2


def _sgd(optimizer, loss_fn, params, opt_state):
  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss, aux


def update_step(state: TrainingState, batch: Batch, *, nets: Networks, config: BaselineConfig,
                optimizer: optax.GradientTransformation, minimum: np.ndarray,
                maximum: np.ndarray) -> tuple[TrainingState, dict]:
  """One update of every network; pure, jitted by `BaselineLearner`. IQL's order is the
  reference's: V on the target Qs, then pi on the new V, then Q on the new V(s')."""
  obs, task, action = batch.observation, batch.task, batch.action
  weights, metrics = jnp.ones_like(batch.reward), {}
  if nets.q is not None:
    q_all = lambda p, o: jnp.stack([nets.q.apply(one, o, task, action) for one in p])
    q_target = q_all(state.q_target_params, obs).min(axis=0)

    def value_loss(p):
      v = nets.value.apply(p, obs, task)
      return expectile_loss(q_target - v, config.expectile).mean(), v

    value_params, value_opt_state, v_loss, _ = _sgd(optimizer, value_loss, state.value_params,
                                                    state.value_opt_state)
    advantage = q_target - (v := nets.value.apply(value_params, obs, task))
    weights = jnp.minimum(jnp.exp(config.temperature * advantage), config.max_weight)
    next_v = nets.value.apply(value_params, batch.next_observation, task)
    target = batch.reward + config.gamma * batch.discount * next_v

    def q_loss(p):
      q = q_all(p, obs)
      return ((q - target) ** 2).mean(axis=1).sum(), q

    q_params, q_opt_state, q_l, q = _sgd(optimizer, q_loss, state.q_params, state.q_opt_state)
    state = state._replace(
        q_params=q_params, q_opt_state=q_opt_state, value_params=value_params,
        value_opt_state=value_opt_state,
        q_target_params=optax.incremental_update(q_params, state.q_target_params,
                                                 config.polyak_tau))
    metrics = {"value_loss": v_loss, "q_loss": q_l, "q_mean": q.mean(),
               "v_mean": v.mean(), "advantage_mean": advantage.mean(),
               "weight_mean": weights.mean(), "weight_max": weights.max()}

  def policy_loss(p):
    err = squash(nets.policy.apply(p, obs, task), minimum, maximum) - action
    return (weights * jnp.sum(err ** 2, axis=-1)).mean(), jnp.mean(err ** 2)

  policy_params, policy_opt_state, loss, mse = _sgd(optimizer, policy_loss, state.policy_params,
                                                    state.policy_opt_state)
  state = state._replace(policy_params=policy_params, policy_opt_state=policy_opt_state,
                         step=state.step + 1)
  return state, {"loss": loss, "action_mse": mse, **metrics}


def _act(policy, minimum, maximum, discrete, params, observation, task):
  action = squash(policy.apply(params, observation, task), minimum, maximum)
  snapped = jnp.where(action > (minimum + maximum) / 2, maximum, minimum)
  return jnp.clip(jnp.where(discrete, snapped, action), minimum, maximum)


class BaselineLearner:
  """Trains one baseline from an iterator of `Batch`es and acts with its policy."""

  def __init__(self, env_spec: EnvSpec, max_tasks: int, config: BaselineConfig,
               batches: Iterable[Batch], *, seed: int = 0, discrete_dims=()):
    self.env_spec, self.max_tasks, self.config = env_spec, max_tasks, config
    self._batches: Iterator[Batch] = iter(batches)
    self._minimum = np.asarray(env_spec.action.minimum, np.float32)
    self._maximum = np.asarray(env_spec.action.maximum, np.float32)
    action_dim = env_spec.action.shape[-1]
    discrete = np.zeros(action_dim, bool)
    for d in discrete_dims:
      if not 0 <= int(d) < action_dim:
        raise ValueError(f"discrete dim {d} outside the action's {action_dim} dims")
      discrete[int(d)] = True
    self.nets = make_networks(env_spec, max_tasks, config)
    optimizer = optax.adam(config.learning_rate)
    self._state = init_training_state(self.nets, env_spec, optimizer, jax.random.PRNGKey(seed))
    self._update = jax.jit(functools.partial(
        update_step, nets=self.nets, config=config, optimizer=optimizer,
        minimum=self._minimum, maximum=self._maximum))
    self._act = jax.jit(functools.partial(_act, self.nets.policy, self._minimum,
                                          self._maximum, discrete))
    self._step, self._checked = 0, False

  def step(self) -> dict:
    """One update on the next batch; returns its metrics (device arrays, not synced)."""
    try:
      batch = next(self._batches)
    except StopIteration:
      raise StopIteration("the baseline's batch iterator is exhausted") from None
    self._check(batch)
    self._state, metrics = self._update(self._state, batch)
    self._step += 1
    return metrics

  def run(self, num_steps: int) -> dict:
    """Runs `num_steps` updates; returns the last one's metrics as floats."""
    metrics = {}
    for _ in range(num_steps):
      metrics = self.step()
    return {k: float(v) for k, v in jax.device_get(metrics).items()}

  @property
  def steps(self) -> int:
    return self._step

  def get_params(self):
    """The policy's parameters as numpy: all that acting needs."""
    return jax.device_get(self._state.policy_params)

  def act_batch(self, observation: Mapping[str, np.ndarray],
                task: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic actions [B, A] within the bounds, and NaN Qs [B] (a policy has none)."""
    _check_observation(self.env_spec, observation, "observation")
    actions = self._act(self._state.policy_params, dict(observation),
                        jnp.asarray(task, jnp.int32))
    actions = np.asarray(actions, np.float32)
    return actions, np.full(actions.shape[0], np.nan, np.float32)

  def _check(self, batch: Batch) -> None:
    """Keys and shapes on the first batch (the layout does not change); task slots always."""
    if not isinstance(batch, Batch):
      raise TypeError(f"the baseline takes mtopt.batch.Batch, got {type(batch).__name__}")
    if not self._checked:
      b = batch.size
      for name in ("observation", "next_observation"):
        _check_observation(self.env_spec, getattr(batch, name), f"batch.{name}", b)
      for name, want in (("action", (b, *self.env_spec.action.shape)), ("reward", (b,)),
                         ("discount", (b,)), ("task", (b,))):
        if tuple(np.shape(getattr(batch, name))) != want:
          raise ValueError(f"batch.{name}: expected shape {want}, "
                           f"got {tuple(np.shape(getattr(batch, name)))}")
      self._checked = True
    check_task_slots(batch, self.max_tasks)


def _check_observation(env_spec: EnvSpec, observation: Mapping, name: str,
                       size: int | None = None) -> None:
  want = set(env_spec.observation)
  if set(observation) != want:
    raise ValueError(f"{name} has keys {sorted(observation)}, the env spec {sorted(want)}")
  for k, spec in env_spec.observation.items():
    shape = tuple(np.shape(observation[k]))
    if shape[1:] != spec.shape or size not in (None, shape[0]):
      raise ValueError(f"{name}[{k!r}]: expected shape [{size or 'B'}, *{spec.shape}], "
                       f"got {shape}")
