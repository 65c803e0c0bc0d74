"""Learner throughput: QT-Opt updates with CEM targets, ours (split) vs whole-network reference.

For the state network (batch 256) and the 64x64 image network (batch 64) it measures:
steps/s of a plain supervised step on the same network; steps/s of the full update
(CEM 64/6/2 targets, clipped double Q) for the split design, as the Learner runs it
(`updates_per_call` updates per call on stacked batches) and one per call, and for the
reference that runs the whole network per CEM sample; their ratio; achieved GFLOP/s of the
state update (XLA's cost analysis) against a large f32 matmul whose timing windows are
interleaved with the updates' (so both see the same load on a shared machine); and the
latency of one CEMPolicy action for a single state. A third update, as the tabletop config
runs it (behaviour head, Monte-Carlo bound, terminate head on state labels, on batches
carrying outcomes and state labels), gives what the offline terms cost against the plain
update (`with_terms_vs_plain`). The action is tabletop's: motion, gripper, terminate.

  .venv/bin/python -m benchmarks.learner [--quick] [learner.network.behaviour_sizes=...]

The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from learners import learning, networks
from learners.config import LearnerConfig, NetworkConfig
from learners.policy import CEMPolicy
from mtopt.batch import Batch
from mtopt.config import load_config
from mtopt.specs import ArraySpec, BoundedArraySpec, EnvSpec

MAX_TASKS = 16
# The third update's settings (its learner section; the network's shape is the plain one's).
CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      "tabletop_state.py")
# Tabletop's action: motion (3), gripper (3), terminate (4; CONFIG's terminate head scores it).
ACTION = BoundedArraySpec((5,), np.float32, "action", -1.0, 1.0)
STATE_SPEC = EnvSpec({"state": ArraySpec((32,), np.float32)}, ACTION, 40, terminate_dim=4)
IMAGE_SPEC = EnvSpec({"image": ArraySpec((64, 64, 3), np.uint8),
                      "state": ArraySpec((8,), np.float32)}, ACTION, 40, terminate_dim=4)


def _batch(spec: EnvSpec, size: int, rng: np.random.Generator,
           outcomes: bool = False) -> Batch:
  def obs():
    out = {}
    for k, s in spec.observation.items():
      if s.dtype == np.uint8:
        out[k] = rng.integers(0, 256, (size, *s.shape)).astype(np.uint8)
      else:
        out[k] = rng.normal(size=(size, *s.shape)).astype(np.float32)
    return out

  batch = Batch(obs(), rng.uniform(-1, 1, (size, ACTION.shape[0])).astype(np.float32),
                (rng.random(size) < 0.3).astype(np.float32),
                (rng.random(size) < 0.9).astype(np.float32), obs(),
                rng.integers(0, MAX_TASKS, size).astype(np.int32))
  if outcomes:  # As the sampler emits them: the Monte-Carlo bound, the behaviour loss and
    # the state labels (Q of terminating at every row's state).
    batch = batch._replace(outcome=(rng.random(size) < 0.5).astype(np.float32),
                           steps_after=rng.integers(0, 40, size).astype(np.float32),
                           state_label=(rng.random(size) < 0.3).astype(np.float32))
  return batch


class _Timer:
  """Steps/s of `state = fn(state, batch)[0]`, best of several windows.

  Other processes share this machine's cores, so one figure is the best window (the least
  disturbed) and windows of the things compared are interleaved (see `measure`).
  """

  def __init__(self, fn, state, batch):
    self.fn, self.batch = fn, batch
    self.state = fn(state, batch)[0]  # Compile and warm up.
    jax.block_until_ready(self.state)
    self.best = 0.0
    self.best_per_cpu_s = 0.0

  def window(self, seconds: float, min_steps: int = 2) -> None:
    steps, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while steps < min_steps or time.perf_counter() - start < seconds:
      # One step in flight, as in the Learner's loop (which does not wait on steps): the
      # next step's Python-side dispatch overlaps this one's execution. Waiting on each
      # step adds the dispatch to it; not waiting at all queues far past the window.
      previous, self.state = self.state, self.fn(self.state, self.batch)[0]
      jax.block_until_ready(previous)
      steps += 1
    jax.block_until_ready(self.state)
    self.best = max(self.best, steps / (time.perf_counter() - start))
    # Steps per CPU-second of this process (all its threads): less sensitive than wall time
    # to other processes on the same cores, so a steadier ratio on a shared machine.
    self.best_per_cpu_s = max(self.best_per_cpu_s,
                              steps / max(time.process_time() - cpu_start, 1e-9))


def _supervised_step(network, optimizer):
  """A plain supervised step on the same network: fit Q(s, a) to the batch's reward."""

  def step(state, batch):
    def loss_fn(params):
      logits = networks.q_logits(network, params, batch.observation, batch.task, batch.action)
      return optax.sigmoid_binary_cross_entropy(logits, batch.reward).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    return state._replace(params=optax.apply_updates(state.params, updates),
                          opt_state=opt_state, step=state.step + 1), loss

  return jax.jit(step)


