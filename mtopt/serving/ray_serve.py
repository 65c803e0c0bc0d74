"""`mtopt serve --ray [--replicas N]`: the policy server as a Ray Serve application.

    robots ──ws──► Serve proxy ──► Policy replica × N (token check, metadata, the same
                                    protocol, act batcher, ParamWatcher: PolicyServer's core)
                                        upload ──► Ingest (one replica: journal, replay)

Robots use the same `mtopt.robot_client` against ws://HOST:PORT/ (`/healthz` answers from a
replica). Each replica batches the act requests of the robots routed to it and follows the
run's checkpoints (or pin) itself, so replicas can serve different versions for up to
`poll_seconds` after a new checkpoint; every reply says which. Uploads from every replica go
to one Ingest replica: the journal is one file per run, and one writer keeps "stored once"
true. Frames over uvicorn's WebSocket limit (16 MiB) close the connection.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations (the
# WebSocket parameter) as objects; as strings they name nothing in this module.
import dataclasses

from mtopt.serving.config import ServerConfig

APP_NAME = "mtopt-policy"


def _off_loop(make):
  """make(), in a thread without an event loop: Orbax's checkpoint reads patch the running
  loop (nest_asyncio), which cannot patch the uvloop a Serve replica runs on."""
  import concurrent.futures
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    return pool.submit(make).result()


def build(run_dir: str, config: ServerConfig, replicas: int = 1):
  """The bound Serve application (deploy with `serve.run(app, route_prefix="/")`)."""
  from fastapi import FastAPI, WebSocket, WebSocketDisconnect
  from fastapi.responses import JSONResponse
  from ray import serve

  app = FastAPI()

  @serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
  class Ingest:
    def __init__(self, run_dir: str, config: ServerConfig):
      from mtopt.serving import policy_source
      from mtopt.serving.server import make_ingest
      self.replay, self.ingest = _off_loop(
          lambda: make_ingest(policy_source.RunPolicy(run_dir), config))

    def store(self, uploads):
      return self.ingest.store(uploads)

    def stored(self) -> int:
      return len(self.ingest.stored_ids)

    def address(self):
      return None if self.replay is None else self.replay.address

  @serve.deployment(num_replicas=int(replicas), max_ongoing_requests=config.max_connections,
                    ray_actor_options={"num_cpus": 0})
  @serve.ingress(app)
  class Policy:
    def __init__(self, run_dir: str, config: ServerConfig, ingest):
      from mtopt.serving.server import PolicyServer
      self.core = _off_loop(lambda: PolicyServer(
          run_dir, dataclasses.replace(config, uploads=False, port=0), log=print))
      self.ingest = ingest if config.uploads else None
      if self.ingest is not None:  # Runs in the upload worker thread: block on the reply.
        self.core.store_uploads = lambda items: self.ingest.store.remote(items).result()
      self._started = False

    def _start(self):
      if not self._started:  # On the replica's event loop, at its first connection.
        self.core.start_batchers()
        self._started = True

    @app.get("/healthz")
    async def healthz(self):
      h = self.core.health()
      if self.ingest is not None:
        h["episodes_stored"] = await self.ingest.stored.remote()
      return JSONResponse(h, status_code=200 if h["status"] == "ok" else 503)

    @app.websocket("/")
    async def robot(self, ws: WebSocket):
      core = self.core
      header = ws.headers.get("authorization", "")
      token = header[7:] if header.startswith("Bearer ") else None
      robot = ws.headers.get("x-robot")
      index = core._auth.check(robot, token)
      if index is None or len(core._connections) >= core.config.max_connections:
        await ws.close(code=1008, reason="missing or wrong robot token" if index is None
                       else "too many connections")
        return
      self._start()
      await ws.accept()

      async def recv():
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
          return None
        return message.get("bytes") or (message.get("text") or "").encode()

      try:
        await core.converse(ws, robot, index, ws.send_bytes, recv,
                            lambda code, reason: ws.close(code=code, reason=reason))
      except WebSocketDisconnect:
        pass  # Cut off: nothing half-received is ever stored.

  return Policy.bind(run_dir, config, Ingest.bind(run_dir, config))


def serve_forever(run_dir: str, config: ServerConfig, replicas: int, address: str | None,
                  log=print) -> None:
  """Deploys on the Ray cluster at `address` (None: a local one) and blocks."""
  import signal
  import time

  import ray
  from ray import serve

  def stop(*_):  # SIGTERM: leave through `finally`, taking Serve (and a local Ray) down.
    raise SystemExit(0)
  signal.signal(signal.SIGTERM, stop)
  ray.init(address=address, ignore_reinit_error=True)
  serve.start(http_options={"host": config.host, "port": config.port})
  serve.run(build(run_dir, config, replicas), name=APP_NAME, route_prefix="/")
  log(f"serve: ws://{config.host}:{config.port} serving {run_dir} on Ray Serve "
      f"({replicas} replica{'s' if replicas != 1 else ''})")
  try:
    while True:
      time.sleep(3600)
  finally:
    serve.shutdown()
    ray.shutdown()
