"""`mtopt tasks ...`: tasks defined by success examples.

  mtopt tasks list                          slots, names, example counts, detector quality
  mtopt tasks add NAME --examples DIR       a new task from an example folder: a free slot,
                                            its detector head, labels for stored data
  mtopt tasks train --examples ROOT         a detector for every ROOT/NAME example folder
                                            (fresh), or a retrain on them (rehearsal)
  mtopt tasks review [--show ID] [--answer ID success|failure] [--simulator] [--apply]
                                            the detector loop: answer policy episodes the
                                            run queued, retrain on them (rehearsal)
  mtopt tasks make-examples --out ROOT      example folders from the simulator's ground truth

The detector lives in RUN_DIR/detector/, the registry in RUN_DIR/tasks.json, stored data
in RLDS datasets under RUN_DIR/data/ (labels are written next to each as labels.npz).
A bad example folder is rejected before anything is changed.
"""

from __future__ import annotations

import glob
import os

import numpy as np

from mtopt import cli
from mtopt.tasks import REGISTRY_FILE, TaskError, TaskRegistry

DETECTOR_DIR = "detector"
DATA_DIR = "data"


def add_parser(sub):
  p = sub.add_parser("tasks", help="list tasks; add a task from success examples")
  verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

  ls = verbs.add_parser("list", help="slots, names, example counts and detector quality")
  _common(ls)
  ls.set_defaults(func=_list)

  add = verbs.add_parser("add", help="register a task from an example folder and train its "
                                     "detector head (other tasks are unchanged)")
  add.add_argument("name", help="task name (letters, digits, '_' or '-')")
  add.add_argument("--examples", required=True,
                   help="example folder: success/*.npz and failure/*.npz of final observations")
  add.add_argument("--description", default="",
                   help="a note stored in the registry (default: the folder's task.json)")
  add.add_argument("--no-relabel", action="store_true",
                   help="do not relabel the stored datasets under RUN_DIR/data/ now")
  _common(add)
  add.set_defaults(func=_add)

  train = verbs.add_parser("train", help="train the detector on ROOT/NAME example folders "
                                         "(a retrain with rehearsal if one exists)")
  train.add_argument("--examples", required=True, help="a folder of example folders, one per task")
  train.add_argument("--no-relabel", action="store_true")
  _common(train)
  train.set_defaults(func=_train)

  review = verbs.add_parser("review", help="the detector loop: list, show and answer the "
                                           "policy episodes a run queued; --apply retrains")
  review.add_argument("--show", type=int, metavar="EPISODE_ID",
                      help="print a queued episode's final observation (images: saved as PNG)")
  review.add_argument("--answer", nargs=2, metavar=("EPISODE_ID", "success|failure"))
  review.add_argument("--simulator", action="store_true",
                      help="answer every pending episode of a simulator task with its "
                           "ground truth (simulation only)")
  review.add_argument("--apply", action="store_true",
                      help="retrain the detector on the answers plus all stored examples "
                           "(rehearsal) and relabel the stored datasets")
  _common(review)
  review.set_defaults(func=_review)

  make = verbs.add_parser("make-examples", help="write example folders from the simulator's "
                                                "ground truth (noisy scripted episodes)")
  make.add_argument("--out", required=True, help="folder to write OUT/TASK/ folders into")
  make.add_argument("--tasks", default="", help="comma-separated task names (default: all)")
  make.add_argument("--episodes-per-task", type=int, default=300)
  make.add_argument("--max-successes", type=int, default=200)
  make.add_argument("--max-failures", type=int, default=6000)
  make.add_argument("--seed", type=int, default=0)
  cli.add_config_arg(make)
  make.set_defaults(func=_make_examples)


def _common(p):
  cli.add_config_arg(p)
  p.add_argument("--run-dir", default=None, help="run directory (default: the config's run_dir)")


def _run_dir(args) -> str:
  return args.run_dir or args.config.run_dir


def _detector_config(config):
  from success_detectors.detector import DetectorConfig
  section = config.get("detector")
  section = section.to_dict() if section is not None else {}
  return DetectorConfig.from_dict(section)


def _registry(run_dir: str, max_tasks: int) -> TaskRegistry:
  if os.path.exists(os.path.join(run_dir, REGISTRY_FILE)):
    reg = TaskRegistry.load(run_dir)
    if reg.max_tasks != max_tasks:
      raise TaskError(f"{run_dir}: registry has max_tasks={reg.max_tasks}, config says {max_tasks}")
    return reg
  return TaskRegistry(max_tasks)


def _load_or_create_detector(args, config):
  from success_detectors.detector import SuccessDetector
  path = os.path.join(_run_dir(args), DETECTOR_DIR)
  if os.path.exists(os.path.join(path, "detector.json")):
    det = SuccessDetector.load(path)
    if det.max_tasks != config.max_tasks:
      raise TaskError(f"{path}: detector has {det.max_tasks} slots, config max_tasks is "
                      f"{config.max_tasks}")
    # The saved network shape stays (the setter keeps it); how to train and judge now
    # comes from the config.
    det.config = _detector_config(config)
    return det
  import mtopt.envs
  with mtopt.envs.make(config.env) as env:
    spec = env.spec()
  return SuccessDetector.create(spec, int(config.max_tasks), _detector_config(config))


