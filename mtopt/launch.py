"""Program assembly: one MT-Opt training run from a config, on local Ray or a cluster.

    driver (this process)                       Ray actors
    ─────────────────────                       ──────────
    Reverb replay (in-process server) ◄─ episodes ── K RobotActors (CEM over latest Q,
      ▲ labels from the success detector              exploration; or scripted noisy
      │                                               experts for offline data)
    Learner (jitted QT-Opt update) ── params ──► ParameterServer ──► actors, evaluators
      │                                                               │
      └── every eval_every steps ◄── per-task success ── Evaluator actors (greedy CEM)
                                          └──► TaskScheduler of the collecting actors

Modes (`train.mode`): `offline` trains only from an RLDS dataset (given, or collected
first by scripted noisy experts); `online` collects with the current Q while training;
`mixed` does both: the offline dataset in one replay, on-policy episodes in a second, and
`train.online_fraction` of every batch from the second once it has data (QT-Opt).

A run directory holds everything needed to resume: config, task registry, detector,
Reverb checkpoint, Orbax checkpoints and `progress.json` (what was imported, evaluations).
Re-running the same command continues where a killed run stopped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
import time
from typing import Any, NamedTuple

import numpy as np

from mtopt import envs, rlds_format
from mtopt.config import ConfigDict, ConfigError
from mtopt.parameter_server import ParameterServer
from mtopt.policy_client import PulledCEMPolicy
from mtopt.tasks import TaskRegistry

MODES = ("offline", "online", "mixed")


# Run-directory bookkeeping.
def _progress_path(run_dir: str) -> str:
  return os.path.join(run_dir, "progress.json")


def load_progress(run_dir: str) -> dict:
  path = _progress_path(run_dir)
  if not os.path.exists(path):
    return {"imported_episodes": 0, "collected_episodes": 0, "evaluations": []}
  with open(path) as f:
    return json.load(f)


def save_progress(run_dir: str, progress: dict) -> None:
  tmp = _progress_path(run_dir) + ".tmp"
  with open(tmp, "w") as f:
    json.dump(progress, f, indent=1)
  os.replace(tmp, _progress_path(run_dir))


def save_config(run_dir: str, config: ConfigDict) -> None:
  with open(os.path.join(run_dir, "config.json"), "w") as f:
    json.dump(config.to_dict(), f, indent=2, default=list)


def load_run_config(run_dir: str) -> ConfigDict:
  path = os.path.join(run_dir, "config.json")
  if not os.path.exists(path):
    raise ConfigError(f"{run_dir}: not a run directory (no config.json)")
  with open(path) as f:
    return ConfigDict(json.load(f))


def init_ray(config: ConfigDict):
  """Joins the cluster named by RAY_ADDRESS / `ray job submit`, else starts a local Ray."""
  import ray
  if not ray.is_initialized():
    env_vars = {"TF_CPP_MIN_LOG_LEVEL": "2", "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}
    kwargs: dict[str, Any] = dict(runtime_env={"env_vars": env_vars}, log_to_driver=False)
    if not os.environ.get("RAY_ADDRESS"):
      kwargs.update(include_dashboard=False)
    ray.init(**kwargs)
  return ray


# Pieces.
def make_labeller(config: ConfigDict, env, registry: TaskRegistry, run_dir: str, log=print):
  """The success labeller the replay applies to every episode.

  `train.labels`: `ground_truth` labels with the simulator's own success (an upper
  bound, for ablations); `learned` uses the detector in run_dir/detector, training it
  first from simulated examples (the simulator playing the person who gives examples).
  """
  source = config.train.labels
  if source == "ground_truth":
    def ground_truth(episodes):
      return np.stack([np.asarray(ep.success, np.float32) for ep in episodes])
    return ground_truth
  if source != "learned":
    raise ConfigError(f"train.labels must be learned or ground_truth, got {source!r}")
  from success_detectors.detector import DetectorConfig, SuccessDetector
  path = os.path.join(run_dir, "detector")
  if os.path.exists(path):
    return SuccessDetector.load(path)
  from success_detectors import examples_from_sim
  from success_detectors.examples import ExampleSet
  n = int(config.train.detector_episodes_per_task)
  log(f"training the success detector from {n} simulated episodes per task")
  rollouts = examples_from_sim.collect_rollouts(env, n, registry.names, seed=config.seed)
  sets = []
  for task in registry.names:
    pos, neg = examples_from_sim.select_examples(rollouts, task, seed=config.seed)
    idx = np.concatenate([pos, neg])
    sets.append(ExampleSet(rollouts.take(idx).observations,
                           np.full(len(idx), registry.slot(task)),
                           np.arange(len(idx)) < len(pos)))
  dcfg = DetectorConfig.from_dict(config.detector)
  detector = SuccessDetector.create(env.spec(), registry.max_tasks, dcfg)
  detector.train(ExampleSet.concat(sets), {t.slot: t.name for t in registry.active()})
  detector.save(path)
  q = detector.quality()
  worst = min(min(v.get("precision", 1.0), v.get("recall", 1.0)) for v in q.values())
  log(f"detector trained: worst held-out precision/recall {worst:.3f}")
  return detector


def actor_kwargs(config: ConfigDict, registry: TaskRegistry, policy, tasks=None,
                 seed_offset: int = 0, **knobs) -> dict:
  """RobotActor arguments; `tasks` (default: all registered) are the ones it attempts."""
  a = config.actors
  tasks = list(tasks or registry.names)
  weights = list(a.task_weights) if len(tasks) == len(registry.names) else []
  kwargs = dict(env_config=config.env.to_dict(), registry=registry.to_json(), policy=policy,
                scheduler=a.scheduler if weights or a.scheduler != "weighted" else "uniform",
                task_weights=weights, tasks=tasks, seed=config.seed + seed_offset)
  kwargs.update(knobs)
  return kwargs


def scripted_actor_kwargs(config: ConfigDict, registry: TaskRegistry, policy: str = "",
                          **overrides) -> dict:
  """RobotActor arguments for data collection: the config's `actors` policy and noise."""
  a = config.actors
  policy = policy or str(a.policy)
  if policy not in ("scripted", "random"):
    raise ConfigError(f"actors.policy={policy!r}: data collection supports scripted or random")
  kwargs = actor_kwargs(config, registry, policy, gaussian_std=float(a.gaussian_std),
                        epsilon=float(a.epsilon), sticky_prob=float(a.sticky_prob),
                        sticky_steps=int(a.sticky_steps),
                        early_terminate_prob=float(a.early_terminate_prob))
  kwargs.update(overrides)
  if kwargs["scheduler"] == "weighted" and len(kwargs["task_weights"]) != len(kwargs["tasks"]):
    raise ConfigError(f"actors.task_weights: {len(kwargs['task_weights'])} weights for "
                      f"{len(kwargs['tasks'])} tasks")
  return kwargs


