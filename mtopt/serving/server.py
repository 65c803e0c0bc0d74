"""PolicyServer: `mtopt serve` — a run's policy for robots over WebSocket + msgpack.

    robots ──ws──► process_request (/healthz, connection limit, token) ──► handler
                     act ──► Batcher ──► one jitted CEM call per batch (worker thread)
                     upload ──► Batcher ──► EpisodeIngest (journal fsync, replay)
    ParamWatcher ──► newest checkpoint or pinned step, swapped between batches

Every reply carries the policy version (the checkpoint step its action came from). A bad
request gets an error reply naming the problem and the connection stays open; a frame
over the size limit closes that connection (code 1009); the server itself stays up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import ssl
import threading
from typing import Any

import numpy as np
import websockets
from websockets.asyncio.server import serve
from websockets.datastructures import Headers
from websockets.http11 import Response

from mtopt.robot_client import protocol
from mtopt.serving import acting, auth, batcher, ingest, policy_source
from mtopt.serving.config import ServerConfig


class RequestError(ValueError):
  """A request is malformed; the message is sent back to the robot."""


def make_ingest(source, config: ServerConfig, replay=None, refill: bool = True, log=print,
                labeller=None):
  """(replay, EpisodeIngest) for a run's uploads: into `replay`, or (config.replay) a new
  in-process Reverb replay, or the journal only; labelled by `labeller`, else the run's
  (`ingest.run_labeller`)."""
  if config.replay and replay is None:
    from replay.reverb_replay import ReverbReplay
    replay = ReverbReplay.from_config(source.config, source.spec, slots=source.registry.slots)
  store = ingest.EpisodeIngest(source.run_dir, source.spec, source.tasks,
                               source.registry.max_tasks, replay,
                               ingest.run_labeller(source.run_dir, source.config)
                               if labeller is None else labeller, refill=refill)
  if store.num_restored:
    log(f"serve: {store.num_restored} uploaded episodes restored from the journal")
  return replay, store


class PolicyServer:
  """Serves RUN's policy. `start()` runs it in a background thread (tests, benchmarks);
  `serve_forever()` in the calling one (the CLI)."""

  def __init__(self, run_dir: str, config: ServerConfig = ServerConfig(), log=print,
               replay=None, refill_replay: bool = True, labeller=None):
    """`replay`: write uploads to this replay (e.g. a training run's) instead of one of its
    own; `refill_replay=False` when that replay restores its own checkpoint (the journal
    would otherwise add what it already holds). `labeller`: labels uploads in place of the
    run's detector (a training program's labeller: its labeller nodes)."""
    self.config, self._log = config, log
    self.source = policy_source.RunPolicy(run_dir)
    self.run_dir = self.source.run_dir
    self.spec, self.tasks = self.source.spec, self.source.tasks
    self._auth = auth.TokenChecker(self.run_dir)
    self._policy = acting.BatchedPolicy(self.source, config.max_batch)
    self._params: tuple[int, Any] | None = None  # (version, device params), swapped whole.
    self._counter = itertools.count()
    self._connections: set = set()
    self.replay, self.ingest, self._own_replay = replay, None, replay is None
    if config.uploads:
      self.replay, self.ingest = make_ingest(self.source, config, replay, refill_replay, log,
                                             labeller)
    # Where uploads go (in the upload worker thread): this server's ingest, or (a Ray Serve
    # replica, `ray_serve.py`) a forwarder to the one ingest of the run; None: refused.
    self.store_uploads = self.ingest.store if self.ingest is not None else None
    self.watcher = policy_source.ParamWatcher(self.source, self._set_params,
                                              config.poll_seconds, log)
    if config.warm_up and self._params is not None:
      self._policy.warm_up(self._params[1])
    self._act_pool = concurrent.futures.ThreadPoolExecutor(1, "cem")
    self._upload_pool = concurrent.futures.ThreadPoolExecutor(1, "ingest")
    self._loop: asyncio.AbstractEventLoop | None = None
    self._thread: threading.Thread | None = None
    self._ready = threading.Event()
    self._error: OSError | None = None
    self._stopping: asyncio.Event | None = None
    self.port: int | None = None
    self._metadata_base = {"type": "metadata", "protocol": protocol.PROTOCOL_VERSION,
                           "env_spec": self.spec.to_json(), "tasks": self.tasks,
                           "max_tasks": self.source.registry.max_tasks,
                           "uploads": config.uploads,
                           "limits": {"max_message_bytes": config.max_message_bytes,
                                      "max_batch": config.max_batch,
                                      "idle_timeout_s": config.idle_timeout_s}}

  # Params.
  def _set_params(self, step: int, params) -> None:
    import jax
    self._params = (int(step), jax.device_put(params))

  @property
  def policy_version(self) -> int | None:
    return None if self._params is None else self._params[0]

  # Acting (worker thread).
  def _act_batch(self, items: list[tuple[dict, int, np.ndarray]]) -> list:
    held = self._params  # One read: the whole batch acts with one version.
    if held is None:
      return [RequestError("no policy yet: the run has no checkpoint")] * len(items)
    version, params = held
    actions, q = self._policy(params, [o for o, _, _ in items], [t for _, t, _ in items],
                              np.stack([k for _, _, k in items]))
    return [(version, actions[i], float(q[i])) for i in range(len(items))]

  def _parse_act(self, msg: dict) -> tuple[dict, int, np.ndarray]:
    obs = msg.get("observation")
    if not isinstance(obs, dict):
      raise RequestError("observation: expected a map of arrays")
    extra = set(obs) - set(self.spec.observation)
    if extra:
      raise RequestError(f"observation: unexpected {sorted(extra)}; expected "
                         f"{sorted(self.spec.observation)}")
    for name, s in self.spec.observation.items():
      if name not in obs:
        raise RequestError(f"observation: missing {name!r}")
      v = obs[name]
      # Fast path (per request, per robot): the sum of finite floats is finite. Anything
      # else goes through the spec's full check, which names the problem.
      if (isinstance(v, np.ndarray) and v.shape == s.shape and v.dtype == s.dtype
          and (v.dtype.kind != "f" or np.isfinite(v.sum()))):
        continue
      try:
        s.check(v, (), f"observation/{name}")
      except ValueError as e:
        raise RequestError(str(e)) from None
    try:
      slot = ingest.task_slot(msg.get("task"), self.tasks)
    except ingest.UploadError as e:
      raise RequestError(str(e)) from None
    key = msg.get("key")
    if key is None:
      count = next(self._counter) & 0xFFFFFFFF
      key = np.array([self.config.seed & 0xFFFFFFFF, count], np.uint32)
    elif not (isinstance(key, np.ndarray) and key.shape == (2,) and key.dtype == np.uint32):
      raise RequestError("key: expected a uint32 array of shape (2,)")
    return obs, slot, key

  # Connections.
  def _respond(self, connection, status: int, body: dict) -> Response:
    return Response(status, "", Headers({"Content-Type": "application/json"}),
                    json.dumps(body).encode())

  def health(self) -> dict:
    return {"status": "ok" if self._params is not None else "no_policy",
            "policy_version": self.policy_version, "connections": len(self._connections),
            "episodes_stored": None if self.ingest is None else len(self.ingest.stored_ids),
            "param_error": self.watcher.error}

  def _process_request(self, connection, request):
    path = request.path.split("?")[0]
    if path == "/healthz":
      h = self.health()
      return self._respond(connection, 200 if h["status"] == "ok" else 503, h)
    if path != "/":
      return self._respond(connection, 404, {"error": f"no such path {path!r}"})
    if len(self._connections) >= self.config.max_connections:
      return self._respond(connection, 503, {"error": "too many connections"})
    header = request.headers.get("Authorization", "")
    token = header[7:] if header.startswith("Bearer ") else None
    robot = request.headers.get("X-Robot")
    index = self._auth.check(robot, token)
    if index is None:
      return self._respond(connection, 401, {"error": "missing or wrong robot token"})
    connection.robot = (robot, index)
    return None

  async def _handler(self, ws):
    robot, index = ws.robot
    try:
      await self.converse(ws, robot, index, ws.send, ws.recv, ws.close)
    except websockets.ConnectionClosed:
      pass  # Cut off (or over the size limit): nothing half-received is ever stored.

  async def converse(self, conn, robot: str, index: int, send, recv, close) -> None:
    """One robot's connection (also a Ray Serve replica's): the metadata, then a reply per
    request until `recv()` gives None (gone) or the connection idles out."""
    self._connections.add(conn)
    try:
      await send(protocol.pack(dict(self._metadata_base, robot=robot,
                                    policy_version=self.policy_version)))
      while True:
        try:
          async with asyncio.timeout(self.config.idle_timeout_s):  # No task per message.
            data = await recv()
        except TimeoutError:
          await close(1000, "idle timeout")
          return
        if data is None:
          return
        await send(protocol.pack(await self._reply(data, index)))
    finally:
      self._connections.discard(conn)

  async def _reply(self, data, robot_index: int) -> dict:
    rid = None
    try:
      msg = protocol.unpack(data)
      rid = msg.get("id")
      rid = rid if isinstance(rid, int) and not isinstance(rid, bool) else None
      kind = msg["type"]
      if kind == "act":
        version, action, q = await self._acts.submit(self._parse_act(msg))
        return {"type": "action", "id": rid, "action": action, "q": q,
                "policy_version": version}
      if kind == "upload":
        if self.store_uploads is None:
          raise RequestError("this server does not accept uploads")
        result = await self._uploads.submit((robot_index, msg.get("episode")))
        return {"type": "stored", "id": rid, **result, "policy_version": self.policy_version}
      if kind == "metadata":
        return dict(self._metadata_base, id=rid, policy_version=self.policy_version)
      raise RequestError(f"unknown message type {kind!r} (act, upload, metadata)")
    except (protocol.ProtocolError, RequestError, ValueError) as e:
      return {"type": "error", "id": rid, "error": str(e), "policy_version": self.policy_version}
    except Exception as e:  # A bug must not take the server down; the robot is told.
      self._log(f"serve: internal error: {type(e).__name__}: {e}")
      return {"type": "error", "id": rid, "error": f"internal error: {type(e).__name__}",
              "policy_version": self.policy_version}

  # Lifecycle.
  def start_batchers(self) -> None:
    """The act and upload batchers, on the running event loop."""
    c = self.config
    self._acts = batcher.Batcher(self._act_batch, c.max_batch, c.max_wait_ms / 1000,
                                 self._act_pool, expected=lambda: len(self._connections))
    self._acts.start()
    self._uploads = batcher.Batcher(self.store_uploads or (lambda x: x), 64, 0.0,
                                    self._upload_pool)
    self._uploads.start()

  async def _main(self):
    c = self.config
    self._stopping = asyncio.Event()
    self.start_batchers()
    tls = None
    if c.tls_cert:
      tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
      tls.load_cert_chain(c.tls_cert, c.tls_key)
    try:
      async with serve(self._handler, c.host, c.port, process_request=self._process_request,
                       max_size=c.max_message_bytes, compression=None, ssl=tls,
                       open_timeout=c.open_timeout_s, max_queue=4,
                       server_header="mtopt") as server:
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._log(f"serve: {'wss' if tls else 'ws'}://{c.host}:{self.port} serving "
                  f"{self.run_dir} (policy version {self.policy_version})")
        await self._stopping.wait()
    finally:
      await self._acts.stop()
      await self._uploads.stop()

  @property
  def url(self) -> str:
    return f"{'wss' if self.config.tls_cert else 'ws'}://{self.config.host}:{self.port}"

  def serve_forever(self) -> None:
    self._loop = asyncio.new_event_loop()
    try:
      self._loop.run_until_complete(self._main())
    except OSError as e:  # E.g. the port is taken: say so to start() and to the CLI.
      self._error = e
      self._ready.set()
      raise
    finally:
      self._close_parts()

  def start(self) -> "PolicyServer":
    def run():
      try:
        self.serve_forever()
      except OSError:
        pass  # Recorded in self._error and raised by start() below.
    self._thread = threading.Thread(target=run, name="policy-server", daemon=True)
    self._thread.start()
    if not self._ready.wait(60):
      raise RuntimeError("the policy server did not start")
    if self._error is not None:
      raise self._error
    return self

  def stop(self) -> None:
    if self._loop is not None and self._stopping is not None:
      self._loop.call_soon_threadsafe(self._stopping.set)
    if self._thread is not None:
      self._thread.join(timeout=30)

  def _close_parts(self):
    self.watcher.stop()
    self._act_pool.shutdown(wait=True)
    self._upload_pool.shutdown(wait=True)
    if self.ingest is not None:
      self.ingest.close()
    if self.replay is not None and self._own_replay:
      self.replay.close()

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc):
    self.stop()
