"""The training program's pipeline: the learner inside the program vs the same learner fed
from memory, episodes into the replay, and the bytes moved per learner step.

    .venv/bin/python -m benchmarks.pipeline [--quick] [--placement driver|actors] [key=value ...]

The program is the real one (`mtopt.program.build`: Reverb replay with its episode log,
the rebalancing sampler, labelling on the write path, 4 robot actors acting by CEM over
the newest published Q, the parameter server, the learner with its QT-Opt update), built
from configs/tabletop_state.py in `online` mode. `key=value` overrides that config (e.g.
`train.labels=learned`). With RAY_ADDRESS set it joins that cluster (see
experiments/two_node_cluster.sh); `--placement actors` then puts the replay and the learner
on the nodes their resources name.

Timing: the learner runs `rounds` windows of `steps` updates inside the program while the
actors collect (with `train.episodes_per_step` > 0, tied to the learner's steps by the
run's collection budget, as in `mtopt train`); the actors are then stopped and it runs
them again (what sampling and the program cost without the actors' CPU); then the same
Learner code (same config, in this process) runs the same windows on batches sampled from
that replay once and held in memory. The figure for each is the median window; the load average is printed beside
them, because on a shared 2-core machine the actors and other people's work take the
learner's cores. Bytes are estimated from array sizes (not counted on the wire): a sampled
item fetches its whole episode's chunk; params go to the parameter server and from there to
each actor once per publication. The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import tempfile
import time

import jax
import numpy as np

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      "tabletop_state.py")


def nbytes(tree) -> int:
  return int(sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(tree)))


def load() -> float:
  return os.getloadavg()[0]


def windows(run, steps: int, rounds: int) -> list[float]:
  """Seconds of each of `rounds` calls `run(steps)`."""
  out = []
  for _ in range(rounds):
    t0 = time.perf_counter()
    run(steps)
    out.append(time.perf_counter() - t0)
  return out


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="shorter windows (a few minutes)")
  p.add_argument("--placement", default="driver", choices=("driver", "actors"))
  p.add_argument("--actors", type=int, default=4)
  p.add_argument("overrides", nargs="*", help="config key=value")
  args = p.parse_args(argv)
  steps, rounds = (100, 2) if args.quick else (400, 3)

  from learners.learner import Learner
  from mtopt import launch
  from mtopt.config import load_config
  from mtopt.program import budget as budget_lib, build, nodes
  from mtopt.program.learner_node import RemoteLearner
  from mtopt.program.replay_node import RemoteReplay
  from mtopt.program.run_dir import load_progress
  run_dir = tempfile.mkdtemp(prefix="pipeline_")
  config = load_config(CONFIG, [
      f"run_dir={run_dir}", "train.mode=online", "train.labels=ground_truth",
      f"actors.num_actors={args.actors}", "actors.num_cpus=0.25", "eval.episodes_per_task=0",
      "replay.min_size=8", "learner.num_steps=1000000", "learner.checkpoint_every=0",
      f"program.placement={args.placement}", "replay.num_cpus=0.25", "learner.num_cpus=0.5",
      "labeller.num_cpus=0.25", *args.overrides])
  with contextlib.ExitStack() as stack:
    prepared = launch.prepare(config, log=lambda *a, **k: None)
    ray = prepared.ray
    run = build.build(config, prepared, load_progress(run_dir), stack, log=print)
    learner, collector = run.learner, run.collector
    budget_lib.run_learner(learner, 2 * int(config.learner.updates_per_call) + 8)  # Compile.
    if run.budget is not None:  # train.episodes_per_step: paced as `mtopt train` paces it.
      run.budget.start(collector.collected, learner.steps)

    def in_program_steps(n: int) -> None:
      budget_lib.run_learner(learner, n, run.budget, check=collector.check,
                             steps_per_check=int(config.learner.publish_every))

    waited_before = run.budget.waited if run.budget is not None else 0.0
    before = (time.perf_counter(), collector.collected, load())
    in_program = windows(in_program_steps, steps, rounds)
    after = (time.perf_counter(), collector.collected, load())
    waited = run.budget.waited - waited_before if run.budget is not None else 0.0
    collector.check()
    episodes_per_s = (after[1] - before[1]) / (after[0] - before[0])
    episodes_per_step = (after[1] - before[1]) / (steps * rounds)
    params_bytes = nbytes(learner.get_params())
    collector.stop()  # The actors stop: nothing else of the program runs from here.
    stopped = windows(lambda n: budget_lib.run_learner(learner, n), steps, rounds)
    replay = run.replays[0]
    client = replay.client(config) if isinstance(replay, RemoteReplay) else replay
    sampler = nodes.make_sampler(config, int(config.learner.batch_size), client)
    stack.callback(sampler.close)
    held = [next(sampler) for _ in range(64)]
    episode_bytes = float(np.mean([nbytes((ep.observations, ep.actions))
                                   for ep in itertools.islice(client.episodes(), 50)]))
    from learners.config import LearnerConfig
    alone = Learner(prepared.spec, prepared.registry.max_tasks, LearnerConfig.from_config(config),
                    itertools.cycle(held), seed=config.seed, publish=lambda *a: None)
    alone.run(2 * int(config.learner.updates_per_call) + 8)  # Compile.
    quiet = load()
    fed = windows(alone.run, steps, rounds)
    nodes_info = ([r.info() for r in run.replays if isinstance(r, RemoteReplay)],
                  learner.info() if isinstance(learner, RemoteLearner) else None)
    cluster = {k: v for k, v in ray.cluster_resources().items() if not k.startswith("node:")}
  in_rate = steps / float(np.median(in_program))
  alone_rate = steps / float(np.median(fed))
  stopped_rate = steps / float(np.median(stopped))
  batch_bytes = nbytes(held[0])
  k = int(config.replay.get("transitions_per_sample", 1))
  sampled_bytes = int(config.learner.batch_size) / k * episode_bytes
  publish = int(config.learner.publish_every)
  params_per_step = params_bytes * (1 + args.actors) / publish
  hops = 2 if args.placement == "actors" else 1  # Actor -> driver (-> replay node).
  episodes_bytes = episode_bytes * episodes_per_step * hops
  total = sampled_bytes + params_per_step + episodes_bytes
  print(f"pipeline: tabletop state, online, {args.actors} robot actors, placement "
        f"{args.placement}, batch {config.learner.batch_size}, labels {config.train.labels}; "
        f"{rounds} windows of {steps} updates (median); {os.cpu_count()} CPUs, Ray {cluster}")
  for infos in nodes_info[0]:
    print(f"  replay node {infos['address']} {infos['resources']}")
  if nodes_info[1]:
    print(f"  learner node {nodes_info[1]['address']} {nodes_info[1]['resources']}")
  print(f"{'learner':34s} {'updates/s':>10s}  windows (s)   load avg (1 min)")
  print(f"{'inside the program (actors on)':34s} {in_rate:10.1f}  "
        + " ".join(f"{t:.2f}" for t in in_program) + f"   {before[2]:.2f} -> {after[2]:.2f}")
  print(f"{'inside the program, actors stopped':34s} {stopped_rate:10.1f}  "
        + " ".join(f"{t:.2f}" for t in stopped))
  print(f"{'same learner fed from memory':34s} {alone_rate:10.1f}  "
        + " ".join(f"{t:.2f}" for t in fed) + f"   {quiet:.2f}")
  print(f"learner_in_program_vs_alone {in_rate / alone_rate:.2f} (goal >= 0.9); the "
        f"reference figure of this machine is the memory-fed learner's {alone_rate:.1f}/s")
  paced = (f"; the learner waited {waited:.1f} s of {sum(in_program):.1f} s for them "
           f"(train.episodes_per_step={config.train.episodes_per_step:g})"
           if run.budget is not None else "")
  print(f"episodes into the replay: {episodes_per_s:.1f}/s from {args.actors} actors "
        f"({episodes_per_step:.2f} per learner step){paced}")
  print(f"bytes per learner step (estimated): sampled {sampled_bytes / 1e3:.1f} kB (batch "
        f"rows {batch_bytes / 1e3:.1f} kB), params {params_per_step / 1e3:.1f} kB "
        f"({params_bytes / 1e3:.0f} kB x {1 + args.actors} every {publish} steps), episodes "
        f"{episodes_bytes / 1e3:.1f} kB; total {total / 1e3:.1f} kB")
  result = dict(placement=args.placement, actors=args.actors, quick=args.quick,
                learner_in_program_updates_per_s=round(in_rate, 2),
                learner_alone_updates_per_s=round(alone_rate, 2),
                learner_in_program_actors_stopped_updates_per_s=round(stopped_rate, 2),
                learner_in_program_vs_alone=round(in_rate / alone_rate, 3),
                episodes_per_s_into_replay=round(episodes_per_s, 2),
                episodes_per_learner_step=round(episodes_per_step, 3),
                learner_waited_for_episodes_s=round(waited, 2),
                bytes_per_learner_step=int(total), sampled_bytes_per_step=int(sampled_bytes),
                batch_bytes=batch_bytes, params_bytes=params_bytes,
                episode_bytes=int(episode_bytes), load_avg=[before[2], after[2], quiet],
                cpus=os.cpu_count(), cluster=cluster)
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main()