def collect_dataset(config: ConfigDict, ray, registry: TaskRegistry, out_dir: str,
                    num_episodes: int, kwargs: dict, num_actors: int | None = None,
                    episodes_per_call: int = 4, overwrite: bool = False,
                    on_episode=None) -> tuple[int, list[int]]:
  """A fleet of robot actors writes `num_episodes` into a new RLDS dataset at `out_dir`.

  Returns (episodes written, ids lost to actor crashes). The dataset is written under
  `out_dir.partial` and renamed when complete, so `out_dir` never holds half a dataset.
  """
  from actors.fleet import Fleet
  num_actors = int(num_actors or config.actors.num_actors)
  spec = envs.make(config.env).spec()
  tmp = out_dir.rstrip("/") + ".partial"
  if os.path.exists(os.path.join(out_dir, "dataset_info.json")) and not overwrite:
    raise rlds_format.DatasetError(f"{out_dir} already holds a dataset; choose a new directory")
  if os.path.exists(tmp):  # Left by a killed collection.
    shutil.rmtree(tmp)
  cpus = float(ray.cluster_resources().get("CPU", 1.0))
  with rlds_format.DatasetWriter(tmp, spec, registry.max_tasks, registry.names,
                                 overwrite=True) as writer, \
       Fleet(ray, num_actors, kwargs, episodes_per_call=episodes_per_call,
             num_cpus=min(float(config.actors.num_cpus), cpus / num_actors)) as fleet:
    for ep in fleet.collect(num_episodes):
      writer.write(ep)
      if on_episode is not None:
        on_episode(ep)
    lost = list(fleet.lost_episode_ids)
  if os.path.exists(out_dir):
    shutil.rmtree(out_dir)
  os.replace(tmp, out_dir)
  return writer.num_written, lost


def offline_dataset(config: ConfigDict, ray, registry: TaskRegistry, run_dir: str, log=print
                    ) -> str:
  """`train.dataset_dir`, or a dataset of scripted noisy experts collected into the run."""
  if config.train.dataset_dir:
    return config.train.dataset_dir
  out = os.path.join(run_dir, "data", "offline")
  if os.path.exists(os.path.join(out, "dataset_info.json")):
    return out
  n = int(config.train.offline_episodes)
  log(f"collecting {n} offline episodes with {config.actors.num_actors} scripted, noisy actors")
  collect_dataset(config, ray, registry, out, n, scripted_actor_kwargs(config, registry,
                                                                       "scripted"))
  return out


