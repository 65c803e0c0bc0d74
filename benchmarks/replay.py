"""Replay benchmark: our writer and sampler against raw Reverb, memory with sharing, learner feed.

Run: `python -m benchmarks.replay [--quick]`. Prints a table, then one JSON line.

- writer: episodes/s through `ReverbReplay.write_many` (validation, sharing, labels) vs a raw
  trajectory writer appending the same steps and creating the same items on the same tables.
- sampler: rebalanced batches of 256 over 10 tasks vs raw `client.sample` of 256 items, with
  `transitions_per_sample` K (the default config's; unsuffixed keys) and 1 (`_k1` keys); and
  the sampler's CPU ms per batch (all its threads), the figure that decides whether it can
  feed a step on a host's spare cores.
- memory: server RSS growth per stored transition, `all` sharing over 10 tasks vs `none`
  (each episode counts for one task), measured in child processes.
- learner: steps/s of a jitted ~2 ms MLP train step fed by the sampler vs on one fixed batch,
  in interleaved runs (best of each). The step and the sampler share this host's CPUs, so
  under load from other processes the ratio mostly reflects how the scheduler shares them.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from configs.tabletop_state import get_config  # noqa: E402
from mtopt.episode import Episode  # noqa: E402
from mtopt.specs import ArraySpec, BoundedArraySpec, EnvSpec  # noqa: E402

TASKS, STATE_DIM, ACTION_DIM, STEPS, P_SUCCESS = 10, 39, 4, 40, 0.2
K = get_config().replay.transitions_per_sample  # The default config's rows per sampled episode.
SPEC = EnvSpec({"state": ArraySpec((STATE_DIM,), np.float32, "state")},
               BoundedArraySpec((ACTION_DIM,), np.float32, "action", -1.0, 1.0), STEPS)


def episodes(n: int, seed: int = 0) -> list[Episode]:
  rng = np.random.default_rng(seed)
  return [Episode({"state": rng.normal(size=(STEPS + 1, STATE_DIM)).astype(np.float32)},
                  rng.uniform(-1, 1, (STEPS, ACTION_DIM)).astype(np.float32),
                  task_id=i % TASKS, episode_id=i,
                  labels=(rng.random(TASKS) < P_SUCCESS).astype(np.float32))
          for i in range(n)]


def new_replay(sharing: str = "all"):
  from replay.reverb_replay import ReverbReplay
  from replay.tables import TableLayout
  return ReverbReplay(TableLayout(SPEC, TASKS, max_size=100_000), sharing=sharing)


def write_ours(replay, eps, group: int) -> float:
  t0 = time.perf_counter()
  for i in range(0, len(eps), group):
    replay.write_many(eps[i:i + group])
  return time.perf_counter() - t0


def write_raw(replay, eps, group: int) -> float:
  """The same items as ReverbReplay makes, written by a bare trajectory writer."""
  from replay import tables
  plans = []
  for ep in eps:  # Precomputed: only the Reverb work is timed.
    succ = [k for k in range(TASKS) if ep.labels[k] >= 0.5]
    obs, act = tables.pad_episode(ep, tables.episode_rows(SPEC))
    plans.append((obs, act, succ, tables.episode_metadata(ep, TASKS)))
  w = replay._new_writer()
  t0 = time.perf_counter()
  for i, (obs, act, succ, meta) in enumerate(plans):
    w.append({"observation": obs, "action": act, "metadata": meta})
    h = w.history
    steps = {"observation": {"state": h["observation"]["state"][-1]}, "action": h["action"][-1]}
    m = {k: h["metadata"][k][-1] for k in meta}
    for k in succ:
      w.create_item(tables.task_table(k, True), float(STEPS), steps)
    w.create_item(tables.SHARED_TABLE, float(STEPS), {**steps, "labels": m["labels"]})
    w.create_item(tables.EPISODES_TABLE, float(i), {**steps, "metadata": m})
    if (i + 1) % group == 0:
      w.flush()
  w.flush()
  dt = time.perf_counter() - t0
  w.close()
  return dt


def bench_writer(n: int, repeats: int, group: int = 10) -> dict:
  eps = episodes(n)
  ours, raw = [], []
  for _ in range(repeats):  # Interleaved, best of each: the machine is shared.
    with new_replay() as r:
      raw.append(write_raw(r, eps, group))
    with new_replay() as r:
      ours.append(write_ours(r, eps, group))
  return {"ours_eps_per_s": n / min(ours), "raw_eps_per_s": n / min(raw),
          "ours_transitions_per_s": n * STEPS / min(ours),
          "raw_transitions_per_s": n * STEPS / min(raw)}


def bench_sampler(replay, batches: int) -> dict:
  """Batches/s, and CPU ms per batch over all threads (less sensitive to other load on a
  shared machine), with transitions_per_sample K and 1; then raw `client.sample`."""
  from replay import tables
  out = {}
  for k, suffix in ((K, ""), (1, "_k1")):
    replay.transitions_per_sample = k
    sampler = replay.sampler(256)
    for _ in range(2 * 8 * k):  # Two blocks (see balanced_sampler.make_dataset).
      next(sampler)
    n = max(batches, 4 * 8 * k)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
      next(sampler)
    out[f"sampler_cpu_ms_per_batch{suffix}"] = 1000 * (time.process_time() - c0) / n
    out[f"sampler_batches_per_s{suffix}"] = n / (time.perf_counter() - t0)
    sampler.close()
  replay.transitions_per_sample = 1
  raw_batches = max(3, batches // 4)
  t0 = time.perf_counter()
  for _ in range(raw_batches):
    list(replay.client.sample(tables.SHARED_TABLE, 256, emit_timesteps=False))
  out["raw_sample_batches_per_s"] = raw_batches / (time.perf_counter() - t0)
  return out


def memory_child(sharing: str, n: int) -> None:
  """Prints the RSS growth per transition of an in-process server storing n episodes."""
  def rss():
    with open("/proc/self/status") as f:
      return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))
  eps = episodes(n + 100, seed=1)
  r = new_replay(sharing)
  r.write_many(eps[:100])  # Warm up allocators and writer buffers.
  gc.collect()
  before = rss()
  for i in range(100, n + 100, 100):
    r.write_many(eps[i:i + 100])
  gc.collect()
  print(json.dumps({"bytes_per_transition": (rss() - before) / (n * STEPS)}))


def bench_memory(n: int) -> dict:
  out = {}
  children = {sharing: subprocess.Popen(  # Concurrent: each measures only its own RSS.
      [sys.executable, "-m", "benchmarks.replay", "--memory-child", sharing, str(n)],
      stdout=subprocess.PIPE, text=True) for sharing in ("none", "all")}
  for sharing, child in children.items():
    stdout, _ = child.communicate()
    if child.returncode:
      raise RuntimeError(f"memory child ({sharing}) failed with exit code {child.returncode}")
    out[sharing] = json.loads(stdout.strip().splitlines()[-1])["bytes_per_transition"]
  return {"bytes_per_transition_1task": out["none"], "bytes_per_transition_shared10": out["all"]}


def bench_learner(replay, steps: int, repeats: int) -> dict:
  """Steps/s of the train step alone (one fixed batch on the device) and fed by samplers
  (transitions_per_sample K, the default, and 1), in interleaved runs of `steps` steps; best
  of each."""
  import jax
  import jax.numpy as jnp
  import optax

  def init(key):
    sizes = [STATE_DIM + ACTION_DIM + TASKS, 256, 256, 256, 1]
    keys = jax.random.split(key, len(sizes))
    return [(jax.random.normal(k, (a, b)) / np.sqrt(a), jnp.zeros(b))
            for k, a, b in zip(keys, sizes[:-1], sizes[1:])]

  def loss(params, obs, act, task, reward):
    x = jnp.concatenate([obs, act, jax.nn.one_hot(task, TASKS)], -1)
    for w, b in params[:-1]:
      x = jax.nn.relu(x @ w + b)
    logits = (x @ params[-1][0] + params[-1][1])[:, 0]
    return optax.sigmoid_binary_cross_entropy(logits, reward).mean()

  opt = optax.adam(1e-3)

  @jax.jit
  def step(params, state, obs, act, task, reward):
    g = jax.grad(loss)(params, obs, act, task, reward)
    updates, state = opt.update(g, state, params)
    return optax.apply_updates(params, updates), state

  params = init(jax.random.PRNGKey(0))
  state = opt.init(params)
  args = lambda b: (b.observation["state"], b.action, b.task, b.reward)
  fixed = jax.device_put(args(next(replay.sampler(256))))
  for _ in range(20):
    params, state = step(params, state, *fixed)
  jax.block_until_ready(params)

  def run(feed):
    nonlocal params, state
    t0 = time.perf_counter()
    for _ in range(steps):
      params, state = step(params, state, *feed())
    jax.block_until_ready(params)
    return steps / (time.perf_counter() - t0)

  def fed(k):
    """A fresh sampler, warmed up by taking two of its blocks without training on them: its
    prefetch buffer starts no fuller than it would be in steady state."""
    replay.transitions_per_sample = k
    sampler = replay.sampler(256)
    for _ in range(2 * 8 * k):
      next(sampler)
    rate = run(lambda: args(next(sampler)))
    sampler.close()
    return rate

  # Interleaved, best of each: load on the shared machine drifts.
  out = {"learner_steps_per_s_alone": 0.0, "learner_steps_per_s_fed": 0.0,
         "learner_steps_per_s_fed_k1": 0.0}
  for _ in range(repeats):
    for key, feed in (("learner_steps_per_s_alone", lambda: run(lambda: fixed)),
                      ("learner_steps_per_s_fed", lambda: fed(K)),
                      ("learner_steps_per_s_fed_k1", lambda: fed(1))):
      out[key] = max(out[key], feed())
  replay.transitions_per_sample = 1
  out["learner_step_ms"] = 1000 / out["learner_steps_per_s_alone"]
  return out


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="smaller sizes, under a minute")
  parser.add_argument("--memory-child", nargs=2, metavar=("SHARING", "N"), help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.memory_child:
    memory_child(args.memory_child[0], int(args.memory_child[1]))
    return
  n, repeats, batches, mem_n, learn = ((150, 2, 20, 600, 800) if args.quick
                                       else (1500, 3, 150, 4000, 3000))
  r, start = {}, time.perf_counter()
  r.update(bench_writer(n, repeats))
  r.update(bench_memory(mem_n))
  with new_replay() as replay:
    replay.write_many(episodes(500, seed=2))
    r.update(bench_sampler(replay, batches))
    r.update(bench_learner(replay, learn, repeats))
  r["seconds"] = time.perf_counter() - start
  r["writer_vs_raw"] = r["ours_eps_per_s"] / r["raw_eps_per_s"]
  r["memory_shared10_vs_1"] = r["bytes_per_transition_shared10"] / r["bytes_per_transition_1task"]
  r["sampler_vs_raw_sample"] = r["sampler_batches_per_s"] / r["raw_sample_batches_per_s"]
  r["sampler_vs_raw_sample_k1"] = r["sampler_batches_per_s_k1"] / r["raw_sample_batches_per_s"]
  r["sampler_cpu_k_vs_k1"] = r["sampler_cpu_ms_per_batch"] / r["sampler_cpu_ms_per_batch_k1"]
  r["learner_fed_vs_alone"] = r["learner_steps_per_s_fed"] / r["learner_steps_per_s_alone"]
  r["learner_fed_vs_alone_k1"] = (r["learner_steps_per_s_fed_k1"]
                                  / r["learner_steps_per_s_alone"])
  r["transitions_per_sample"] = K
  r["quick"] = bool(args.quick)
  rows = [
      ("writer episodes/s (ours | raw)", "ours_eps_per_s", "raw_eps_per_s", "writer_vs_raw",
       ">= 0.8"),
      ("writer transitions/s (ours | raw)", "ours_transitions_per_s", "raw_transitions_per_s",
       "writer_vs_raw", ""),
      ("batches/s @256 (balanced | client.sample)", "sampler_batches_per_s",
       "raw_sample_batches_per_s", "sampler_vs_raw_sample", ""),
      ("  same, 1 transition per sampled episode", "sampler_batches_per_s_k1",
       "raw_sample_batches_per_s", "sampler_vs_raw_sample_k1", ""),
      (f"sampler CPU ms/batch @256 (k={K} | k=1)", "sampler_cpu_ms_per_batch",
       "sampler_cpu_ms_per_batch_k1", "sampler_cpu_k_vs_k1", ""),
      ("bytes/transition (10 tasks | 1 task)", "bytes_per_transition_shared10",
       "bytes_per_transition_1task", "memory_shared10_vs_1", "<= 1.2"),
      ("learner steps/s (fed | alone)", "learner_steps_per_s_fed", "learner_steps_per_s_alone",
       "learner_fed_vs_alone", ">= 0.9"),
      ("  same, 1 transition per sampled episode", "learner_steps_per_s_fed_k1",
       "learner_steps_per_s_alone", "learner_fed_vs_alone_k1", ""),
  ]
  print(f"replay benchmark ({'quick' if args.quick else 'full'}; {TASKS} tasks, T={STEPS}, "
        f"state {STATE_DIM}, success rate {P_SUCCESS}, "
        f"learner step {r['learner_step_ms']:.2f} ms, {r['seconds']:.0f} s)")
  print(f"{'measure':44s} {'ours':>12s} {'baseline':>12s} {'ratio':>7s}  goal")
  for name, a, b, ratio, goal in rows:
    print(f"{name:44s} {r[a]:12.{1 if r[a] > 10 else 2}f} {r[b]:12.{1 if r[b] > 10 else 2}f} "
        f"{r[ratio]:7.2f}  {goal}")
  print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}))


if __name__ == "__main__":
  main()
