"""Env steps per second on one core: tabletop (state, 64x64 image) and Meta-World tasks.

    .venv/bin/python -m benchmarks.envs [--quick]

Random actions (never terminating), resets included when an episode hits its time limit.
The process is pinned to one CPU, so rendering threads share that core too. Ends with one
JSON line of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import mtopt.envs  # noqa: F401  (picks the headless GL backend before mujoco loads)
import numpy as np

from mtopt import envs

METAWORLD_TASKS = ("reach-v3", "push-v3", "pick-place-v3")


def steps_per_second(env, task: str, seconds: float, seed: int = 0) -> tuple[float, float, int]:
  """(steps per wall-clock second, steps per CPU second of this process, steps)."""
  spec = env.spec()
  rng = np.random.default_rng(seed)
  actions = rng.uniform(-1, 1, (1024, *spec.action.shape)).astype(np.float32)
  if spec.action.shape[0] == 5:
    actions[:, 4] = -1.0
  env.reset(task, seed=seed)
  for i in range(20):  # Warm up (first render, caches).
    if env.step(actions[i])[1]:
      env.reset(task)
  n, start, cpu = 0, time.perf_counter(), time.process_time()
  while True:
    for _ in range(100):
      _, done, _ = env.step(actions[n % 1024])
      n += 1
      if done:
        env.reset(task)
    elapsed = time.perf_counter() - start
    if elapsed >= seconds:
      return n / elapsed, n / max(time.process_time() - cpu, 1e-9), n


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="short runs (under a minute)")
  p.add_argument("--seconds", type=float, default=None, help="timing per env")
  args = p.parse_args(argv)
  seconds = args.seconds or (2.0 if args.quick else 8.0)
  try:
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    pinned = True
  except (AttributeError, OSError):
    pinned = False

  rows = []
  cases = [("tabletop_state", lambda: envs.make("tabletop", observation="state"), "lift_red"),
           ("tabletop_image", lambda: envs.make("tabletop", observation="image"), "lift_red")]
  cases += [(f"metaworld_{t.replace('-', '_')}",
             lambda t=t: envs.make("metaworld", tasks=[t], max_episode_steps=200), t)
            for t in METAWORLD_TASKS]
  figures = {}
  for name, build, task in cases:
    env = build()
    rate, cpu_rate, n = steps_per_second(env, task, seconds)
    env.close()
    rows.append((name, task, n, rate, cpu_rate))
    figures[f"{name}_steps_per_s"] = round(rate, 1)
    figures[f"{name}_steps_per_cpu_s"] = round(cpu_rate, 1)

  print(f"env steps per second, one process{' pinned to one core' if pinned else ''}, "
        f"random actions, {seconds:.0f} s each (MUJOCO_GL={os.environ.get('MUJOCO_GL')})")
  print(f"{'env':28s} {'task':16s} {'steps':>8s} {'steps/s':>10s} {'steps/cpu-s':>12s}")
  for name, task, n, rate, cpu_rate in rows:
    print(f"{name:28s} {task:16s} {n:8d} {rate:10.0f} {cpu_rate:12.0f}")
  print("steps/s is wall-clock; steps/cpu-s divides by this process's CPU time, which is "
        "what one uncontended core would give when other processes share the machine.")
  goals = {"tabletop_state_steps_per_s": 5000, "tabletop_image_steps_per_s": 1000}
  for key, goal in goals.items():
    cpu_key = key.replace("_per_s", "_per_cpu_s")
    print(f"goal {key} >= {goal}: wall-clock {'met' if figures[key] >= goal else 'NOT met'}, "
          f"per CPU second {'met' if figures[cpu_key] >= goal else 'NOT met'}")
  figures.update(pinned_one_core=pinned, seconds_per_env=seconds,
                 load_average_1min=round(os.getloadavg()[0], 2))
  print(json.dumps(figures))
  return figures


if __name__ == "__main__":
  main()
