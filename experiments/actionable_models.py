"""Actionable Models on tabletop: goal reaching from unlabelled multi-task data, its
ablations beside goal-conditioned BC, and its use downstream.

    python -m experiments.actionable_models [--quick] [--dev] [--seeds 0 1 2]
        [--parts goals downstream rare_choice] [--curve-steps 500 1000 ...]

The protocol, fixed before any result was looked at (see `experiments/protocol.py`):

- Data: configs/tabletop_goals.py's collection, 3000 episodes of the scripted noisy
  experts (epsilon 0.3) over all fifteen tabletop tasks, objects respawned every third
  episode; collection seed 0, by one robot actor so that the seed gives the same data (the
  reports before this line's commit collected with two, and their data cannot be made
  again). No labels or rewards are used by the goal learners.
- Goals (`actors/goal_evaluation.py`): 50 per kind from held-out expert episodes (start
  states of evaluation seed 20261203, disjoint from the data's): `move` (one cube into
  the bin, onto the plate, next to another), `lift` (a cube held up), `two_cubes` (two of
  those one after the other: no single training episode does two). Reached when every
  cube is within 3 cm of its goal position; the horizon is 50 steps per task (100 for
  two_cubes). The same goals and start states for every method and seed.
- Methods, each 10000 gradient steps at batch 256 on the same relabelled data:
  `am`: the config (in-episode goals + 30% chained goals, 16 artificial negatives per row,
  the learner's MC bound and behaviour head); `am_no_negatives` (negative_actions 0);
  `am_no_chaining` (chain_prob 0); `gcbc`: goal-conditioned BC (`learners/baselines.py`
  bc on the in-episode relabelled rows: every such row reaches its goal).
- Seeds 0, 1, 2 (network initialisation, CEM noise and relabelling draws). 95% Wilson
  intervals per kind and a normal interval for the mean over kinds, pooled over seeds.
- Downstream (`--parts downstream`): the task-conditioned learner (configs/tabletop_state.py
  settings for offline runs, i.e. one behaviour mode; all fifteen tasks, ground-truth
  labels, all-task sharing, rebalanced batches) on the same dataset, for the rare task
  place_red_in_bin (1.6% of the tuning data's episodes succeed at it), from scratch and
  initialised from seed s's `am` network (its terminate head, which AM's network lacks,
  fresh); success on 50 fixed start states (evaluation seed 20261203) after 500, 1000,
  2000, 4000 and 8000 steps. Target: 0.8 x the scratch learner's success at 8000 steps
  (per seed); the result is the steps each needs to reach it (the first evaluated step at
  or above it).
  place_red_in_bin was the task until 5e7c290; the scratch learner never learned it (at most
  1 of 50 start states at any step, both report runs), so no target meant anything. Rule
  fixed before the tuning run that replaces it (`--dev --parts rare_choice`): among the
  nine bin, plate and push tasks (RARE_CANDIDATES: each needs more than reach and lift),
  the one the scratch learner (seed 0, 8000 steps, tuning data and start states) succeeds
  at most, if at least RARE_MIN_SUCCESS (0.2; ties: the rarer in the data); otherwise
  place_red_in_bin stays and the part is reported as unmeasurable at this budget. None did
  (place_red_in_bin 0.08, the rest 0.00; results/actionable_models_dev_rare_choice.md): with
  fifteen tasks in every batch a task with 1-3% successes gets little. Second rule, fixed
  before its run: the task learner's batches focus on the rare task (every row for it, all
  episodes shared by its labels, as MT-Opt's fine-tuning of a new task focuses on it); if
  the scratch learner reaches RARE_MIN_SUCCESS at 8000 steps on the tuning data (seed 0,
  `--dev --parts downstream --seeds 0`), the report uses that design; otherwise the part
  is unmeasurable at this budget. It scored 0.00 (and from AM 0.02;
  results/actionable_models_dev_downstream_focus.md), so the batches stay over all tasks
  and the part, still run by default, measures a task no learner here learns. Third rule:
  a curve to 32000 steps (`--curve-steps`) if the scratch learner reaches
  RARE_MIN_SUCCESS by then on the tuning data; it reached 0.08
  (results/actionable_models_dev_downstream32k.md), so the curve stays at 8000.
- Acting variants (`--acting`, names from `experiments.offline_tabletop.ACTING`): `am`'s
  trained parameters also act with other CEM settings, on the same goals and start states:
  rows `am+NAME`, paired with `am`'s.
- Tuning (`--dev`) uses collection seed 1 and goal seed 7; the reported numbers never do.

Results: results/actionable_models.{json,md} (or *_dev / *_quick), stamped with the
commit, the resolved config and the data's hash; per-run results under --work-dir are
reused only by an identical run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time

import numpy as np

from experiments import protocol
from experiments.offline_tabletop import ACTING
from mtopt.config import load_config

ROOT = protocol.ROOT
CONFIG = os.path.join(ROOT, "configs", "tabletop_goals.py")
TASK_CONFIG = os.path.join(ROOT, "configs", "tabletop_state.py")
METHODS = {"am": [], "am_no_negatives": ["learner.negative_actions=0"],
           "am_no_chaining": ["hindsight.chain_prob=0.0"], "gcbc": ["hindsight.chain_prob=0.0"]}
EPISODES = 3000
REPORT = {"collect_seed": 0, "goal_seed": 20261203}
DEV = {"collect_seed": 1, "goal_seed": 7}
RARE_TASK = "place_red_in_bin"
# The tasks that need more than the frequent skills (reach, lift): the downstream task is
# chosen among them on the tuning data (`rare_task_choice`), and only if the scratch
# learner reaches RARE_MIN_SUCCESS on it, so that steps to a target can mean something.
RARE_CANDIDATES = [f"place_{c}_{w}" for w in ("in_bin", "on_plate")
                   for c in ("red", "green", "blue")] + [
    "push_red_to_green", "push_green_to_blue", "push_blue_to_red"]
RARE_MIN_SUCCESS = 0.2
CURVE_STEPS = (500, 1000, 2000, 4000, 8000)
TARGET_FRACTION = 0.8


def dataset(config, work_dir: str, collect_seed: int, episodes: int) -> str:
  """The experiment's dataset, collected once into work_dir/data."""
  from mtopt import envs
  from mtopt.program import collection, nodes
  from mtopt.tasks import TaskRegistry
  out = os.path.join(work_dir, "data", f"goals_seed{collect_seed}_{episodes}")
  if not os.path.exists(os.path.join(out, "dataset_info.json")):
    print(f"collecting {episodes} episodes", flush=True)
    with envs.make(config.env) as env:
      registry = TaskRegistry.from_names(int(config.max_tasks), env.task_names())
    collection.collect_dataset(config, nodes.init_ray(config), registry, out, episodes,
                               nodes.scripted_actor_kwargs(config, registry, "scripted"),
                               num_actors=1)  # One actor: the same data from the same seed.
  return out


