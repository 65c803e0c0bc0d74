"""Serving benchmark: `mtopt serve` over loopback sockets, as robots see it.

Run: `python -m benchmarks.serving [--quick] [--config CONFIG]`. Prints a table, then one JSON line.

The server runs as its own process (`mtopt serve`, the real CLI, with its Reverb replay)
on a run directory made here (the default config, fresh learner params in a checkpoint).
Robots are asyncio WebSocket clients in this process speaking the robot client's wire
format (`mtopt.robot_client.protocol`); one more row times the synchronous RobotClient.

- p50_ms_8 / p99_ms_8: act round trips with 8 robots acting back to back.
- actions_per_s_64: actions answered per second with 64 robots; batched_vs_unbatched_64
  divides it by the same figure from a server started with --max-batch 1.
- server_cpu_ms_per_action_64 (and unbatched_...): the server process's CPU time per
  action, a figure that depends less on what else the machine runs.
- upload_episodes_per_s: 16 robots uploading 50-step episodes, counted when acknowledged
  (validated, journalled with fsync, written to the replay); `_journal_only` without the
  replay (`--no-replay`): the difference is ReverbReplay.write_many's per-step appends.
- ray_serve_* (with --ray-replicas N): the same act figures through `mtopt serve --ray
  --replicas N` (Ray Serve's proxy and N replicas, a local Ray); `ray_serve_vs_process_64`
  divides its 64-robot rate by the single process's.
Clients and server share this machine's cores, so every figure includes the robots' own
cost; on a 2-core machine with other jobs running they are lower bounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from mtopt.robot_client import protocol  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_run(run_dir: str, config_path: str, overrides=(), steps=(1,), seeds=None) -> dict:
  """A run directory with a checkpoint per step of fresh params (from seed i for step i,
  or `seeds[i]`): enough to serve, no training needed. Returns the env spec (JSON)."""
  import jax
  from learners import learning, networks
  from learners.checkpointing import Checkpointer
  from learners.config import LearnerConfig
  from mtopt import envs
  from mtopt.program import run_dir as run_dirs
  from mtopt.config import load_config
  from mtopt.tasks import TaskRegistry
  config = load_config(config_path, [f"run_dir={run_dir}", *overrides])
  run_dirs.open_run_dir(config)
  spec = envs.make(config.env).spec()
  registry = TaskRegistry.load_or_create(run_dir, int(config.max_tasks), list(config.env.tasks))
  lcfg = LearnerConfig.from_config(config)
  net = networks.make_q_network(spec, registry.max_tasks, lcfg.network)
  ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"))
  for i, step in enumerate(steps):
    state = learning.init_training_state(
        net, spec, lcfg, jax.random.PRNGKey(i if seeds is None else seeds[i]))
    ckpt.save(state._replace(step=jax.numpy.asarray(step, state.step.dtype)))
  ckpt.close()
  return spec.to_json()


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class ServerProcess:
  def __init__(self, run_dir: str, *extra: str):
    self.port = free_port()
    self.proc = subprocess.Popen(
        [sys.executable, "-m", "mtopt.cli", "serve", "--run-dir", run_dir, "--port",
         str(self.port), *extra], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    end = time.time() + 300
    while time.time() < end:
      if self.proc.poll() is not None:
        raise RuntimeError(f"mtopt serve exited: {self.proc.stderr.read().decode()[-2000:]}")
      try:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as r:
          if json.loads(r.read())["status"] == "ok":
            return
      except OSError:
        pass
      time.sleep(0.3)
    raise RuntimeError("mtopt serve did not come up")

  @property
  def url(self) -> str:
    return f"ws://127.0.0.1:{self.port}"

  def cpu_seconds(self) -> float:
    """User + system CPU time of the server process, all its threads."""
    with open(f"/proc/{self.proc.pid}/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

  def stop(self):
    self.proc.terminate()
    try:
      self.proc.wait(30)
    except subprocess.TimeoutExpired:
      self.proc.kill()


async def _robot(url, name, token, make_message, seconds, latencies, counts, start):
  from websockets.asyncio.client import connect
  async with connect(url, additional_headers={"Authorization": f"Bearer {token}",
                                              "X-Robot": name},
                     compression=None, max_size=1 << 24) as ws:
    await ws.recv()  # Metadata.
    await start.wait()
    end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < end:
      data = protocol.pack(make_message(i))
      t0 = time.perf_counter()
      await ws.send(data)
      reply = protocol.unpack(await ws.recv())
      latencies.append(time.perf_counter() - t0)
      if reply["type"] == "error":
        raise RuntimeError(reply["error"])
      counts.append(1)
      i += 1


async def _fleet(url, robots, make_message, seconds):
  latencies, counts, start = [], [], asyncio.Event()
  tasks = [asyncio.create_task(_robot(url, name, token, make_message(r), seconds, latencies,
                                      counts, start)) for r, (name, token) in enumerate(robots)]
  await asyncio.sleep(0.5)  # All connected before the clock starts.
  t0 = time.perf_counter()
  start.set()
  await asyncio.gather(*tasks)
  return np.asarray(latencies), len(counts) / (time.perf_counter() - t0)


def run_fleet(url, robots, make_message, seconds):
  return asyncio.run(_fleet(url, robots, make_message, seconds))


def act_messages(spec, tasks):
  shapes = {k: (tuple(v["shape"]), np.dtype(v["dtype"])) for k, v in spec["observation"].items()}

  def per_robot(r):
    rng = np.random.default_rng(r)
    obs = [{k: (rng.normal(size=s) if dt.kind == "f" else rng.integers(0, 255, s)).astype(dt)
            for k, (s, dt) in shapes.items()} for _ in range(16)]
    return lambda i: {"type": "act", "id": i, "observation": obs[i % 16],
                      "task": tasks[(r + i) % len(tasks)]}
  return per_robot


def upload_messages(spec, tasks, max_tasks, steps=50):
  shapes = {k: (tuple(v["shape"]), np.dtype(v["dtype"])) for k, v in spec["observation"].items()}
  a_dim = spec["action"]["shape"][0]

  def per_robot(r):
    rng = np.random.default_rng(100 + r)
    obs = {k: (rng.normal(size=(steps + 1, *s)) if dt.kind == "f"
               else rng.integers(0, 255, (steps + 1, *s))).astype(dt)
           for k, (s, dt) in shapes.items()}
    actions = rng.uniform(-1, 1, (steps, a_dim)).astype(np.float32)
    labels = (rng.random(max_tasks) < 0.3).astype(np.float32)
    return lambda i: {"type": "upload", "id": i, "episode": {
        "episode_id": i, "task": tasks[i % len(tasks)], "observations": obs,
        "actions": actions, "labels": labels, "terminated": bool(i % 2)}}
  return per_robot


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="shorter runs, about a minute")
  parser.add_argument("--config", default=os.path.join(ROOT, "configs", "tabletop_state.py"))
  parser.add_argument("--image", action="store_true", help="64 px image observations")
  parser.add_argument("--ray-replicas", type=int, default=0,
                      help="also time `mtopt serve --ray --replicas N` (Ray Serve)")
  args = parser.parse_args(argv)
  seconds = 3.0 if args.quick else 10.0
  from mtopt.serving import auth
  overrides = ["env.observation=image"] if args.image else []
  run = tempfile.mkdtemp(prefix="mtopt_serving_bench_")
  spec = make_run(run, args.config, overrides)
  with open(os.path.join(run, "tasks.json")) as f:
    registry = json.load(f)
  tasks = [t["name"] for t in registry["tasks"] if not t.get("retired")]
  max_tasks = int(registry["max_tasks"])
  robots = [(f"robot{i}", auth.add_robot(run, f"robot{i}")) for i in range(64)]
  rows, r = [], {}

  server = ServerProcess(run)
  try:
    run_fleet(server.url, robots[:8], act_messages(spec, tasks), 1.0)  # Warm up.
    lat, rate8 = run_fleet(server.url, robots[:8], act_messages(spec, tasks), seconds)
    r["p50_ms_8"], r["p99_ms_8"] = (float(np.percentile(lat, q) * 1e3) for q in (50, 99))
    rows.append(("act, 8 robots", f"p50 {r['p50_ms_8']:.2f} ms  p99 {r['p99_ms_8']:.2f} ms  "
                                  f"{rate8:.0f} actions/s"))
    cpu = server.cpu_seconds()
    lat, r["actions_per_s_64"] = run_fleet(server.url, robots, act_messages(spec, tasks), seconds)
    r["server_cpu_ms_per_action_64"] = (server.cpu_seconds() - cpu) * 1e3 / len(lat)
    rows.append(("act, 64 robots", f"{r['actions_per_s_64']:.0f} actions/s  p50 "
                                   f"{np.percentile(lat, 50) * 1e3:.2f} ms  p99 "
                                   f"{np.percentile(lat, 99) * 1e3:.2f} ms  server CPU "
                                   f"{r['server_cpu_ms_per_action_64']:.3f} ms/action"))
    from mtopt.robot_client import RobotClient
    with RobotClient(server.url, *robots[0]) as c:
      obs = act_messages(spec, tasks)(0)(0)["observation"]
      times = []
      for i in range(200 if args.quick else 1000):
        t0 = time.perf_counter()
        c.act(obs, tasks[0])
        times.append(time.perf_counter() - t0)
    r["robot_client_p50_ms_1"] = float(np.median(times) * 1e3)
    rows.append(("RobotClient.act, 1 robot", f"p50 {r['robot_client_p50_ms_1']:.2f} ms"))
    _, r["upload_episodes_per_s"] = run_fleet(server.url, robots[:16],
                                              upload_messages(spec, tasks, max_tasks), seconds)
    rows.append(("upload, 16 robots, 50 steps", f"{r['upload_episodes_per_s']:.0f} episodes/s"))
  finally:
    server.stop()

  # The same server unbatched; its uploads go to the journal only (no Reverb replay).
  server = ServerProcess(run, "--max-batch", "1", "--no-replay")
  try:
    run_fleet(server.url, robots, act_messages(spec, tasks), 1.0)
    cpu = server.cpu_seconds()
    lat, unbatched = run_fleet(server.url, robots, act_messages(spec, tasks), seconds)
    r["unbatched_server_cpu_ms_per_action_64"] = (server.cpu_seconds() - cpu) * 1e3 / len(lat)
    _, r["upload_episodes_per_s_journal_only"] = run_fleet(
        server.url, robots[16:32], upload_messages(spec, tasks, max_tasks), seconds)
  finally:
    server.stop()
  if args.ray_replicas:  # The same robots through Ray Serve's proxy and N replicas.
    server = ServerProcess(run, "--ray", "--replicas", str(args.ray_replicas))
    try:
      run_fleet(server.url, robots[:8], act_messages(spec, tasks), 1.0)
      lat, _ = run_fleet(server.url, robots[:8], act_messages(spec, tasks), seconds)
      r["ray_serve_p50_ms_8"], r["ray_serve_p99_ms_8"] = (float(np.percentile(lat, q) * 1e3)
                                                          for q in (50, 99))
      _, r["ray_serve_actions_per_s_64"] = run_fleet(server.url, robots,
                                                     act_messages(spec, tasks), seconds)
    finally:
      server.stop()
    r["ray_serve_replicas"] = args.ray_replicas
    r["ray_serve_vs_process_64"] = r["ray_serve_actions_per_s_64"] / r["actions_per_s_64"]
    rows.append((f"Ray Serve, {args.ray_replicas} replicas, 8 / 64 robots",
                 f"p50 {r['ray_serve_p50_ms_8']:.2f} ms  p99 {r['ray_serve_p99_ms_8']:.2f} ms;"
                 f"  {r['ray_serve_actions_per_s_64']:.0f} actions/s "
                 f"({r['ray_serve_vs_process_64']:.2f}x the single process)"))
  r["unbatched_actions_per_s_64"] = unbatched
  r["batched_vs_unbatched_64"] = r["actions_per_s_64"] / unbatched
  rows.append(("act, 64 robots, --max-batch 1", f"{unbatched:.0f} actions/s  (batched "
                                                f"{r['batched_vs_unbatched_64']:.1f}x)  server CPU "
                                                f"{r['unbatched_server_cpu_ms_per_action_64']:.3f}"
                                                " ms/action"))
  rows.append(("upload, 16 robots, journal only", f"{r['upload_episodes_per_s_journal_only']:.0f}"
                                                 " episodes/s (--no-replay)"))
  r.update(observation="image" if args.image else "state", cpus=os.cpu_count(),
           load_avg_1m=os.getloadavg()[0], quick=args.quick)

  width = max(len(k) for k, _ in rows)
  print(f"serving over loopback ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
        f"{'image' if args.image else 'state'} observations)")
  for k, v in rows:
    print(f"  {k:<{width}}  {v}")
  print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}))


if __name__ == "__main__":
  main()
