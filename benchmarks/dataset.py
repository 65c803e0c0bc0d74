"""Dataset benchmark: RLDS datasets larger than the replay, streamed from disk into
rebalanced batches (`replay.disk_sampler`), in bounded memory.

Run: `python -m benchmarks.dataset [--quick] [--work DIR]`. Prints a table, then one JSON line.

- Datasets, generated with numpy (random walks; per-task labels in the episode metadata,
  imbalanced: task k succeeds 5%..50%) and written by mtopt's `DatasetWriter` as TFDS/RLDS
  shards under --work (kept for the next run): tabletop's state spec (44 floats, 5-d
  action) at N and 10 N episodes, and 64x64 images (+ 5 floats) at M episodes.
  Full: N = 10,000 and 100,000, M = 10,000. Quick: 1,000 / 10,000 / 500.
- Each size runs in its own process (`--child`), which builds the episode index (one pass:
  `index_s`), streams rebalanced batches of 256 over 6 tasks with the default config's
  `transitions_per_sample` (`transitions_per_s`), and reports its peak RSS
  (`peak_rss_gb_*`, ru_maxrss: TensorFlow and JAX included). `rss_ratio_10x` = peak with
  10 N episodes / peak with N (goal <= 1.2): memory must not grow with the dataset.
- `learner_fed_vs_alone` (state, 10 N dataset): the real `learners.Learner` (tabletop's
  learner config: QT-Opt update with CEM targets, 4 updates per call) run fed by the disk
  sampler vs on one fixed batch, interleaved, best of each (goal >= 0.9). Sampler and
  update share this host's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

TASKS, MAX_TASKS, BATCH = 6, 16, 256
SUCCESS_RATES = np.linspace(0.05, 0.5, TASKS)


def state_spec():
  from mtopt import envs
  from configs.tabletop_state import get_config
  return envs.make(get_config().env).spec()


def image_spec():
  from mtopt.specs import ArraySpec, EnvSpec
  s = state_spec()
  return EnvSpec({"image": ArraySpec((64, 64, 3), np.uint8, "image"),
                  "state": ArraySpec((5,), np.float32, "state")}, s.action, s.max_episode_steps,
                 s.terminate_dim)


def _episode(rng, spec, i):
  from mtopt.episode import Episode
  t = int(rng.integers(20, spec.max_episode_steps + 1))
  obs = {}
  for name, s in spec.observation.items():
    if s.dtype == np.uint8:  # Blocky images: PNG compresses them as it would a scene.
      small = rng.integers(0, 256, (t + 1, 8, 8, 3), dtype=np.uint8)
      obs[name] = np.repeat(np.repeat(small, 8, axis=1), 8, axis=2)
    else:
      obs[name] = np.cumsum(rng.normal(0, 0.05, (t + 1, *s.shape)), 0).astype(np.float32)
  task = int(rng.integers(TASKS))
  labels = np.zeros(MAX_TASKS, np.float32)
  labels[:TASKS] = rng.random(TASKS) < SUCCESS_RATES
  actions = rng.uniform(-1, 1, (t, *spec.action.shape)).astype(np.float32)
  if spec.terminate_dim is not None:
    actions[:, spec.terminate_dim] = -1.0
  return Episode(obs, actions, task_id=task, robot_id=0, episode_id=i, labels=labels,
                 terminated=bool(rng.random() < 0.7))


def generate(path: str, kind: str, n: int) -> str:
  """An mtopt RLDS dataset of `n` generated episodes at `path` (reused if complete)."""
  from mtopt import rlds_format
  done = os.path.join(path, "dataset_info.json")
  if os.path.exists(done):
    return path
  spec = state_spec() if kind == "state" else image_spec()
  rng = np.random.default_rng(n)
  tmp = path + ".partial"
  import shutil
  shutil.rmtree(tmp, ignore_errors=True)
  t0 = time.perf_counter()
  with rlds_format.DatasetWriter(tmp, spec, MAX_TASKS, [], episodes_per_shard=2000,
                                 flush_every=256) as w:
    for i in range(n):
      w.write(_episode(rng, spec, i))
  os.replace(tmp, path)
  print(f"  generated {kind} dataset of {n} episodes in {time.perf_counter() - t0:.0f} s",
        file=sys.stderr)
  return path


def _dir_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))


def _peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)  # KiB -> GiB


def child(kind: str, path: str, batches: int, learner_steps: int, repeats: int,
          cache_mb: float) -> dict:
  """Index, stream, (learner): one dataset size in this process; its peak RSS."""
  from configs.tabletop_state import get_config
  from replay.disk_sampler import DiskSampler, EpisodeIndex
  spec = state_spec() if kind == "state" else image_spec()
  config = get_config()
  k = int(config.replay.transitions_per_sample)
  out = {}
  t0 = time.perf_counter()
  saved = path + ".index.npz"  # The learner's child reuses the index the other built.
  if learner_steps and os.path.exists(saved):
    index = EpisodeIndex.load(saved)
  else:
    index = EpisodeIndex.build(path, None, spec, MAX_TASKS,
                               lambda eps: np.stack([e.labels for e in eps]))
    index.save(saved)
  out["index_s"] = time.perf_counter() - t0
  out["episodes"] = index.size
  out["index_mb"] = sum(a.nbytes for a in index[:5]) / (1 << 20)
  out["rss_after_index_gb"] = _peak_rss_gb()

  def sampler():
    return DiskSampler(path, index, spec, MAX_TASKS, None, BATCH, list(range(TASKS)),
                       rule="all", transitions_per_sample=k, cache_bytes=int(cache_mb * (1 << 20)),
                       min_size=16)
  s = sampler()
  block = k * s.batches_per_draw  # Batches per block the pipeline makes at once.
  for _ in range(block):  # The first block: the pipeline starts.
    next(s)
  t0 = time.perf_counter()
  n = 0
  for _ in range(max(1, batches // block) * block):  # Whole blocks.
    n += next(s).size
  out["transitions_per_s"] = n / (time.perf_counter() - t0)
  out["cache_hit_rate"] = s.cache.hits / max(1, s.cache.hits + s.cache.misses)
  fixed = next(s)
  s.close()
  if learner_steps:
    out.update(_learner(config, spec, sampler, fixed, learner_steps, repeats))
  out["peak_rss_gb"] = _peak_rss_gb()
  return out


def _learner(config, spec, sampler, fixed, steps: int, repeats: int) -> dict:
  """Steps/s of the real Learner fed from disk vs on one fixed batch; best of each."""
  import itertools
  from learners.config import LearnerConfig
  from learners.learner import Learner
  lcfg = LearnerConfig.from_config(config)
  feed = {"source": itertools.repeat(fixed)}

  def batches():
    while True:
      yield next(feed["source"])
  learner = Learner(spec, MAX_TASKS, lcfg, batches())
  learner.run(4 * lcfg.updates_per_call)  # Compiles.
  best = {"alone": 0.0, "fed": 0.0}
  for _ in range(repeats):
    for key in ("alone", "fed"):
      s = sampler() if key == "fed" else None
      feed["source"] = s if s is not None else itertools.repeat(fixed)
      if s is not None:
        for _ in range(8 * int(config.replay.transitions_per_sample)):
          next(s)  # Its prefetch no fuller than in steady state.
      t0 = time.perf_counter()
      learner.run(steps)
      best[key] = max(best[key], steps / (time.perf_counter() - t0))
      if s is not None:
        s.close()
  return {"learner_steps_per_s_alone": best["alone"], "learner_steps_per_s_fed": best["fed"],
          "learner_fed_vs_alone": best["fed"] / best["alone"]}


def _run_child(kind, path, batches, learner_steps, repeats, cache_mb) -> dict:
  cmd = [sys.executable, "-m", "benchmarks.dataset", "--child", kind, path, str(batches),
         str(learner_steps), str(repeats), str(cache_mb)]
  proc = subprocess.run(cmd, capture_output=True, text=True)
  if proc.returncode != 0:
    raise RuntimeError(f"child {kind} {path} failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="smaller sizes, a few minutes")
  parser.add_argument("--work", default="/tmp/mtopt_dataset_bench",
                      help="where the generated datasets are kept (reused between runs)")
  parser.add_argument("--cache-mb", type=float, default=64.0,
                      help="the sampler's record cache (dataset.cache_mb)")
  parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    kind, path, batches, steps, repeats, cache = args.child
    print(json.dumps(child(kind, path, int(batches), int(steps), int(repeats), float(cache))))
    return
  n, m, batches, steps, repeats = ((1_000, 500, 512, 200, 2) if args.quick
                                   else (10_000, 10_000, 2560, 1000, 3))
  os.makedirs(args.work, exist_ok=True)
  start = time.perf_counter()
  paths = {"state_1x": generate(os.path.join(args.work, f"state_{n}"), "state", n),
           "state_10x": generate(os.path.join(args.work, f"state_{10 * n}"), "state", 10 * n),
           "image": generate(os.path.join(args.work, f"image_{m}"), "image", m)}
  # The same work for both sizes (index, stream), each in its own process; the learner in
  # a third, so that its memory does not count toward either.
  runs = {"state_1x": _run_child("state", paths["state_1x"], batches, 0, 0, args.cache_mb),
          "state_10x": _run_child("state", paths["state_10x"], batches, 0, 0, args.cache_mb),
          "image": _run_child("image", paths["image"], batches // 4, 0, 0, args.cache_mb)}
  learner = _run_child("state", paths["state_10x"], 10, steps, repeats, args.cache_mb)
  r = {"quick": bool(args.quick), "cache_mb": args.cache_mb, "batch_size": BATCH}
  for name, out in runs.items():
    r[f"episodes_{name}"] = out["episodes"]
    r[f"dataset_gb_{name}"] = _dir_bytes(paths[name]) / (1 << 30)
    r[f"index_s_{name}"] = out["index_s"]
    r[f"transitions_per_s_{name}"] = out["transitions_per_s"]
    r[f"peak_rss_gb_{name}"] = out["peak_rss_gb"]
    r[f"cache_hit_rate_{name}"] = out["cache_hit_rate"]
  r["transitions_per_s"] = runs["state_10x"]["transitions_per_s"]
  r["peak_rss_gb"] = runs["state_10x"]["peak_rss_gb"]
  r["rss_ratio_10x"] = runs["state_10x"]["peak_rss_gb"] / runs["state_1x"]["peak_rss_gb"]
  for key in ("learner_steps_per_s_alone", "learner_steps_per_s_fed", "learner_fed_vs_alone"):
    r[key] = learner[key]
  r["seconds"] = time.perf_counter() - start
  print(f"dataset benchmark ({'quick' if args.quick else 'full'}; {TASKS} tasks, batches of "
        f"{BATCH}, record cache {args.cache_mb:.0f} MB, {r['seconds']:.0f} s)")
  print(f"{'dataset':10s} {'episodes':>9s} {'on disk GB':>10s} {'index s':>8s} "
        f"{'transitions/s':>14s} {'peak RSS GB':>11s} {'cache hits':>10s}")
  for name in runs:
    print(f"{name:10s} {r[f'episodes_{name}']:9d} {r[f'dataset_gb_{name}']:10.2f} "
          f"{r[f'index_s_{name}']:8.1f} {r[f'transitions_per_s_{name}']:14.0f} "
          f"{r[f'peak_rss_gb_{name}']:11.2f} {r[f'cache_hit_rate_{name}']:10.2f}")
  print(f"rss_ratio_10x {r['rss_ratio_10x']:.3f} (goal <= 1.2); learner steps/s fed "
        f"{r['learner_steps_per_s_fed']:.1f} | alone {r['learner_steps_per_s_alone']:.1f}: "
        f"learner_fed_vs_alone {r['learner_fed_vs_alone']:.3f} (goal >= 0.9)")
  print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}))


if __name__ == "__main__":
  main()
