"""A simulated robot that acts and reports through `mtopt serve`, as a real one would.

`ServedPolicy` is a RobotActor policy that asks the policy server for each action
(`mtopt.robot_client`, over loopback in the simulated fleet); `UploadSink` is a
RobotActor sink that uploads each finished episode and returns once the server has
stored it. Both connect lazily, so they pickle into Ray actors. Until the server has a
policy (no checkpoint yet) the robot acts uniformly at random, never pressing terminate.
"""

from __future__ import annotations

import numpy as np

from mtopt.episode import Episode


class _Connection:
  def __init__(self, url: str, robot: str, token: str):
    self._args = (url, robot, token)
    self._client = None

  def __getstate__(self):
    return {"_args": self._args, "_client": None}

  @property
  def client(self):
    if self._client is None:
      from mtopt.robot_client import RobotClient
      self._client = RobotClient(*self._args)
    return self._client


class ServedPolicy(_Connection):
  """policy(observation, task_slot) -> the server's action (float32 [A])."""

  def __init__(self, url: str, robot: str, token: str, seed: int = 0):
    super().__init__(url, robot, token)
    self._rng = np.random.default_rng(seed)

  def reseed(self, seed) -> None:
    self._rng = np.random.default_rng(seed)

  def __call__(self, observation: dict, task_slot: int) -> np.ndarray:
    from mtopt.robot_client import ServerError
    try:
      return self.client.act(observation, int(task_slot))
    except ServerError as e:
      if "no policy yet" not in str(e):
        raise
    spec = self.client.metadata["env_spec"]["action"]
    lo, hi = np.asarray(spec["minimum"], np.float32), np.asarray(spec["maximum"], np.float32)
    a = self._rng.uniform(lo, hi).astype(np.float32)
    t = self.client.metadata["env_spec"].get("terminate_dim")
    if t is not None:
      a[t] = lo[t]
    return a


class UploadSink(_Connection):
  """sink(episode): uploads it (the robot's own id: the low 32 bits of episode_id)."""

  def __call__(self, ep: Episode) -> None:
    self.client.upload_episode(ep.episode_id & 0xFFFFFFFF, int(ep.task_id), ep.observations,
                               ep.actions, terminated=ep.terminated, success=ep.success)
