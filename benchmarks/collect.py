"""Episode collection throughput: a bare loop, one Ray actor, two Ray actors.

    .venv/bin/python -m benchmarks.collect [--quick]

All three run the same RobotActor (tabletop, state observations, scripted policy with
epsilon-random noise, uniform tasks); the Ray runs go through the Fleet (batched calls,
two in flight per actor), as `mtopt collect` does. Ray start-up and actor construction are
outside the timings. Ends with one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import mtopt.envs  # noqa: F401  (picks the headless GL backend before mujoco loads)
from mtopt.envs.tabletop_tasks import TASK_NAMES
from mtopt.tasks import TaskRegistry

from actors.fleet import Fleet
from actors.robot_actor import RobotActor


def actor_kwargs() -> dict:
  reg = TaskRegistry.from_names(16, TASK_NAMES)
  return dict(env_config={"name": "tabletop", "max_episode_steps": 50},
              registry=reg.to_json(), policy="scripted", epsilon=0.1, seed=0)


def bare(num_episodes: int) -> tuple[float, int]:
  actor = RobotActor(0, **actor_kwargs())
  actor.run_episodes(10)  # Warm up.
  start = time.perf_counter()
  eps = actor.run_episodes(num_episodes)
  return num_episodes / (time.perf_counter() - start), sum(e.num_steps for e in eps)


def fleet(ray, num_actors: int, num_episodes: int, per_call: int) -> tuple[float, int]:
  with Fleet(ray, num_actors, actor_kwargs(), episodes_per_call=per_call,
             num_cpus=1.0 / num_actors) as f:
    f.wait_ready()
    list(f.collect(per_call * num_actors * 2))  # Warm up every actor.
    start = time.perf_counter()
    eps = list(f.collect(num_episodes, first_episode_id=10**6))
    return num_episodes / (time.perf_counter() - start), sum(e.num_steps for e in eps)


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="fewer episodes (under a minute)")
  p.add_argument("--episodes", type=int, default=None)
  p.add_argument("--episodes-per-call", type=int, default=16)
  args = p.parse_args(argv)
  n = args.episodes or (300 if args.quick else 2000)

  import ray
  ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
  try:
    rows = [("bare loop (1 process)", *bare(n))]
    rows.append(("Ray, 1 actor", *fleet(ray, 1, n, args.episodes_per_call)))
    rows.append(("Ray, 2 actors", *fleet(ray, 2, n, args.episodes_per_call)))
  finally:
    ray.shutdown()
  (_, bare_rate, _), (_, one, _), (_, two, _) = rows
  print(f"episode collection, tabletop state, scripted + epsilon 0.1, {n} episodes each, "
        f"{args.episodes_per_call} episodes per actor call, {os.cpu_count()} CPUs")
  print(f"{'setup':24s} {'episodes/s':>11s} {'env steps/s':>12s}")
  for name, rate, steps in rows:
    print(f"{name:24s} {rate:11.1f} {rate * steps / n:12.0f}")
  figures = {"bare_episodes_per_s": round(bare_rate, 1),
             "ray_1_actor_episodes_per_s": round(one, 1),
             "ray_2_actors_episodes_per_s": round(two, 1),
             "ray_1_actor_vs_bare": round(one / bare_rate, 3),
             "ray_2_actors_vs_1": round(two / one, 3),
             "episodes": n, "load_average_1min": round(os.getloadavg()[0], 2)}
  print(f"1 Ray actor vs bare: {figures['ray_1_actor_vs_bare']:.2f}x (goal >= 0.9); "
        f"2 actors vs 1: {figures['ray_2_actors_vs_1']:.2f}x (goal >= 1.5)")
  print(json.dumps(figures))
  return figures


if __name__ == "__main__":
  main()
