"""Fleet deployment: `mtopt serve` (a policy server for robots), uploads back into a
replay, and `mtopt export`. The robot side is `mtopt.robot_client`.

  auth.py           per-robot tokens (stored hashed, compared in constant time)
  policy_source.py  a run's spec, tasks and params: latest checkpoint or a pinned step
  acting.py         the jitted batched CEM act function (shared with export)
  batcher.py        concurrent act requests -> one CEM call, with a bounded wait
  journal.py        the durable log of uploaded episodes (what an acknowledgement means)
  ingest.py         uploaded episodes: validate, label, journal, write to the replay once
  config.py         ServerConfig (ports, batching, limits)
  server.py         the WebSocket server: metadata, /healthz, limits, dispatch
  export.py         a self-contained jax.export artifact of the policy
"""
