"""ServerConfig: the knobs of `mtopt serve` (light: the CLI reads its defaults)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class ServerConfig:
  """Attributes:
    host, port: where to listen (port 0: any free port, see `PolicyServer.port`).
    max_batch: the most act requests in one CEM call.
    max_wait_ms: how long the first request of a batch may wait for others.
    max_message_bytes: larger frames close the connection (code 1009).
    max_connections: further connections are refused with HTTP 503.
    idle_timeout_s: a connection that sends nothing this long is closed.
    open_timeout_s: a connection must finish its handshake within this.
    poll_seconds: how often the run directory is checked for new params or a pin.
    seed: the CEM keys of requests that bring none are (seed, request counter).
    uploads: accept episode uploads; `replay` also writes them to an in-process Reverb
      replay (its address: `PolicyServer.replay.address`), else to the journal only.
    warm_up: compile every batch size before listening.
    tls_cert, tls_key: PEM files for wss://.
  """

  host: str = "127.0.0.1"
  port: int = 8765
  max_batch: int = 64
  max_wait_ms: float = 2.0
  max_message_bytes: int = 16 << 20
  max_connections: int = 256
  idle_timeout_s: float = 300.0
  open_timeout_s: float = 10.0
  poll_seconds: float = 1.0
  seed: int = 0
  uploads: bool = True
  replay: bool = True
  warm_up: bool = True
  tls_cert: str | None = None
  tls_key: str | None = None