def stored_labels(data_dir: str, registry: TaskRegistry) -> dict[int, np.ndarray]:
  """episode id -> labels from DATA_DIR/labels.npz (written by `mtopt tasks add` and bulk
  relabelling), if they were made for this registry's slots; else {} (the labeller runs)."""
  from success_detectors import label_store
  stored = label_store.read_labels(data_dir)
  if stored is None or stored.labels.shape[1] != registry.max_tasks:
    return {}
  if any(stored.task_names[t.slot] != t.name for t in registry.active()):
    return {}  # Labelled for other task slots: stale.
  return stored.by_episode()


def batch_composition(config: ConfigDict, replay) -> dict:
  """Sampler arguments: MT-Opt's rebalancing (equal task shares, `replay.success_fraction`)
  or, with `train.rebalance` off, the data's own proportions: task shares by stored items
  and the overall success fraction (the naive multi-task baseline)."""
  if config.train.rebalance:
    return {"success_fraction": float(config.replay.success_fraction)}
  counts = replay.counts()
  items = {k: counts[k]["success"] + counts[k]["failure"] for k in replay.slots}
  successes = sum(counts[k]["success"] for k in replay.slots)
  shares = {k: float(v) for k, v in items.items() if v > 0}
  if not shares:
    raise ConfigError("train.rebalance=False needs data in the replay before training")
  return {"task_shares": shares,
          "success_fraction": successes / max(1, sum(items.values()))}


class Collector:
  """Online collection in a background thread: a fleet acting by CEM over the latest
  params with exploration, its episodes written (labelled) into the replay."""

  def __init__(self, ray, fleet, replay, progress: dict):
    self._fleet, self._replay, self._progress = fleet, replay, progress
    self._stop = threading.Event()
    self.error: BaseException | None = None
    self.successes: dict[int, list[bool]] = {}
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()

  def _run(self):
    try:
      first = int(self._progress.get("collected_episodes", 0))
      batch = []
      for ep in self._fleet.collect(1 << 40, first_episode_id=(1 << 40) + first):
        batch.append(ep)
        if len(batch) >= 8:
          self._replay.write_many(batch)
          self._progress["collected_episodes"] += len(batch)
          batch = []
        if self._stop.is_set():
          break
    except BaseException as e:  # Surfaced by the driver loop.
      self.error = e

  def stop(self):
    self._stop.set()
    self._thread.join(timeout=30)


# The run.
class Prepared(NamedTuple):
  run_dir: str
  env: Any
  registry: TaskRegistry
  ray: Any
  labeller: Any
  dataset_dir: str | None  # The offline dataset (`offline` and `mixed` modes).


def prepare(config: ConfigDict, log=print) -> Prepared:
  """The run directory, env, task registry, Ray and labeller (training the detector if
  the run has none yet); with `offline`/`mixed`, the offline dataset too."""
  if config.train.mode not in MODES:
    raise ConfigError(f"train.mode must be one of {MODES}, got {config.train.mode!r}")
  run_dir = os.path.abspath(config.run_dir)
  os.makedirs(run_dir, exist_ok=True)
  save_config(run_dir, config)
  env = envs.make(config.env)
  registry = TaskRegistry.load_or_create(run_dir, int(config.max_tasks),
                                         list(config.env.tasks) or env.task_names())
  ray = init_ray(config)
  labeller = make_labeller(config, env, registry, run_dir, log)
  data = None
  if config.train.mode in ("offline", "mixed"):
    data = offline_dataset(config, ray, registry, run_dir, log)
  return Prepared(run_dir, env, registry, ray, labeller, data)