def train_goal_method(method: str, config, spec, data, max_tasks: int, seed: int):
  """(act_batch, params or None, seconds) of one goal-reaching method."""
  from learners.baselines import BaselineConfig, BaselineLearner
  from learners.config import LearnerConfig
  from learners.goal_conditioned import goal_env_spec
  from mtopt.program import goal_training
  lcfg = LearnerConfig.from_config(config)
  batches = goal_training.sampler(config, data, max_tasks, seed)
  t0 = time.time()
  if method == "gcbc":
    learner = BaselineLearner(goal_env_spec(spec, goal_training.goal_spec(config)), max_tasks,
                              BaselineConfig(method="bc", batch_size=lcfg.batch_size), batches,
                              seed=seed, discrete_dims=tuple(config.cem.discrete_dims))
    learner.run(lcfg.num_steps)
    return learner.act_batch, None, time.time() - t0
  with goal_training.make_learner(config, spec, max_tasks, batches, seed=seed) as learner:
    learner.run(lcfg.num_steps)
    params = learner.get_params()
  return (goal_training.cem_act(config, spec, max_tasks, params, seed), params,
          time.time() - t0)


def summarize(per_seed: dict) -> dict:
  """{seed: {kind: reached per goal}} -> protocol summary with `per_goal_kind`."""
  s = protocol.summarize(per_seed)
  s["per_goal_kind"] = s.pop("per_task")
  s["goals_per_kind"] = s.pop("episodes_per_task")
  return s


