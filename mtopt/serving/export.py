"""`mtopt export`: the policy as a self-contained artifact for acting on the robot itself.

OUT/act.jaxexport  the act function (`acting.make_act_fn`: CEM over the Q-network) as a
                   serialized `jax.export` program, batch size symbolic
OUT/params.msgpack the params it takes (msgpack arrays, the wire format; no pickle)
OUT/policy.json    env spec, tasks and slots, policy version (checkpoint step), CEM config

`ExportedPolicy(OUT)` needs JAX, numpy and msgpack only (no flax, no mtopt learner code)
and gives the same actions as the server for the same observation, task, key and params.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from mtopt.robot_client import protocol

PROGRAM, PARAMS, META = "act.jaxexport", "params.msgpack", "policy.json"


def export_policy(run_dir: str, out_dir: str, step: int | None = None) -> dict:
  """Writes the artifact for RUN's checkpoint `step` (default: newest); returns policy.json."""
  import jax
  from jax import export
  from mtopt.serving import acting, policy_source
  source = policy_source.RunPolicy(run_dir)
  step, params = source.load_params(step)
  spec = source.spec
  fn = jax.jit(acting.make_act_fn(source.network, source.lcfg.cem, spec.action.minimum,
                                  spec.action.maximum))
  (b,) = export.symbolic_shape("b")
  args = (jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params),
          {k: jax.ShapeDtypeStruct((b, *s.shape), s.dtype) for k, s in spec.observation.items()},
          jax.ShapeDtypeStruct((b,), np.int32), jax.ShapeDtypeStruct((b, 2), np.uint32))
  exported = export.export(fn)(*args)
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, PROGRAM), "wb") as f:
    f.write(exported.serialize())
  with open(os.path.join(out_dir, PARAMS), "wb") as f:
    f.write(protocol.pack({"type": "params", "params": jax.tree.map(np.asarray, params)}))
  meta = {"policy_version": int(step), "env_spec": spec.to_json(), "tasks": source.tasks,
          "max_tasks": source.registry.max_tasks, "run_dir": source.run_dir,
          "cem": dataclasses.asdict(source.lcfg.cem),
          "signature": "act(params, observation {name: [B, ...]}, task int32 [B], "
                       "keys uint32 [B, 2]) -> (actions float32 [B, A], q float32 [B])"}
  with open(os.path.join(out_dir, META), "w") as f:
    json.dump(meta, f, indent=1, default=list)
  return meta


class ExportedPolicy:
  """Loads an `mtopt export` artifact: `act(observation, task, key)` like the server's."""

  def __init__(self, directory: str):
    from jax import export
    with open(os.path.join(directory, META)) as f:
      self.meta = json.load(f)
    with open(os.path.join(directory, PROGRAM), "rb") as f:
      self._exported = export.deserialize(bytearray(f.read()))
    with open(os.path.join(directory, PARAMS), "rb") as f:
      self.params = protocol.unpack(f.read())["params"]
    self.tasks: dict[str, int] = self.meta["tasks"]
    self.policy_version = self.meta["policy_version"]
    self._obs = {k: (tuple(v["shape"]), np.dtype(v["dtype"]))
                 for k, v in self.meta["env_spec"]["observation"].items()}

  def act_batch(self, observation: dict, task: np.ndarray, keys: np.ndarray):
    """(actions [B, A], q [B]) for observations {name: [B, ...]}, slots [B], keys [B, 2]."""
    obs = {k: np.asarray(observation[k], dt) for k, (_, dt) in self._obs.items()}
    actions, q = self._exported.call(self.params, obs, np.asarray(task, np.int32),
                                     np.asarray(keys, np.uint32))
    return np.asarray(actions), np.asarray(q)

  def act(self, observation: dict, task, key) -> np.ndarray:
    """The action for one observation, a task name or slot, and a uint32 [2] key."""
    slot = self.tasks[task] if isinstance(task, str) else int(task)
    actions, _ = self.act_batch({k: np.asarray(v)[None] for k, v in observation.items()},
                                np.array([slot]), np.asarray(key, np.uint32)[None])
    return actions[0]
