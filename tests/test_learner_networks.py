"""Q-networks: the torso/head split agrees with the full call, tasks condition, images work."""

import jax
import numpy as np
import pytest

from learners import networks
from learners.config import NetworkConfig
from mtopt.specs import ArraySpec, BoundedArraySpec, EnvSpec

SMALL = dict(torso_sizes=(32, 32), merge_width=16, head_sizes=(16,), task_embedding_dim=4,
             conv_channels=(4, 8), image_embedding_dim=16)
STATE_SPEC = EnvSpec({"state": ArraySpec((6,), np.float32)},
                     BoundedArraySpec((3,), np.float32, "action", -1.0, 1.0), 10)
IMAGE_SPEC = EnvSpec({"image": ArraySpec((16, 16, 3), np.uint8),
                      "state": ArraySpec((4,), np.float32)},
                     BoundedArraySpec((3,), np.float32, "action", -1.0, 1.0), 10)


def _inputs(spec, rng, b):
  obs = {}
  for k, s in spec.observation.items():
    if s.dtype == np.uint8:
      obs[k] = rng.integers(0, 256, (b, *s.shape)).astype(np.uint8)
    else:
      obs[k] = rng.normal(size=(b, *s.shape)).astype(np.float32)
  return obs, rng.integers(0, 8, b).astype(np.int32)