@contextlib.contextmanager
def _task_learner(task_config, spec, data_dir: str, goals):
  """(registry, replay, tspec, lcfg) of the task-conditioned learner on the dataset; the
  replay closes on exit."""
  from experiments.offline_tabletop import import_replays
  from learners.config import LearnerConfig
  from learners.goal_conditioned import with_goal_observation
  from mtopt.program.nodes import make_labeller
  from mtopt.tasks import TaskRegistry
  registry = TaskRegistry.from_names(int(task_config.max_tasks), list(task_config.env.tasks))
  replays = import_replays(task_config, spec, registry,
                           make_labeller(task_config, None, registry, ""), data_dir)
  replays["none"].close()
  try:
    yield (registry, replays["all"], with_goal_observation(spec, goals),
           LearnerConfig.from_config(task_config))
  finally:
    replays["all"].close()


def task_curve(task_config, setup, goals, tasks, init, seed: int, eval_seed: int,
               per_task: int, steps):
  """[{task: success}] of the task-conditioned learner after each of `steps`."""
  from actors.evaluator import evaluate_in_process
  from learners.learner import Learner
  from learners.policy import CEMPolicy
  from mtopt import envs
  from replay.hindsight import with_goal_inputs
  registry, replay, tspec, lcfg = setup
  sampler = replay.sampler(lcfg.batch_size)
  policy = CEMPolicy(tspec, registry.max_tasks, lcfg.network, None, lcfg.cem, seed=seed)

  def act(obs, task):
    return policy.act_batch(goals.observation(obs, None), task)
  curve, done = [], 0
  try:
    with Learner(tspec, registry.max_tasks, lcfg, with_goal_inputs(sampler, goals),
                 seed=seed, init_params=init) as learner:
      for step in steps:
        learner.run(step - done)
        done = step
        policy.set_params(learner.get_params())
        r = evaluate_in_process(lambda: envs.make(task_config.env, seed=[seed, 1]), act,
                                list(tasks), [registry.slot(t) for t in tasks], per_task,
                                eval_seed)
        curve.append({t: float(np.mean(r[t]["success"])) for t in tasks})
        print(f"seed {seed} {'am' if init else 'scratch'} step {step}: " + ", ".join(
            f"{t} {v:.2f}" for t, v in curve[-1].items()), flush=True)
  finally:
    sampler.close()
  return curve


def downstream(task_config, spec, data_dir: str, goal_params: dict, seeds, goals,
               eval_seed: int, per_task: int, steps=CURVE_STEPS) -> dict:
  """Learning curves of the task-conditioned learner on RARE_TASK, from scratch and from
  each seed's `am` parameters."""
  curves = {}
  with _task_learner(task_config, spec, data_dir, goals) as setup:
    for seed in seeds:
      for start in ("scratch", "am"):
        init = goal_params[seed] if start == "am" else None
        curve = task_curve(task_config, setup, goals, [RARE_TASK], init, seed, eval_seed,
                           per_task, steps)
        curves.setdefault(str(seed), {})[start] = [c[RARE_TASK] for c in curve]
  out = {"task": RARE_TASK, "steps": list(steps), "curves": curves, "per_seed": {}}
  for seed, c in curves.items():
    target = TARGET_FRACTION * c["scratch"][-1]
    first = {k: next((s for s, v in zip(steps, c[k]) if v >= target and v > 0), None)
             for k in c}
    ratio = (first["am"] / first["scratch"]) if first["am"] and first["scratch"] else None
    out["per_seed"][seed] = {"target": target, "steps_to_target": first, "ratio": ratio}
  return out