def _flops(jitted, *args) -> float:
  analysis = jitted.lower(*args).compile().cost_analysis()
  analysis = analysis[0] if isinstance(analysis, list) else analysis
  return float(analysis["flops"])


PEAK_MATMUL_N = 2048


def _matmul_timer(n: int = PEAK_MATMUL_N) -> _Timer:
  """Times a large f32 matmul: its GFLOP/s is this device's practical peak."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32) / np.sqrt(n)
  return _Timer(jax.jit(lambda x, _: (x @ a, None)), a, None)


def _matmul_gflops(timer: _Timer, n: int = PEAK_MATMUL_N, per_cpu_s: bool = False) -> float:
  return 2 * n ** 3 * (timer.best_per_cpu_s if per_cpu_s else timer.best) / 1e9


def act_latency_ms(spec: EnvSpec, config: LearnerConfig, params, calls: int) -> tuple:
  policy = CEMPolicy(spec, MAX_TASKS, config.network, params, config.cem)
  obs = {k: v[0] for k, v in _batch(spec, 1, np.random.default_rng(1)).observation.items()}
  for _ in range(5):
    policy(obs, 3)
  times = []
  for i in range(calls):
    t = time.perf_counter()
    policy(obs, i % MAX_TASKS)
    times.append((time.perf_counter() - t) * 1e3)
  return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def measure(name: str, spec: EnvSpec, batch_size: int, budget_s: float, act_calls: int,
            configured: LearnerConfig, rounds: int = 3, reference_rounds: int = 3) -> dict:
  """One network's figures; the steps' timing windows are interleaved `rounds` times (the
  slow reference's only in the last `reference_rounds`), and so are those of the large
  matmul that `peak_gflops` (the denominator of "of peak") comes from: other processes on
  a shared machine change the speed of all of them alike."""
  rng = np.random.default_rng(0)
  batch = jax.device_put(_batch(spec, batch_size, rng))
  row = {"network": name, "batch": batch_size}
  timers = {"matmul": _matmul_timer()}
  for arch in ("split", "whole", "split_terms"):
    # "split_terms": the learner as CONFIG sets it, with the offline terms the plain rows
    # leave out (a behaviour head that CEM searches around, the Monte-Carlo lower bound, the
    # terminate head trained on state labels and scored by CEM).
    terms = arch == "split_terms"
    config = (dataclasses.replace(configured, batch_size=batch_size) if terms else
              LearnerConfig(batch_size=batch_size, network=NetworkConfig(architecture=arch)))
    net = networks.make_q_network(spec, MAX_TASKS, config.network)
    state = learning.init_training_state(net, spec, config, jax.random.PRNGKey(0))
    update = learning.make_update_fn(net, spec, config, MAX_TASKS)
    if terms:
      terms_batch = jax.device_put(_batch(spec, batch_size, rng, outcomes=True))
      if per_call > 1:
        update = learning.make_update_fn(net, spec, config, MAX_TASKS, stacked=True)
        terms_batch = learning.stack_batches([terms_batch] * per_call)
      timers[arch] = _Timer(update, state, terms_batch)
      continue
    flops_key = "update_flops" if arch == "split" else "reference_update_flops"
    row[flops_key] = _flops(update, state, batch)  # Of one update.
    timers[arch] = _Timer(update, state, batch)
    if arch == "split":
      # As the Learner runs it: `updates_per_call` updates per call, on stacked batches.
      per_call = row["updates_per_call"] = learning.updates_per_call(net, config,
                                                                     jax.devices()[:1])
      if per_call > 1:
        stacked = learning.make_update_fn(net, spec, config, MAX_TASKS, stacked=True)
        timers["split_stacked"] = _Timer(stacked, state,
                                         learning.stack_batches([batch] * per_call))
      timers["supervised"] = _Timer(_supervised_step(net, learning.make_optimizer(config)),
                                    state, batch)
      row["act_p50_ms"], row["act_p99_ms"] = act_latency_ms(spec, config, state.params,
                                                            act_calls)
  for i in range(rounds):
    timers["matmul"].window(budget_s / rounds / 2)
    timers["supervised"].window(budget_s / rounds)
    timers["split"].window(budget_s / rounds)
    if "split_stacked" in timers:
      timers["split_stacked"].window(budget_s / rounds)
    timers["split_terms"].window(budget_s / rounds)
    if i >= rounds - reference_rounds:
      timers["whole"].window(budget_s / rounds, min_steps=1)
  row["peak_gflops"] = _matmul_gflops(timers["matmul"])
  # Cores the matmul kept busy (CPU-seconds per wall-second of the best windows).
  row["peak_cores"] = timers["matmul"].best / max(timers["matmul"].best_per_cpu_s, 1e-9)
  # The same in FLOPs per CPU-second of this process (all its threads): a large matmul needs
  # all cores at once and loses more wall time than small ops when other processes take
  # one, so under load this ratio is the steadier one.
  row["peak_gflops_per_cpu_s"] = _matmul_gflops(timers["matmul"], per_cpu_s=True)
  as_learner = timers.get("split_stacked", timers["split"])  # `per_call` updates a call.
  row["update_flops_vs_peak_cpu_time"] = (row["update_flops"] * as_learner.best_per_cpu_s
                                          * per_call / 1e9 / row["peak_gflops_per_cpu_s"])
  row["supervised_steps_per_s"] = timers["supervised"].best
  row["update_steps_per_s"] = as_learner.best * per_call
  row["update_steps_per_s_one_per_call"] = timers["split"].best
  row["update_steps_per_s_with_terms"] = timers["split_terms"].best * per_call
  row["with_terms_vs_plain"] = row["update_steps_per_s_with_terms"] / row["update_steps_per_s"]
  row["reference_steps_per_s"] = timers["whole"].best
  # The reference runs one update per call: launching a call (~0.2-0.3 ms between calls in
  # a profile of ours) is under 1% of its ~45 ms (state) update.
  row["speedup_vs_reference"] = row["update_steps_per_s"] / row["reference_steps_per_s"]
  row["speedup_vs_reference_one_per_call"] = (row["update_steps_per_s_one_per_call"]
                                              / row["reference_steps_per_s"])
  row["speedup_vs_reference_cpu_time"] = (as_learner.best_per_cpu_s * per_call
                                          / timers["whole"].best_per_cpu_s)
  row["update_gflops_per_s"] = row["update_flops"] * row["update_steps_per_s"] / 1e9
  row["update_gflops_per_s_one_per_call"] = (row["update_flops"]
                                             * row["update_steps_per_s_one_per_call"] / 1e9)
  row["reference_gflops_per_s"] = (row["reference_update_flops"]
                                   * row["reference_steps_per_s"] / 1e9)
  return row


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="short timings (under a minute)")
  parser.add_argument("overrides", nargs="*",
                      help="key=value overrides of the configured learner (CONFIG)")
  args = parser.parse_args(argv)
  q = args.quick
  configured = LearnerConfig.from_config(load_config(CONFIG, args.overrides))
  device = jax.devices()[0]
  # More, shorter interleaved windows for the state row: its best windows are then more
  # likely to be the undisturbed ones on a shared machine.
  rows = [measure("state", STATE_SPEC, 256, 2.4 if q else 12.0, 200 if q else 1000,
                  configured, rounds=6 if q else 24, reference_rounds=6 if q else 24),
          # The image reference takes seconds per step on a CPU: one window when quick.
          measure("image64", IMAGE_SPEC, 64, 1.0 if q else 8.0, 100 if q else 500,
                  configured, reference_rounds=1 if q else 3)]
  state_row, image_row = rows
  peak = state_row["peak_gflops"]  # "of peak" is against the matmul timed alongside each row.

  print(f"device: {device.platform} {device.device_kind} x{jax.device_count()}; f32 "
        f"{PEAK_MATMUL_N}^3 matmul peak {peak:.1f} GFLOP/s (timed alongside the state row; "
        f"{image_row['peak_gflops']:.1f} alongside the image row); CEM 64 samples / 6 "
        f"elites / 2 iterations")
  per_call = state_row["updates_per_call"]
  print("update/s: as the Learner runs them, updates per call (on stacked batches): " +
        ", ".join(f"{r['network']} {r['updates_per_call']}" for r in rows) +
        " (learners.learning.updates_per_call); 1/call: one update per call")
  header = ("network", "batch", "supervised/s", "update/s", "1/call", "reference/s",
            "ours/ref", "GFLOP/s", "of peak", "1/call", "act p50 ms", "act p99 ms")
  print(" | ".join(f"{h:>12}" for h in header))
  for r in rows:
    cells = (r["network"], r["batch"], f"{r['supervised_steps_per_s']:.1f}",
             f"{r['update_steps_per_s']:.1f}", f"{r['update_steps_per_s_one_per_call']:.1f}",
             f"{r['reference_steps_per_s']:.2f}", f"{r['speedup_vs_reference']:.1f}x",
             f"{r['update_gflops_per_s']:.1f}",
             f"{r['update_gflops_per_s'] / r['peak_gflops']:.2f}",
             f"{r['update_gflops_per_s_one_per_call'] / r['peak_gflops']:.2f}",
             f"{r['act_p50_ms']:.3f}", f"{r['act_p99_ms']:.3f}")
    print(" | ".join(f"{c:>12}" for c in cells))
  print(f"as configured (configs/tabletop_state.py {' '.join(args.overrides)}: behaviour head "
        f"{configured.network.behaviour_sizes}, terminate head "
        f"{configured.network.terminate_sizes}, state-label weight "
        f"{configured.state_label_weight}, Monte-Carlo bound "
        f"{configured.mc_lower_bound}, {configured.negative_actions} negatives), update/s and "
        "vs plain: " + ", ".join(
            f"{r['network']} {r['update_steps_per_s_with_terms']:.1f} "
            f"({r['with_terms_vs_plain']:.2f})" for r in rows))
  print(f"ours/reference in steps per CPU-second of this process (steadier under load): "
        f"state {state_row['speedup_vs_reference_cpu_time']:.1f}x, image "
        f"{image_row['speedup_vs_reference_cpu_time']:.1f}x")
  print(f"of peak in FLOPs per CPU-second of this process (steadier under load): state "
        f"{state_row['update_flops_vs_peak_cpu_time']:.2f}, image "
        f"{image_row['update_flops_vs_peak_cpu_time']:.2f}")
  print(f"reference GFLOP/s: state {state_row['reference_gflops_per_s']:.1f} "
        f"({state_row['reference_gflops_per_s'] / peak:.2f} of peak), image "
        f"{image_row['reference_gflops_per_s']:.1f}")
  print(f"FLOPs per update (XLA cost analysis): state ours {state_row['update_flops']:.3g}, "
        f"reference {state_row['reference_update_flops']:.3g}; image ours "
        f"{image_row['update_flops']:.3g}, reference {image_row['reference_update_flops']:.3g}")

  # A workload of smaller matmuls cannot beat the large one on a machine to itself; when the
  # reference does, other processes cost the (all-cores) matmul more than the updates. On a
  # CPU the matmul should also keep every core busy: another process, even at low priority,
  # can leave it on about one core of two, and then every "of peak" ratio reads high.
  cores = len(os.sched_getaffinity(0))
  peak_suspect = bool(state_row["reference_gflops_per_s"] > peak or (
      device.platform == "cpu" and state_row["peak_cores"] < 0.8 * cores))
  if peak_suspect:
    print(f"warning: the matmul 'peak' looks low (it kept {state_row['peak_cores']:.1f} of "
          f"{cores} cores busy; reference {state_row['reference_gflops_per_s']:.0f} vs peak "
          f"{peak:.0f} GFLOP/s): the machine is loaded and the wall-time 'of peak' figures "
          "overstate; the CPU-second ones are steadier")
  figures = {
      "device": f"{device.platform}:{device.device_kind}",
      "quick": args.quick,
      "matmul_peak_gflops": round(peak, 2),
      "supervised_steps_per_s_state": round(state_row["supervised_steps_per_s"], 2),
      "updates_per_call": per_call,
      "update_steps_per_s_state": round(state_row["update_steps_per_s"], 2),
      "update_steps_per_s_state_one_per_call": round(
          state_row["update_steps_per_s_one_per_call"], 2),
      "reference_steps_per_s_state": round(state_row["reference_steps_per_s"], 3),
      "update_steps_per_s_state_with_terms": round(state_row["update_steps_per_s_with_terms"],
                                                   2),
      "with_terms_vs_plain_state": round(state_row["with_terms_vs_plain"], 3),
      "with_terms_vs_plain_image": round(image_row["with_terms_vs_plain"], 3),
      "cem_speedup_vs_reference_state": round(state_row["speedup_vs_reference"], 2),
      "cem_speedup_vs_reference_state_one_per_call": round(
          state_row["speedup_vs_reference_one_per_call"], 2),
      "cem_speedup_vs_reference_state_cpu_time": round(
          state_row["speedup_vs_reference_cpu_time"], 2),
      "update_gflops_per_s_state": round(state_row["update_gflops_per_s"], 2),
      "flops_vs_peak": round(state_row["update_gflops_per_s"] / peak, 3),
      "flops_vs_peak_one_per_call": round(state_row["update_gflops_per_s_one_per_call"] / peak,
                                          3),
      "flops_vs_peak_cpu_time": round(state_row["update_flops_vs_peak_cpu_time"], 3),
      "peak_suspect": peak_suspect,
      "matmul_peak_cores_busy": round(state_row["peak_cores"], 2),
      # The same ratio for the FLOP-heavy reference: how far dense work of these shapes gets.
      "flops_vs_peak_reference_state": round(state_row["reference_gflops_per_s"] / peak, 3),
      "supervised_steps_per_s_image": round(image_row["supervised_steps_per_s"], 2),
      "update_steps_per_s_image": round(image_row["update_steps_per_s"], 2),
      "update_steps_per_s_image_one_per_call": round(
          image_row["update_steps_per_s_one_per_call"], 2),
      "reference_steps_per_s_image": round(image_row["reference_steps_per_s"], 3),
      "cem_speedup_vs_reference_image": round(image_row["speedup_vs_reference"], 2),
      "cem_speedup_vs_reference_image_cpu_time": round(
          image_row["speedup_vs_reference_cpu_time"], 2),
      "matmul_peak_gflops_image": round(image_row["peak_gflops"], 2),
      "flops_vs_peak_image": round(image_row["update_gflops_per_s"] / image_row["peak_gflops"],
                                   3),
      "act_latency_p50_ms_state": round(state_row["act_p50_ms"], 3),
      "act_latency_p99_ms_state": round(state_row["act_p99_ms"], 3),
      "act_latency_p50_ms_image": round(image_row["act_p50_ms"], 3),
      "act_latency_p99_ms_image": round(image_row["act_p99_ms"], 3),
  }
  print(json.dumps(figures))
  return figures


if __name__ == "__main__":
  main()