@pytest.mark.parametrize("spec", [STATE_SPEC, IMAGE_SPEC], ids=["state", "image"])
@pytest.mark.parametrize("architecture", ["split", "whole"])
def test_per_sample_head_matches_full_network(rng, spec, architecture):
  net = networks.make_q_network(spec, 8, NetworkConfig(architecture=architecture, **SMALL))
  params = networks.init_params(net, spec, jax.random.PRNGKey(0))
  obs, task = _inputs(spec, rng, 5)
  actions = rng.uniform(-1, 1, (5, 7, 3)).astype(np.float32)
  features = networks.encode(net, params, obs, task)
  per_sample = np.asarray(networks.head_logits(net, params, features, actions))
  assert per_sample.shape == (5, 7)
  for n in range(7):  # Each sample scored alone through the whole network.
    full = networks.q_logits(net, params, obs, task, actions[:, n])
    np.testing.assert_allclose(per_sample[:, n], full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("spec", [STATE_SPEC, IMAGE_SPEC], ids=["state", "image"])
@pytest.mark.parametrize("architecture,heads_input", [("split", "observation"),
                                                      ("split", "torso"),
                                                      ("whole", "observation")])
def test_features_and_behaviour_in_one_pass_match_each_alone(rng, spec, architecture,
                                                             heads_input):
  """`encode_with_behaviour` (the image encoded once) gives `encode` and the behaviour head
  as each computes them alone, terminate head included."""
  spec = EnvSpec(spec.observation, BoundedArraySpec((4,), np.float32, "action", -1.0, 1.0),
                 10, terminate_dim=3)
  net = networks.make_q_network(spec, 8, NetworkConfig(
      architecture=architecture, behaviour_sizes=(8,), terminate_sizes=(8,),
      heads_input=heads_input, **SMALL))
  params = networks.init_params(net, spec, jax.random.PRNGKey(0))
  obs, task = _inputs(spec, rng, 5)
  low, high = np.full(4, -2.0, np.float32), np.full(4, 2.0, np.float32)
  features, actions = networks.encode_with_behaviour(net, params, obs, task, low, high)
  alone = net.apply(params, obs, task, method=networks.QNetwork.behaviour)
  np.testing.assert_allclose(actions, low + (alone + 1.0) * 0.5 * (high - low), atol=1e-6)
  for got, want in zip(jax.tree.leaves(features),
                       jax.tree.leaves(networks.encode(net, params, obs, task))):
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_heads_on_the_torso_read_its_last_layer_and_the_terminate_head_trains_only_itself(rng):
  """heads_input "torso": both heads' first layers take the torso's last hidden layer; the
  behaviour head's gradient reaches the torso, the terminate head's stops before it."""
  from learners.config import ConfigError
  spec = EnvSpec(STATE_SPEC.observation, BoundedArraySpec((4,), np.float32, "action", -1.0,
                                                          1.0), 10, terminate_dim=3)
  net = networks.make_q_network(spec, 8, NetworkConfig(
      behaviour_sizes=(8,), terminate_sizes=(8,), heads_input="torso", **SMALL))
  params = networks.init_params(net, spec, jax.random.PRNGKey(0))
  p = params["params"]
  width = SMALL["torso_sizes"][-1]
  assert p["behaviour_layers_0"]["kernel"].shape[0] == width
  assert p["terminate_layers_0"]["kernel"].shape[0] == width
  obs, task = _inputs(spec, rng, 5)

  def torso_grad(out):
    both = networks.QNetwork.torso_and_behaviour
    g = jax.grad(lambda q: out(net.apply(q, obs, task, method=both)))(params)
    return float(np.abs(g["params"]["torso_layers_0"]["kernel"]).sum())

  assert torso_grad(lambda fb: fb[1].sum()) > 0  # The behaviour head's.
  assert torso_grad(lambda fb: fb[0][1].sum()) == 0  # The terminate head's.
  with pytest.raises(ConfigError, match="heads_input"):
    NetworkConfig(architecture="whole", heads_input="torso")
  with pytest.raises(ConfigError, match="heads_input"):
    NetworkConfig(heads_input="inputs")


def test_task_slot_conditions_q(rng):
  net = networks.make_q_network(STATE_SPEC, 8, NetworkConfig(**SMALL))
  params = networks.init_params(net, STATE_SPEC, jax.random.PRNGKey(0))
  obs, _ = _inputs(STATE_SPEC, rng, 4)
  action = rng.uniform(-1, 1, (4, 3)).astype(np.float32)
  q0 = networks.q_logits(net, params, obs, np.zeros(4, np.int32), action)
  q5 = networks.q_logits(net, params, obs, np.full(4, 5, np.int32), action)
  assert np.all(np.abs(np.asarray(q0) - np.asarray(q5)) > 1e-6)
  # A new task is a row of the embedding table, not a new shape.
  assert params["params"]["task_embedding"]["embedding"].shape == (8, SMALL["task_embedding_dim"])


def test_split_head_is_much_cheaper_per_sample_than_whole():
  def flops(architecture):
    net = networks.make_q_network(STATE_SPEC, 8, NetworkConfig(architecture=architecture))
    params = networks.init_params(net, STATE_SPEC, jax.random.PRNGKey(0))
    features = networks.encode(net, params, *_inputs(STATE_SPEC, np.random.default_rng(0), 1))
    actions = np.zeros((1, 64, 3), np.float32)
    analysis = jax.jit(lambda p, f, a: networks.head_logits(net, p, f, a)).lower(
        params, features, actions).cost_analysis()  # HLO cost analysis, no compile.
    return (analysis[0] if isinstance(analysis, list) else analysis)["flops"]

  assert flops("whole") > 10 * flops("split")


def test_bad_spec_raises():
  with pytest.raises(ValueError, match="max_tasks"):
    networks.make_q_network(STATE_SPEC, 0, NetworkConfig())
  bad = EnvSpec({"image": ArraySpec((16, 16), np.uint8)}, STATE_SPEC.action, 10)
  with pytest.raises(ValueError, match="image"):
    networks.make_q_network(bad, 4, NetworkConfig())


def test_merge_and_output_are_dense_layers_in_params_and_values(rng):
  # ActionMerge and Output compute Dense layers without XLA:CPU's slow thin dots; their
  # parameters are nn.Dense's (same names, shapes, initial values), so checkpoints written
  # with nn.Dense layers restore into them and vice versa.
  import flax.linen as nn
  import jax.numpy as jnp

  key = jax.random.PRNGKey(0)
  for action_dim in (3, 12):  # 12: past the elementwise limit, a plain matmul.
    a = jnp.asarray(rng.uniform(-1, 1, (5, 7, action_dim)), jnp.float32)
    ours = networks.ActionMerge(16).init(key, a)
    dense = nn.Dense(16, use_bias=False).init(key, a)
    assert jax.tree.map(jnp.shape, ours) == jax.tree.map(jnp.shape, dense)
    np.testing.assert_array_equal(ours["params"]["kernel"], dense["params"]["kernel"])
    np.testing.assert_allclose(networks.ActionMerge(16).apply(ours, a),
                               nn.Dense(16, use_bias=False).apply(dense, a), rtol=1e-5, atol=1e-6)
  x = jnp.asarray(rng.normal(size=(5, 7, 16)), jnp.float32)
  ours, dense = networks.Output().init(key, x), nn.Dense(1).init(key, x)
  assert jax.tree.map(jnp.shape, ours) == jax.tree.map(jnp.shape, dense)
  dense = jax.tree.map(lambda v: v + 0.1, dense)  # A non-zero bias too.
  np.testing.assert_allclose(networks.Output().apply(dense, x), nn.Dense(1).apply(dense, x)[..., 0],
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("architecture,terminate_sizes",
                         [("split", ()), ("whole", ()), ("split", (16,)), ("whole", (16,))],
                         ids=["split", "whole", "split-terminate-head", "whole-terminate-head"])
def test_terminate_actions_are_one_action(rng, architecture, terminate_sizes):
  """With a terminate dimension, Q(s, terminate) ignores the dimensions the env ignores
  (with a terminate head, it is that head's logit)."""
  spec = EnvSpec(STATE_SPEC.observation, STATE_SPEC.action, 10, terminate_dim=2)
  net = networks.make_q_network(spec, 8, NetworkConfig(architecture=architecture,
                                                       terminate_sizes=terminate_sizes, **SMALL))
  params = networks.init_params(net, spec, jax.random.PRNGKey(0))
  obs, task = _inputs(spec, rng, 5)
  stop = rng.uniform(-1, 1, (5, 6, 3)).astype(np.float32)
  stop[..., 2] = rng.uniform(0.01, 1, (5, 6))
  features = networks.encode(net, params, obs, task)
  q = np.asarray(networks.head_logits(net, params, features, stop))
  np.testing.assert_allclose(q, q[:, :1].repeat(6, 1), rtol=1e-5, atol=1e-5)
  go = stop.copy()
  go[..., 2] = -go[..., 2]  # Not terminating: the other dimensions matter again.
  q_go = np.asarray(networks.head_logits(net, params, features, go))
  assert np.ptp(q_go, axis=1).min() > 1e-4


def test_terminate_head_scores_terminating_and_stops_gradient_at_the_shared_inputs(rng):
  """Q(s, terminate) is the terminate head's own logit; its gradient reaches its own layers
  but not the task embedding the Q-head and behaviour head share."""
  spec = EnvSpec(STATE_SPEC.observation, STATE_SPEC.action, 10, terminate_dim=2)
  net = networks.make_q_network(spec, 8, NetworkConfig(terminate_sizes=(16,), **SMALL))
  params = networks.init_params(net, spec, jax.random.PRNGKey(0))
  obs, task = _inputs(spec, rng, 5)
  stop = np.zeros((5, 3), np.float32)
  stop[:, 2] = 1.0

  def q_stop(p):
    return networks.head_logits(net, p, networks.encode(net, p, obs, task), stop).sum()
  grads = jax.grad(q_stop)(params)["params"]
  assert np.abs(np.asarray(grads["task_embedding"]["embedding"])).max() == 0.0
  assert np.abs(np.asarray(grads["terminate_output"]["kernel"])).max() > 0.0
  assert all(np.abs(np.asarray(g)).max() == 0.0 for g in jax.tree.leaves(grads["head_layers_0"]))


def test_env_spec_terminate_dim_round_trips_and_is_checked():
  spec = EnvSpec(STATE_SPEC.observation, STATE_SPEC.action, 10, terminate_dim=2)
  assert EnvSpec.from_json(spec.to_json()) == spec
  assert EnvSpec.from_json(STATE_SPEC.to_json()).terminate_dim is None
  with pytest.raises(ValueError, match="terminate_dim 3"):
    EnvSpec(STATE_SPEC.observation, STATE_SPEC.action, 10, terminate_dim=3)


def test_dense_matches_flax_dense_in_params_values_and_gradients(rng):
  # Dense differs from nn.Dense only in how its backward pass lays out the dots.
  import flax.linen as nn
  import jax.numpy as jnp

  key = jax.random.PRNGKey(1)
  for shape in ((9, 12), (4, 5, 12)):  # A batch, and a batch of CEM samples.
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    ours, dense = networks.Dense(7).init(key, x), nn.Dense(7).init(key, x)
    assert jax.tree.map(jnp.shape, ours) == jax.tree.map(jnp.shape, dense)
    np.testing.assert_array_equal(ours["params"]["kernel"], dense["params"]["kernel"])
    params = jax.tree.map(lambda v: v + 0.1, dense)  # A non-zero bias too.
    w = jnp.asarray(rng.normal(size=(*shape[:-1], 7)), jnp.float32)

    def loss(module, p, x):
      return jnp.sum(jnp.tanh(module.apply(p, x)) * w)

    for argnums in (1, 2):  # Gradients for the parameters and for the input.
      got = jax.grad(loss, argnums)(networks.Dense(7), params, x)
      want = jax.grad(loss, argnums)(nn.Dense(7), params, x)
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), got,
                   want)