def train(config: ConfigDict, log=print) -> dict:
  """Trains from `config` until `learner.num_steps`; returns the final per-task success."""
  from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
  from actors.evaluator import evaluate
  from actors.fleet import Fleet
  from actors.robot_actor import remote_robot_actor
  from learners.config import LearnerConfig
  from learners.learner import Learner
  from replay.mixing import MixedBatches
  from replay.reverb_replay import ReverbReplay

  t = config.train
  run_dir, env, registry, ray, labeller, data = prepare(config, log)
  spec = env.spec()
  progress = load_progress(run_dir)
  lcfg = LearnerConfig.from_config(config)
  tasks = list(t.tasks) or registry.names  # What this run trains and evaluates.
  unknown = [x for x in tasks if x not in registry]
  if unknown:
    raise ConfigError(f"train.tasks names unknown task(s) {unknown}; known: {registry.names}")
  slots = [registry.slot(x) for x in tasks]
  replay = ReverbReplay.from_config(config, spec, run_dir=run_dir, labeller=labeller,
                                    slots=slots)
  # `mixed`: on-policy episodes go to their own replay, a fixed share of every batch.
  fraction = float(t.online_fraction) if t.mode == "mixed" else 0.0
  if not 0.0 <= fraction < 1.0:
    raise ConfigError(f"train.online_fraction must be in [0, 1), got {fraction}")
  online = (ReverbReplay.from_config(config, spec, run_dir=os.path.join(run_dir, "online"),
                                     labeller=labeller, slots=slots) if fraction else None)
  if data is not None and not progress["imported_episodes"]:
    chunk, n = [], 0
    stored = stored_labels(data, registry) if t.labels == "learned" else {}
    if stored:
      log(f"using the detector labels stored with {data} for {len(stored)} episodes")
    for ep in rlds_format.read_episodes(data):
      if ep.task_id not in slots and replay.sharing == "none":
        continue  # Another task's episode, and this run does not share.
      if ep.labels is None and ep.episode_id in stored:
        ep = dataclasses.replace(ep, labels=stored[ep.episode_id])
      chunk.append(ep)
      if len(chunk) == 256:
        replay.write_many(chunk)
        n, chunk = n + len(chunk), []
    if chunk:
      replay.write_many(chunk)
      n += len(chunk)
    progress["imported_episodes"] = n
    replay.checkpoint()
    save_progress(run_dir, progress)
    counts = replay.counts()
    held = ", ".join(f"{registry.name(k)} {counts[k]['success']}/"
                     f"{counts[k]['success'] + counts[k]['failure']}" for k in replay.slots)
    log(f"imported {n} episodes from {data}; successes/items per task: {held}")

  ps = ray.remote(ParameterServer).remote()
  publish = lambda params, step: ps.publish.remote(params, step)  # noqa: E731
  a = config.actors
  collector = None
  served = a.get("mode", "ray") == "served"  # Robots act and upload through `mtopt serve`.
  if t.mode in ("online", "mixed") and not served:
    policy = PulledCEMPolicy(ps, spec, registry.max_tasks, lcfg.network, lcfg.cem,
                             gaussian_std=t.explore_gaussian_std, epsilon=t.explore_epsilon,
                             seed=config.seed)
    fleet = Fleet(ray, int(a.num_actors), actor_kwargs(config, registry, policy, tasks),
                  episodes_per_call=1, num_cpus=float(a.num_cpus))
    collector = Collector(ray, fleet, online or replay, progress)
  evaluator_cls = remote_robot_actor(ray, num_cpus=0)
  greedy = PulledCEMPolicy(ps, spec, registry.max_tasks, lcfg.network, lcfg.cem)
  evaluators = [evaluator_cls.remote(robot_id=1000 + i, **actor_kwargs(config, registry, greedy))
                for i in range(int(config.eval.num_actors))]

  def sampler_of(r):
    return lambda size: r.sampler(size, wait_seconds=float(t.wait_for_data_seconds),
                                  **batch_composition(config, r))
  if online is None:
    sampler = sampler_of(replay)(lcfg.batch_size)
  else:
    min_size = int(config.replay.min_size)
    sampler = MixedBatches(
        sampler_of(replay), sampler_of(online), lcfg.batch_size, fraction,
        online_ready=lambda: any(max(c.values()) >= min_size for c in online.counts().values()))
  learner = Learner(spec, registry.max_tasks, lcfg, sampler, run_dir=run_dir,
                    seed=config.seed, publish=publish)
  if t.mode in ("online", "mixed") and served:
    from mtopt.serving.fleet_mode import ServedFleet
    fleet = ServedFleet(ray, config, registry, tasks, learner, online or replay, progress, log)
    collector = fleet.collector
  from tensorboardX import SummaryWriter
  tb = SummaryWriter(os.path.join(run_dir, "eval"))

  def run_eval():
    ray.get(ps.publish.remote(learner.get_params(), learner.steps))
    rates = evaluate(ray, evaluators, tasks, int(config.eval.episodes_per_task))
    progress["evaluations"].append({"step": learner.steps, "success": rates,
                                    "time": time.time()})
    for task, r in rates.items():
      tb.add_scalar(f"success/{task}", r, learner.steps)
    tb.add_scalar("success/mean", float(np.mean(list(rates.values()))), learner.steps)
    if collector is not None:  # Underperforming tasks get more attempts.
      fleet.call_all("set_success_estimates", rates)
    learner.save()
    for r in (replay, online):
      if r is not None:
        r.checkpoint()
    save_progress(run_dir, progress)
    return rates

  total, every = int(lcfg.num_steps), int(t.eval_every)
  last_rates = progress["evaluations"][-1]["success"] if progress["evaluations"] else {}
  if learner.steps and learner.steps < total:
    log(f"resuming from step {learner.steps}")
  with Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                transient=False) as bar:
    job = bar.add_task("train", total=total, completed=learner.steps, info="")
    while learner.steps < total:
      n = min(every - learner.steps % every, total - learner.steps)
      metrics = learner.run(n)
      if collector is not None and collector.error is not None:
        raise RuntimeError(f"online collection failed: {collector.error}") from collector.error
      last_rates = run_eval()
      info = (f"loss {float(metrics.get('loss', np.nan)):.3f}  success "
              f"{np.mean(list(last_rates.values())):.2f}  episodes "
              f"{progress['imported_episodes'] + progress['collected_episodes']}")
      bar.update(job, completed=learner.steps, info=info)
  if not progress["evaluations"] or progress["evaluations"][-1]["step"] != learner.steps:
    last_rates = run_eval()
  results = {"step": learner.steps, "success": last_rates,
             "mean_success": float(np.mean(list(last_rates.values()))),
             "evaluations": progress["evaluations"]}
  with open(os.path.join(run_dir, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  plot_success(progress["evaluations"], os.path.join(run_dir, "success.png"))
  # Shut down: collection first, then the sampler's in-flight reads, then the server.
  if collector is not None:
    collector.stop()
    fleet.shutdown()
  for actor in [*evaluators, ps]:  # Several runs may share one Ray (experiments).
    ray.kill(actor)
  sampler.close()
  learner.close()
  tb.close()
  for r in (replay, online):
    if r is not None:
      r.close()
  return results


def evaluate_checkpoint(run_dir: str, episodes_per_task: int | None = None,
                        step: int | None = None) -> dict:
  """Per-task success of a run's checkpoint (greedy CEM, ground truth)."""
  import jax
  from actors.evaluator import evaluate
  from actors.robot_actor import remote_robot_actor
  from learners import learning, networks
  from learners.checkpointing import Checkpointer
  from learners.config import LearnerConfig

  config = load_run_config(run_dir)
  registry = TaskRegistry.load(run_dir)
  spec = envs.make(config.env).spec()
  lcfg = LearnerConfig.from_config(config)
  ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"))
  if ckpt.latest_step() is None:
    raise ConfigError(f"{run_dir}: no checkpoint to evaluate")
  net = networks.make_q_network(spec, registry.max_tasks, lcfg.network)
  like = learning.init_training_state(net, spec, lcfg, jax.random.PRNGKey(0))
  state = ckpt.restore(like, step)
  ckpt.close()
  ray = init_ray(config)
  ps = ray.remote(ParameterServer).remote()
  ray.get(ps.publish.remote(jax.device_get(state.params), int(state.step)))
  greedy = PulledCEMPolicy(ps, spec, registry.max_tasks, lcfg.network, lcfg.cem)
  cls = remote_robot_actor(ray, num_cpus=0)
  actors = [cls.remote(robot_id=1000 + i, **actor_kwargs(config, registry, greedy))
            for i in range(int(config.eval.num_actors))]
  n = episodes_per_task or int(config.eval.episodes_per_task)
  rates = evaluate(ray, actors, registry.names, n)
  return {"step": int(state.step), "success": rates,
          "mean_success": float(np.mean(list(rates.values())))}


def plot_success(evaluations: list[dict], path: str) -> None:
  """Success over training steps, one line per task, and the mean in black."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  if not evaluations:
    return
  steps = [e["step"] for e in evaluations]
  tasks = list(evaluations[-1]["success"])
  fig, ax = plt.subplots(figsize=(7, 4))
  for task in tasks:
    ax.plot(steps, [e["success"].get(task, np.nan) for e in evaluations], label=task, lw=1)
  ax.plot(steps, [np.mean(list(e["success"].values())) for e in evaluations], "k", lw=2.5,
          label="mean")
  ax.set(xlabel="learner step", ylabel="success rate", ylim=(-0.02, 1.02),
         title="per-task success over training")
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def success_table(results: dict, title: str = "per-task success"):
  from rich.table import Table
  table = Table(title=f"{title} (step {results['step']})")
  table.add_column("task")
  table.add_column("success", justify="right")
  for task, r in results["success"].items():
    table.add_row(task, f"{r:.2f}")
  table.add_row("[bold]mean", f"[bold]{results['mean_success']:.2f}")
  return table