def _as_task_error(fn):
  """Example, detector and dataset errors become TaskErrors, which the CLI reports."""
  def wrapped(args):
    from mtopt.rlds_format import DatasetError
    from success_detectors.detector import DetectorError
    from success_detectors.examples import ExamplesError
    from success_detectors.review import ReviewError
    try:
      return fn(args)
    except (ExamplesError, DetectorError, DatasetError, ReviewError) as e:
      raise TaskError(str(e)) from None
  return wrapped


def _fmt(v, spec=".3f"):
  return "-" if v is None else format(v, spec)


def _print_quality(reg: TaskRegistry, det, before: dict | None = None) -> None:
  quality = det.quality() if det is not None else {}
  rows = [("slot", "name", "status", "succ", "fail", "precision", "recall", "ece")]
  if before is not None:
    rows[0] += ("d_prec", "d_rec")
  tasks = {t["slot"]: t for t in reg.to_json()["tasks"]}
  for slot in sorted(set(tasks) | set(quality)):
    t, q = tasks.get(slot), quality.get(slot, {})
    name = t["name"] if t else q.get("name", "?")
    status = ("retired" if t["retired"] else "active") if t else "unregistered"
    if t and not t["retired"] and not q:
      status = "no detector head"
    row = (str(slot), name, status, str(q.get("successes", "-")), str(q.get("failures", "-")),
           _fmt(q.get("precision")), _fmt(q.get("recall")), _fmt(q.get("ece")))
    if before is not None:
      b = before.get(slot, {})
      dp = q.get("precision", 0) - b["precision"] if "precision" in b else None
      dr = q.get("recall", 0) - b["recall"] if "recall" in b else None
      row += (_fmt(dp, "+.3f"), _fmt(dr, "+.3f"))
    rows.append(row)
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  for r in rows:
    print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
  if det is not None:
    print(f"detector version {det.version}; {len(reg.free_slots())} free slot(s) "
          f"of {reg.max_tasks}")


@_as_task_error
def _list(args):
  from success_detectors.detector import SuccessDetector
  run_dir = _run_dir(args)
  reg = _registry(run_dir, int(args.config.max_tasks))
  path = os.path.join(run_dir, DETECTOR_DIR)
  det = SuccessDetector.load(path) if os.path.exists(os.path.join(path, "detector.json")) \
      else None
  if det is None and not len(reg):
    print(f"{run_dir}: no tasks and no detector yet; add one with "
          f"`mtopt tasks add NAME --examples DIR`")
    return 0
  _print_quality(reg, det)
  return 0


def _datasets(run_dir: str) -> list[str]:
  root = os.path.join(run_dir, DATA_DIR)
  found = glob.glob(os.path.join(root, "**", "dataset_info.json"), recursive=True)
  return sorted(os.path.dirname(p) for p in found)


def _relabel(run_dir: str, detector) -> None:
  """Labels every stored dataset of the run with `detector`, in this process. The run's
  replays are relabelled when the run continues (it sees the new detector version)."""
  import time
  from success_detectors.labeller import relabel_dataset
  datasets = _datasets(run_dir)
  if not datasets:
    print(f"no stored datasets under {os.path.join(run_dir, DATA_DIR)}; nothing to relabel")
  for d in datasets:
    start = time.perf_counter()
    path = relabel_dataset(d, detector)
    print(f"relabelled {d} -> {path} ({time.perf_counter() - start:.1f} s)")
  if os.path.isdir(os.path.join(run_dir, "replay")):
    print(f"{run_dir}: its replay is relabelled when the run continues (`mtopt train` on it; "
          "a running run restarts itself at its next save point)")


@_as_task_error
def _add(args):
  from success_detectors.examples import read_example_folder, read_task_info
  config, run_dir = args.config, _run_dir(args)
  reg = _registry(run_dir, int(config.max_tasks))
  det = _load_or_create_detector(args, config)
  # Everything is checked before anything changes.
  if args.name in reg:
    slot = reg.slot(args.name)
    if slot in det.slots:
      raise TaskError(f"task {args.name!r} already has a detector head in slot {slot}; "
                      f"use `mtopt tasks train` to retrain")
    registered = True
  else:
    free = [s for s in reg.free_slots() if s not in det.slots]
    if not free:
      raise TaskError(f"no free slot for {args.name!r}: all {reg.max_tasks} slots are used")
    slot, registered = free[0], False
    TaskRegistry(reg.max_tasks).add(args.name, slot=slot)  # The name rule, before training.
  examples = read_example_folder(args.examples, det.spec, slot)
  counts = examples.counts()[slot]
  print(f"{args.examples}: {counts[0]} successes, {counts[1]} failures -> slot {slot}")
  before = det.quality()
  det.add_task(slot, args.name, examples)
  det.save(os.path.join(run_dir, DETECTOR_DIR))
  if not registered:
    description = args.description or read_task_info(args.examples).get("description", "")
    reg.add(args.name, str(description), slot=slot)
  reg.save(run_dir)
  _print_quality(reg, det, before)
  if not args.no_relabel:
    _relabel(run_dir, det)
  return 0