def test_layer_norm_normalises_the_torso_and_needs_the_split_architecture(rng):
  """With `layer_norm` every torso layer's pre-activations are normalised (so scaling the
  first layer's kernel leaves Q unchanged); the per-sample head still matches the whole."""
  net = networks.make_q_network(STATE_SPEC, 8, NetworkConfig(layer_norm=True, **SMALL))
  params = networks.init_params(net, STATE_SPEC, jax.random.PRNGKey(0))
  assert "torso_norms_0" in params["params"] and "torso_norms_1" in params["params"]
  obs, task = _inputs(STATE_SPEC, rng, 5)
  action = rng.uniform(-1, 1, (5, 3)).astype(np.float32)
  q = networks.q_logits(net, params, obs, task, action)
  scaled = jax.tree.map(lambda x: x, params)
  layer = scaled["params"]["torso_layers_0"]
  scaled["params"]["torso_layers_0"] = {"kernel": layer["kernel"] * 10.0,
                                         "bias": layer["bias"] * 10.0}
  np.testing.assert_allclose(networks.q_logits(net, scaled, obs, task, action), q,
                             rtol=1e-3, atol=1e-4)
  with pytest.raises(Exception, match="layer_norm needs architecture 'split'"):
    NetworkConfig(layer_norm=True, architecture="whole")


def test_behaviour_modes_give_k_actions_and_need_a_behaviour_head(rng):
  net = networks.make_q_network(STATE_SPEC, 8, NetworkConfig(
      behaviour_sizes=(8,), behaviour_modes=3, **SMALL))
  params = networks.init_params(net, STATE_SPEC, jax.random.PRNGKey(0))
  obs, task = _inputs(STATE_SPEC, rng, 5)
  low, high = np.full(3, -2.0, np.float32), np.full(3, 2.0, np.float32)
  _, actions = networks.encode_with_behaviour(net, params, obs, task, low, high)
  assert actions.shape == (5, 3, 3) and np.all(np.abs(np.asarray(actions)) <= 2.0)
  with pytest.raises(Exception, match="behaviour_modes > 1 needs a behaviour head"):
    NetworkConfig(behaviour_modes=2)
  with pytest.raises(Exception, match="behaviour_modes must be >= 1"):
    NetworkConfig(behaviour_sizes=(8,), behaviour_modes=0)
