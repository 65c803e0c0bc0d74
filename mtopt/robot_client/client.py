"""RobotClient: a robot's connection to `mtopt serve` (numpy, msgpack, websockets only).

    client = RobotClient("ws://host:8765", robot="arm-3", token=TOKEN)
    action = client.act({"state": obs}, "lift_red")        # float32 [A]
    client.upload_episode(episode_id=7, task="lift_red", observations=..., actions=...)

A lost connection is reopened on the next call. `upload_episode` retries with the same
episode id until the server acknowledges that the episode is stored; the server keeps
each (robot, episode id) once, so a retry after a lost acknowledgement is not a duplicate.
"""

from __future__ import annotations

import itertools
import ssl as ssl_lib
import time
from typing import Mapping

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.sync.client import connect

from mtopt.robot_client import protocol


class ServerError(RuntimeError):
  """The server rejected a request; the message is the server's explanation."""


class RobotClient:
  """Args:
    url: ws://HOST:PORT (or wss:// with TLS).
    robot, token: this robot's name and secret (from `mtopt robots add`).
    timeout: seconds to wait for a connection or a reply.
    ssl_context: for wss:// with a private CA (e.g. ssl.create_default_context(cafile=...)).
    max_message_bytes: the largest reply accepted.
  """

  def __init__(self, url: str, robot: str, token: str, timeout: float = 10.0,
               ssl_context: ssl_lib.SSLContext | None = None,
               max_message_bytes: int = 16 << 20):
    self.url, self.robot, self._token = url, robot, token
    self.timeout, self._ssl, self._max = float(timeout), ssl_context, int(max_message_bytes)
    self._ws = None
    self._ids = itertools.count(1)
    self.metadata: dict = {}
    self.policy_version: int | None = None  # Of the last reply.
    self.connect()

  # Connection.
  def connect(self) -> dict:
    """(Re)opens the connection; returns the server's metadata."""
    self.close()
    try:
      ws = connect(self.url, additional_headers={"Authorization": f"Bearer {self._token}",
                                                 "X-Robot": self.robot},
                   open_timeout=self.timeout, max_size=self._max, compression=None,
                   ssl=self._ssl if self.url.startswith("wss:") else None)
    except InvalidStatus as e:
      body = e.response.body.decode("utf-8", "replace").strip()
      raise ServerError(f"connection refused ({e.response.status_code}): {body}") from None
    self._ws = ws
    self.metadata = self._receive()
    if self.metadata.get("type") != "metadata":
      raise ServerError(f"expected metadata on connect, got {self.metadata.get('type')!r}")
    self.policy_version = self.metadata.get("policy_version")
    self._obs_specs = {k: (tuple(v["shape"]), np.dtype(v["dtype"]))
                       for k, v in self.metadata["env_spec"]["observation"].items()}
    return self.metadata

  def close(self) -> None:
    if self._ws is not None:
      try:
        self._ws.close()
      except Exception:  # Already broken: nothing to close.
        pass
      self._ws = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  @property
  def tasks(self) -> dict[str, int]:
    return dict(self.metadata.get("tasks", {}))

  def _receive(self) -> dict:
    try:
      data = self._ws.recv(timeout=self.timeout)
    except TimeoutError:
      self.close()  # A late reply must not be read as the answer to the next request.
      raise
    msg = protocol.unpack(data)
    if "policy_version" in msg:
      self.policy_version = msg["policy_version"]
    return msg

  def request(self, message: dict) -> dict:
    """Sends one request and returns its reply; raises ServerError for an error reply."""
    if self._ws is None:
      self.connect()
    message = dict(message, id=next(self._ids))
    self._ws.send(protocol.pack(message))
    reply = self._receive()
    if reply.get("type") == "error":
      raise ServerError(reply.get("error", "unknown error"))
    if reply.get("id") != message["id"]:
      self.close()
      raise ServerError(f"reply id {reply.get('id')} does not match request {message['id']}")
    return reply

  # Acting.
  def act(self, observation: Mapping[str, np.ndarray], task: str | int,
          key: np.ndarray | None = None) -> np.ndarray:
    """The policy's action (float32 [A]) for one observation and a task name or slot.
    `key` (uint32 [2]) makes the CEM sampling reproducible."""
    obs = {k: np.asarray(observation[k], dt) if k in observation else None
           for k, (_, dt) in self._obs_specs.items()}
    missing = [k for k, v in obs.items() if v is None]
    if missing:
      raise ValueError(f"observation lacks {missing}; the server expects {sorted(obs)}")
    message = {"type": "act", "observation": obs, "task": task}
    if key is not None:
      message["key"] = np.asarray(key, np.uint32)
    reply = self._retrying(lambda: self.request(message), attempts=2)
    self.last_q = float(reply.get("q", np.nan))
    return np.asarray(reply["action"], np.float32)

  # Uploading.
  def upload_episode(self, episode_id: int, task: str | int,
                     observations: Mapping[str, np.ndarray], actions: np.ndarray,
                     terminated: bool = False, labels: np.ndarray | None = None,
                     success: np.ndarray | None = None, attempts: int = 5) -> dict:
    """Sends a finished episode (observations [T+1, ...], actions [T, A]) and returns the
    server's acknowledgement once it is stored; retries lost connections with the same id.
    `episode_id` must be unique for this robot (0 <= id < 2**32)."""
    episode = {"episode_id": int(episode_id), "task": task, "terminated": bool(terminated),
               "observations": {k: np.asarray(observations[k], self._obs_specs[k][1])
                                if k in self._obs_specs else np.asarray(v)
                                for k, v in observations.items()},
               "actions": np.asarray(actions, np.float32)}
    if labels is not None:
      episode["labels"] = np.asarray(labels, np.float32)
    if success is not None:
      episode["success"] = np.asarray(success, bool)
    message = {"type": "upload", "episode": episode}
    return self._retrying(lambda: self.request(message), attempts)

  def _retrying(self, call, attempts: int):
    delay = 0.05
    for attempt in range(attempts):
      try:
        return call()
      except (ConnectionClosed, ConnectionError, TimeoutError, OSError,
              WebSocketException) as e:
        self.close()
        if attempt == attempts - 1:
          raise ConnectionError(f"server unreachable after {attempts} attempts: {e}") from e
        time.sleep(delay)
        delay = min(2.0, delay * 2)
        try:
          self.connect()
        except (ConnectionError, OSError, TimeoutError, WebSocketException):
          pass  # The next attempt reconnects again.


class EpisodeUploader:
  """Numbers a robot's finished episodes and uploads each until it is stored.

  `first_id` should continue from the robot's last run (e.g. saved on the robot), since
  the server acknowledges an id it already holds as a duplicate without storing it again.
  """

  def __init__(self, client: RobotClient, first_id: int = 0):
    self.client, self.next_id = client, int(first_id)

  def upload(self, task, observations, actions, terminated=False, **extra) -> dict:
    ack = self.client.upload_episode(self.next_id, task, observations, actions,
                                     terminated=terminated, **extra)
    self.next_id += 1
    return ack