@_as_task_error
def _train(args):
  from success_detectors.examples import ExampleSet, read_example_folder
  config, run_dir = args.config, _run_dir(args)
  root = args.examples
  if not os.path.isdir(root):
    raise TaskError(f"examples root {root!r} is not a directory")
  names = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
  if not names:
    raise TaskError(f"{root}: no example folders (expected ROOT/NAME/success, ROOT/NAME/failure)")
  reg = _registry(run_dir, int(config.max_tasks))
  det = _load_or_create_detector(args, config)
  fresh = not det.slots
  slots, new = {}, []
  free = iter(s for s in reg.free_slots() if s not in det.slots)
  for n in names:
    if n in reg:
      slots[n] = reg.slot(n)
    else:
      s = next(free, None)
      if s is None:
        raise TaskError(f"no free slot for {n!r}: all {reg.max_tasks} slots are used")
      slots[n] = s
      new.append(n)
    if not fresh and slots[n] not in det.slots:
      raise TaskError(f"{n!r} has no detector head yet: add it with `mtopt tasks add`")
  examples = ExampleSet.concat([read_example_folder(os.path.join(root, n), det.spec, slots[n])
                                for n in names])
  before = None if fresh else det.quality()
  if fresh:
    det.train(examples, {s: n for n, s in slots.items()})
  else:
    det.retrain(examples)
  det.save(os.path.join(run_dir, DETECTOR_DIR))
  for n in new:
    reg.add(n, slot=slots[n])
  reg.save(run_dir)
  _print_quality(reg, det, before)
  if not args.no_relabel:
    _relabel(run_dir, det)
  return 0


@_as_task_error
def _review(args):
  from success_detectors.review import ReviewQueue
  config, run_dir = args.config, _run_dir(args)
  queue = ReviewQueue(run_dir)
  reg = _registry(run_dir, int(config.max_tasks))
  if args.answer:
    eid, verdict = args.answer
    if verdict not in ("success", "failure") or not eid.lstrip("-").isdigit():
      raise TaskError(f"--answer takes EPISODE_ID success|failure, got {eid} {verdict}")
    queue.answer(int(eid), verdict == "success")
  if args.simulator:
    print(f"answered {queue.answer_from_simulator()} episode(s) from the simulator's ground truth")
  if args.show is not None:
    item = queue.item(args.show)
    print(f"episode {args.show}: task {reg.name(item['slot'])} (slot {item['slot']}), "
          f"detector {item['label']:.3f}")
    for k, v in item["observation"].items():
      if v.dtype == np.uint8 and v.ndim == 3:
        import matplotlib.image
        path = os.path.join(queue.root, f"{args.show}_{k}.png")
        matplotlib.image.imsave(path, v)
        print(f"  {k}: image saved to {path}")
      else:
        print(f"  {k}: {np.array2string(v, precision=3, max_line_width=100)}")
  if args.apply:
    examples, ids = queue.answered_examples()
    if examples is None:
      print("no answered episodes to apply")
    else:
      det = _load_or_create_detector(args, config)
      before = det.quality()
      det.retrain(examples)
      det.save(os.path.join(run_dir, DETECTOR_DIR))
      queue.mark_applied(ids)
      print(f"retrained the detector on {len(ids)} reviewed episode(s) and its stored examples")
      _print_quality(reg, det, before)
      _relabel(run_dir, det)
  pending = queue.pending()
  print(f"{len(pending)} episode(s) waiting for review in {queue.root}"
        + (f": {', '.join(map(str, pending[:10]))}{' ...' if len(pending) > 10 else ''}"
           if pending else ""))
  return 0


def _make_examples(args):
  import mtopt.envs
  from success_detectors.examples_from_sim import collect_rollouts, write_task_examples
  tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
  with mtopt.envs.make(args.config.env, seed=args.seed) as env:
    unknown = sorted(set(tasks) - set(env.task_names()))
    if unknown:
      raise TaskError(f"unknown task(s) {unknown}; known: {', '.join(env.task_names())}")
    rollouts = collect_rollouts(env, args.episodes_per_task, tasks or None, seed=args.seed)
  for i, task in enumerate(tasks or rollouts.task_names):
    folder = os.path.join(args.out, task)
    pos, neg = write_task_examples(rollouts, task, folder, args.max_successes,
                                   args.max_failures, seed=args.seed + i)
    print(f"{folder}: {pos} successes, {neg} failures")
  return 0
