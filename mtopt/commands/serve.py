"""`mtopt serve --run-dir RUN [--port P]`: serve a run's policy to robots (WebSocket).

Robots connect with `mtopt.robot_client.RobotClient` and a token from `mtopt robots add`;
`mtopt pin` pins or rolls back the served step while the server runs.
"""

from __future__ import annotations


def add_parser(sub):
  from mtopt.serving.config import ServerConfig
  d = ServerConfig()
  p = sub.add_parser("serve", help="serve a run's policy to robots over WebSocket + msgpack")
  p.add_argument("--run-dir", required=True, help="the run directory of `mtopt train`")
  p.add_argument("--host", default=d.host, help=f"address to listen on (default {d.host})")
  p.add_argument("--port", type=int, default=d.port, help=f"default {d.port}")
  p.add_argument("--max-batch", type=int, default=d.max_batch,
                 help="most act requests in one CEM call")
  p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms,
                 help="longest wait for a batch to fill")
  p.add_argument("--max-message-mb", type=float, default=d.max_message_bytes / 2**20)
  p.add_argument("--max-connections", type=int, default=d.max_connections)
  p.add_argument("--idle-timeout", type=float, default=d.idle_timeout_s, help="seconds")
  p.add_argument("--no-uploads", action="store_true", help="refuse episode uploads")
  p.add_argument("--no-replay", action="store_true",
                 help="keep uploads in the journal only (no in-process Reverb replay)")
  p.add_argument("--tls-cert", default=None, help="PEM certificate: serve wss://")
  p.add_argument("--tls-key", default=None, help="PEM private key for --tls-cert")
  p.add_argument("--ray", action="store_true",
                 help="serve as a Ray Serve application (replicas; uploads to one ingest)")
  p.add_argument("--replicas", type=int, default=1, help="with --ray: policy replicas")
  p.add_argument("--ray-address", default=None,
                 help="with --ray: the Ray cluster to join (e.g. auto); default a local one")
  p.set_defaults(func=_run)


def _run(args):
  import os
  from mtopt.config import ConfigError
  from mtopt.serving import auth
  from mtopt.serving.config import ServerConfig
  from mtopt.serving.server import PolicyServer
  if bool(args.tls_cert) != bool(args.tls_key):
    raise ConfigError("--tls-cert and --tls-key go together")
  config = ServerConfig(host=args.host, port=args.port, max_batch=args.max_batch,
                        max_wait_ms=args.max_wait_ms,
                        max_message_bytes=int(args.max_message_mb * 2**20),
                        max_connections=args.max_connections, idle_timeout_s=args.idle_timeout,
                        uploads=not args.no_uploads, replay=not args.no_replay,
                        tls_cert=args.tls_cert, tls_key=args.tls_key)
  if args.replicas < 1:
    raise ConfigError(f"--replicas must be >= 1, got {args.replicas}")
  if args.ray:
    if args.tls_cert:
      raise ConfigError("--tls-cert with --ray: terminate TLS in front of Ray Serve's proxy")
    from mtopt.serving import policy_source, ray_serve
    policy_source.RunPolicy(args.run_dir)  # A bad run directory fails here, before Ray.
    ray_serve.serve_forever(os.path.abspath(args.run_dir), config, args.replicas,
                            args.ray_address)
    return
  server = PolicyServer(args.run_dir, config)
  if not auth.load_robots(os.path.abspath(args.run_dir)):
    print(f"serve: note: no robots registered yet; add one with `mtopt robots add NAME "
          f"--run-dir {args.run_dir}`")
  if server.replay is not None:
    print(f"serve: uploaded episodes go to the Reverb replay at {server.replay.address}")
  try:
    server.serve_forever()
  except OSError as e:
    raise ConfigError(f"cannot listen on {args.host}:{args.port}: {e}") from None