def rare_task_choice(task_config, spec, data_dir: str, goals, eval_seed: int,
                     per_task: int, steps: int = CURVE_STEPS[-1]) -> dict:
  """The tuning data's choice of RARE_TASK (`--dev --parts rare_choice`): the scratch
  learner (seed 0, the curves' last step) on every RARE_CANDIDATES task; the task is the
  one it learns best (ties: the rarer in the data), if that reaches RARE_MIN_SUCCESS."""
  with _task_learner(task_config, spec, data_dir, goals) as setup:
    registry, replay = setup[:2]
    counts = replay.counts()
    share = {t: counts[registry.slot(t)]["success"]
             / max(1, sum(counts[registry.slot(t)].values())) for t in RARE_CANDIDATES}
    final = task_curve(task_config, setup, goals, RARE_CANDIDATES, None, 0, eval_seed,
                       per_task, [steps])[-1]
  best = max(RARE_CANDIDATES, key=lambda t: (final[t], -share[t]))
  return {"steps": steps, "scratch_success": final, "data_success_share": share,
          "choice": best if final[best] >= RARE_MIN_SUCCESS else None}


def markdown(out: dict) -> str:
  meta = out["meta"]
  lines = ["# Actionable Models on tabletop", "",
           f"{meta['episodes_per_task']} goals per kind and seed (paired), seeds {meta['seeds']}, "
           f"{meta['steps']} gradient steps at batch {meta['batch_size']} for every method; 95% "
           f"intervals pooled over seeds. Data: {meta['episodes']} episodes, sha "
           f"{meta['data_sha'][:12]}. Commit {meta['commit'][:10]}"
           f"{' (dirty tree)' if meta['dirty'] else ''}.", ""]
  if out["methods"]:
    kinds = list(next(iter(out["methods"].values()))["per_goal_kind"])
    lines += ["| method | mean [95% CI] | seed means | " + " | ".join(kinds) + " |",
              "|---|---|---|" + "---|" * len(kinds)]
    for m, r in out["methods"].items():
      lines.append(f"| {m} | {r['mean']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] | "
                   + ", ".join(f"{v:.2f}" for v in r["seed_means"].values()) + " | "
                   + " | ".join(f"{r['per_goal_kind'][k]['rate']:.2f} "
                                f"[{r['per_goal_kind'][k]['ci'][0]:.2f}, "
                                f"{r['per_goal_kind'][k]['ci'][1]:.2f}]" for k in kinds) + " |")
    lines.append("")
  d = out.get("downstream")
  if d:
    lines += [f"## Downstream: {d['task']}, success on {meta['episodes_per_task']} start states",
              "", "| seed | start | " + " | ".join(str(s) for s in d["steps"]) +
              " | steps to target |", "|---|---|" + "---|" * (len(d["steps"]) + 1)]
    for seed, c in d["curves"].items():
      ps = d["per_seed"][seed]
      for start, curve in c.items():
        lines.append(f"| {seed} | {start} | " + " | ".join(f"{v:.2f}" for v in curve)
                     + f" | {ps['steps_to_target'][start]} (target {ps['target']:.2f}) |")
    lines.append("")
  c = out.get("rare_choice")
  if c:
    lines += [f"## Rare-task choice: scratch learner, seed 0, {c['steps']} steps, "
              f"{meta['episodes_per_task']} start states", "",
              "| task | success | data success share |", "|---|---|---|"]
    lines += [f"| {t} | {v:.2f} | {c['data_success_share'][t]:.3f} |"
              for t, v in c["scratch_success"].items()]
    lines += ["", f"Choice (best success >= {RARE_MIN_SUCCESS}): {c['choice']}", ""]
  return "\n".join(lines)


