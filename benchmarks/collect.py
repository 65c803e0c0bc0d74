"""Episode collection throughput: a bare loop, one Ray actor, two Ray actors.

    .venv/bin/python -m benchmarks.collect [--quick]

All three run the same RobotActor (tabletop, state observations, scripted policy with
epsilon-random noise, uniform tasks); the Ray runs go through the Fleet (batched calls,
two in flight per actor), as `mtopt collect` does. Ray start-up and actor construction are
outside the timings; the three setups are interleaved round by round. Ends with one JSON
line of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

import mtopt.envs  # noqa: F401  (picks the headless GL backend before mujoco loads)
from mtopt.envs.tabletop_tasks import TASK_NAMES
from mtopt.tasks import TaskRegistry

from actors.fleet import Fleet
from actors.robot_actor import RobotActor


def actor_kwargs() -> dict:
  reg = TaskRegistry.from_names(16, TASK_NAMES)
  return dict(env_config={"name": "tabletop", "max_episode_steps": 50},
              registry=reg.to_json(), policy="scripted", epsilon=0.1, seed=0)


def time_bare(actor: RobotActor, num_episodes: int) -> tuple[float, int, float]:
  """(wall seconds, env steps, CPU seconds of the busiest process)."""
  start, cpu = time.perf_counter(), time.process_time()
  eps = actor.run_episodes(num_episodes)
  return (time.perf_counter() - start, sum(e.num_steps for e in eps),
          time.process_time() - cpu)


def time_fleet(fleet: Fleet, num_episodes: int) -> tuple[float, int, float]:
  before = [s["cpu_s"] for s in fleet.call_all("stats")]
  start = time.perf_counter()
  eps = list(fleet.collect(num_episodes, first_episode_id=time.monotonic_ns()))
  wall = time.perf_counter() - start
  after = [s["cpu_s"] for s in fleet.call_all("stats")]
  return wall, sum(e.num_steps for e in eps), max(b - a for a, b in zip(before, after))


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="fewer episodes (under a minute)")
  p.add_argument("--episodes", type=int, default=None, help="episodes per setup per round")
  p.add_argument("--rounds", type=int, default=None)
  p.add_argument("--episodes-per-call", type=int, default=16)
  args = p.parse_args(argv)
  n = args.episodes or (100 if args.quick else 400)
  rounds = args.rounds or (3 if args.quick else 5)
  per_call = args.episodes_per_call

  import ray
  ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
  try:
    local = RobotActor(0, **actor_kwargs())
    one = Fleet(ray, 1, actor_kwargs(), episodes_per_call=per_call, num_cpus=1.0)
    two = Fleet(ray, 2, actor_kwargs(), episodes_per_call=per_call, num_cpus=0.5)
    one.wait_ready()
    two.wait_ready()
    local.run_episodes(10)  # Warm up everything once.
    list(one.collect(2 * per_call))
    list(two.collect(4 * per_call))
    # Interleave the setups round by round: the machine is shared and its load drifts,
    # so back-to-back blocks would compare different conditions.
    setups = {"bare loop (1 process)": lambda: time_bare(local, n),
              "Ray, 1 actor": lambda: time_fleet(one, n),
              "Ray, 2 actors": lambda: time_fleet(two, n)}
    times = {k: [] for k in setups}
    cpu = {k: [] for k in setups}
    steps = {k: 0 for k in setups}
    for _ in range(rounds):
      for name, run in setups.items():
        t, s, c = run()
        times[name].append(t)
        cpu[name].append(c)
        steps[name] += s
    one.shutdown()
    two.shutdown()
  finally:
    ray.shutdown()
  # Per setup: the median round (robust to a burst of load from other processes).
  rate = {k: n / float(np.median(v)) for k, v in times.items()}
  names = list(setups)
  print(f"episode collection, tabletop state, scripted + epsilon 0.1, {n} episodes per setup "
        f"per round, {rounds} interleaved rounds (median), {per_call} episodes per actor call, "
        f"{os.cpu_count()} CPUs")
  # If every process had a core to itself, a round would take as long as its busiest
  # process's CPU time: a projection that the shared machine's load does not distort.
  cpu_rate = {k: n / float(np.median(v)) for k, v in cpu.items()}
  print(f"{'setup':24s} {'episodes/s':>11s} {'env steps/s':>12s} {'ep/busiest-cpu-s':>17s}"
        f"   rounds (s)")
  for k in names:
    mean_len = steps[k] / (n * rounds)
    print(f"{k:24s} {rate[k]:11.1f} {rate[k] * mean_len:12.0f} {cpu_rate[k]:17.1f}   "
          + " ".join(f"{t:.2f}" for t in times[k]))
  print("episodes/s is measured wall-clock. ep/busiest-cpu-s divides by the CPU seconds of "
        "the busiest process (the bare loop, or the busiest actor): what each setup would do "
        "with a core per process. Linux autogroup gives each terminal session one fair share "
        "of the CPUs, so on a machine shared with other sessions two actors of one session "
        "compete for that one share.")
  bare_rate, one_rate, two_rate = (rate[k] for k in names)
  bare_cpu, one_cpu, two_cpu = (cpu_rate[k] for k in names)
  figures = {"bare_episodes_per_s": round(bare_rate, 1),
             "ray_1_actor_episodes_per_s": round(one_rate, 1),
             "ray_2_actors_episodes_per_s": round(two_rate, 1),
             "ray_1_actor_vs_bare": round(one_rate / bare_rate, 3),
             "ray_2_actors_vs_1": round(two_rate / one_rate, 3),
             "ray_1_actor_vs_bare_cpu_projection": round(one_cpu / bare_cpu, 3),
             "ray_2_actors_vs_1_cpu_projection": round(two_cpu / one_cpu, 3),
             "episodes_per_setup": n * rounds, "load_average_1min": round(os.getloadavg()[0], 2)}
  print(f"1 Ray actor vs bare: {figures['ray_1_actor_vs_bare']:.2f}x (goal >= 0.9); "
        f"2 actors vs 1: {figures['ray_2_actors_vs_1']:.2f}x (goal >= 1.5)")
  print(json.dumps(figures))
  return figures


if __name__ == "__main__":
  main()