def main(argv=None) -> dict:
  from mtopt import envs
  from mtopt.program import goal_training
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true", help="tiny budget: a smoke run of the path")
  p.add_argument("--dev", action="store_true", help="tuning data and goals")
  p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
  p.add_argument("--parts", nargs="+", default=["goals", "downstream"],
                 choices=["goals", "downstream", "rare_choice"],
                 help="rare_choice (tuning data only): choose the downstream task")
  p.add_argument("--acting", nargs="+", default=[], choices=list(ACTING),
                 help="also evaluate am's parameters acting with these CEM settings")
  p.add_argument("--curve-steps", type=int, nargs="+", default=list(CURVE_STEPS),
                 help="downstream: the task learner's steps at which it is evaluated")
  p.add_argument("--work-dir", default=os.path.join(ROOT, "runs", "actionable_models"))
  p.add_argument("--out", default=os.path.join(ROOT, "results"))
  p.add_argument("overrides", nargs="*", help="config overrides for every method, key=value")
  args = p.parse_args(argv)
  which = DEV if args.dev else REPORT
  if "rare_choice" in args.parts and not args.dev:
    p.error("--parts rare_choice runs on the tuning data only (--dev)")
  episodes, per_kind = EPISODES, protocol.MIN_EPISODES_PER_TASK
  steps = tuple(args.curve_steps)
  if list(steps) != sorted(set(steps)) or steps[0] < 1:
    p.error(f"--curve-steps must be increasing positive steps, got {list(steps)}")
  overrides = list(args.overrides)
  if args.quick:
    episodes, per_kind, args.seeds, steps = 90, 4, args.seeds[:1], (20, 40)
    overrides += ["learner.num_steps=40", "learner.batch_size=64"]
  suffix = "_quick" if args.quick else "_dev" if args.dev else ""
  work_dir = args.work_dir + suffix
  settings = [*overrides, f"seed={which['collect_seed']}", f"eval.goal_seed={which['goal_seed']}",
              f"eval.goals_per_kind={per_kind}", f"run_dir={os.path.join(work_dir, 'run')}"]
  config = load_config(CONFIG, settings)
  data_dir = dataset(config, work_dir, which["collect_seed"], episodes)
  sha = protocol.data_sha(data_dir)
  with envs.make(config.env) as env:
    spec, max_tasks = env.spec(), int(config.max_tasks)
  data = goal_training.load_episodes(config, data_dir, spec)
  targets = goal_training.goal_targets(config)
  print(f"{data.num_episodes} episodes, {len(data.rows)} transitions, "
        f"{data.chained_fraction():.0%} with a successor; {len(targets)} goals", flush=True)
  results, goal_params, stamp = {}, {}, None
  methods = list(args.methods) if "goals" in args.parts else []
  if ("downstream" in args.parts or args.acting) and "am" not in methods:
    methods.insert(0, "am")
  for method in methods:
    mconfig = load_config(CONFIG, [*settings, *METHODS[method]])
    per_seed = {}
    for seed in args.seeds:
      path = os.path.join(work_dir, method, f"seed{seed}.json")
      want = protocol.stamp(mconfig.to_dict(), {"goals": sha})
      want["config"].update(method=method, seed=seed)
      saved = protocol.load_if_same(path, want)
      params_path = os.path.join(work_dir, method, f"seed{seed}_params.npz")
      if saved is None or (method == "am" and not os.path.exists(params_path)):
        act, params, seconds = train_goal_method(method, mconfig, spec, data, max_tasks, seed)
        saved, r = evaluate_to(path, mconfig, act, targets, max_tasks, seed, want,
                               train_seconds=seconds)
        if params is not None:
          _save_params(params_path, params)
        print(f"{method} seed {seed}: mean {r['mean']:.3f} " + ", ".join(
            f"{k} {v['rate']:.2f}" for k, v in r["per_kind"].items())
            + f" ({seconds:.0f} s training)", flush=True)
      if method == "am":
        goal_params[seed] = _load_params(params_path, mconfig, spec, max_tasks)
      per_seed[seed] = saved["reached"]
      stamp = stamp or want
    if method in args.methods and "goals" in args.parts:
      results[method] = summarize(per_seed)
    if method == "am" and "goals" in args.parts:
      for name in args.acting:
        results[f"am+{name}"] = summarize(acting_variant(
            name, [*settings, *METHODS["am"]], goal_params, sha, work_dir, spec, max_tasks,
            targets))
  stamp = stamp or protocol.stamp(config.to_dict(), {"goals": sha})
  out = {"methods": results, "meta": {
      "commit": stamp["commit"], "dirty": stamp["dirty"], "config": stamp["config"],
      "data_sha": sha, "seeds": args.seeds, "episodes_per_task": per_kind,
      "steps": int(config.learner.num_steps), "batch_size": int(config.learner.batch_size),
      "episodes": episodes, "overrides": overrides, **which}}
  if "downstream" in args.parts or "rare_choice" in args.parts:
    # Offline, so one behaviour mode (as experiments.offline_tabletop), the same as AM's.
    task_config = load_config(TASK_CONFIG, ["learner.network.behaviour_modes=1", *overrides,
                                            "train.labels=ground_truth",
                                            f"run_dir={os.path.join(work_dir, 'task_run')}"])
    from mtopt import rlds_format
    task_config.env.tasks = list(config.env.tasks) or rlds_format.read_metadata(data_dir)[2]
  if "downstream" in args.parts:
    out["downstream"] = downstream(task_config, spec, data_dir, goal_params, args.seeds,
                                   goal_training.goal_spec(config), which["goal_seed"],
                                   per_kind, steps)
  if "rare_choice" in args.parts:
    out["rare_choice"] = rare_task_choice(task_config, spec, data_dir,
                                          goal_training.goal_spec(config), which["goal_seed"],
                                          per_kind, steps[-1])
  os.makedirs(args.out, exist_ok=True)
  base = os.path.join(args.out, "actionable_models" + suffix)
  with open(base + ".json", "w") as f:
    json.dump(out, f, indent=1)
  md = markdown(out)
  with open(base + ".md", "w") as f:
    f.write(md)
  print(md)
  print(json.dumps({"methods": {m: round(r["mean"], 3) for m, r in results.items()},
                    "downstream": {s: v["ratio"] for s, v in
                                   out.get("downstream", {}).get("per_seed", {}).items()}}))
  return out


def evaluate_to(path: str, config, act, targets: list, max_tasks: int, seed: int, meta: dict,
                **extra) -> tuple[dict, dict]:
  """Evaluates `act` on the goals; writes {"reached": {kind: per goal}, **extra, "meta"}
  to `path` and returns it with `goal_training.evaluate`'s result."""
  from mtopt.program import goal_training
  r = goal_training.evaluate(config, act, targets, max_tasks, env_seed=seed)
  reached = np.asarray(r["reached"])
  saved = {"reached": {k: reached[[t["kind"] == k for t in targets]].tolist()
                       for k in r["per_kind"]}, **extra, "meta": meta}
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(saved, f)
  return saved, r


def acting_variant(name: str, settings: list, goal_params: dict, sha: str, work_dir: str,
                   spec, max_tasks: int, targets: list) -> dict:
  """{seed: {kind: reached per goal}} of each seed's `am` parameters acting with
  ACTING[name]'s CEM settings (stored results reused only by an identical run)."""
  from mtopt.program import goal_training
  config = load_config(CONFIG, [*settings, *(f"cem.{k}={v}" for k, v in ACTING[name].items())])
  per_seed = {}
  for seed, params in goal_params.items():
    path = os.path.join(work_dir, f"am+{name}", f"seed{seed}.json")
    want = protocol.stamp(config.to_dict(), {"goals": sha})
    want["config"].update(method="am", acting=name, seed=seed)
    saved = protocol.load_if_same(path, want)
    if saved is None:
      act = goal_training.cem_act(config, spec, max_tasks, params, seed)
      saved, r = evaluate_to(path, config, act, targets, max_tasks, seed, want)
      print(f"am+{name} seed {seed}: mean {r['mean']:.3f}", flush=True)
    per_seed[seed] = saved["reached"]
  return per_seed


def _save_params(path: str, params) -> None:
  import jax
  leaves = jax.tree.leaves(params)
  np.savez(path, *[np.asarray(x) for x in leaves])


def _load_params(path: str, config, spec, max_tasks: int):
  """The `am` parameters saved beside its result, in the network's tree."""
  import jax
  from learners import networks
  from learners.config import LearnerConfig
  from learners.goal_conditioned import goal_env_spec
  from mtopt.program import goal_training
  gspec = goal_env_spec(spec, goal_training.goal_spec(config))
  network = networks.make_q_network(gspec, max_tasks, LearnerConfig.from_config(config).network)
  like = jax.eval_shape(lambda: networks.init_params(network, gspec, jax.random.PRNGKey(0)))
  with np.load(path) as f:
    leaves = [f[f"arr_{i}"] for i in range(len(f.files))]
  return jax.tree.unflatten(jax.tree.structure(like), leaves)


if __name__ == "__main__":
  main()
