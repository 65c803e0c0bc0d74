"""`program.placement`: the replay and the learner as Ray actors with the config's
resources, restarted when they die (the replay from its log, the learner from its
checkpoint) while `mtopt train` goes on."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from mtopt.config import ConfigError, load_config
from mtopt.program import placement
from tests.conftest import ROOT
from tests.test_launch import DEFAULT, TINY, _wait_for


def test_node_options_follow_the_config():
  config = load_config(DEFAULT, ["program.placement=actors", "learner.num_gpus=1",
                                 "replay.num_cpus=4", "replay.memory_gb=2",
                                 "replay.resources=big_memory:1, rack_a"])
  replay = placement.node_options(config, "replay")
  assert replay["num_cpus"] == 4 and replay["memory"] == 2 * 2**30
  assert replay["resources"] == {"big_memory": 1.0, "rack_a": 1.0}
  assert replay["max_restarts"] == 10 and replay["max_task_retries"] == -1
  assert placement.node_options(config, "learner")["num_gpus"] == 1
  for bad, key in [("replay.resources=big_memory:lots", "replay.resources"),
                   ("learner.num_gpus=-1", "learner.num_cpus, num_gpus"),
                   ("program.placement=cloud", "program.placement")]:
    with pytest.raises(ConfigError, match=key):
      placement.check(load_config(DEFAULT, ["program.placement=actors", bad]))
  placement.check(config)


def test_labeller_nodes_label_as_the_detector_and_come_back_when_killed(tmp_path,
                                                                          ray_session):
  """Two real LabellerNodes holding a detector: a call's episodes are split between them
  and labelled exactly as the detector labels them, a replay node labels through them, and
  a SIGKILLed one is restarted by Ray with the call it owed asked again."""
  import contextlib
  from mtopt.program import relabel
  from mtopt.program.replay_node import RemoteReplay, ReplayNode
  from success_detectors.detector import SuccessDetector
  from tests.test_success_detector import FAST, MAX_TASKS, SPEC
  from tests.test_success_labeller import episodes
  config = load_config(DEFAULT, ["program.placement=actors", "labeller.nodes=2",
                                 "labeller.num_cpus=0.25", "replay.num_cpus=0.25",
                                 f"max_tasks={MAX_TASKS}"])
  det = SuccessDetector.create(SPEC, MAX_TASKS, FAST)
  eps = episodes(np.random.default_rng(0), 9)
  with contextlib.ExitStack() as stack:
    labeller = placement.make_labeller(config, det, stack)
    infos = labeller.infos()
    assert len({i["pid"] for i in infos}) == 2 and infos[0]["resources"]["CPU"] == 0.25
    np.testing.assert_allclose(labeller(eps), det(eps), atol=1e-6)
    assert relabel.stamp(labeller) == relabel.stamp(det)  # Relabelling sees the detector.
    os.kill(infos[1]["pid"], signal.SIGKILL)
    np.testing.assert_allclose(labeller(eps), det(eps), atol=1e-6)  # Retried once it is back.
    assert labeller.infos()[1]["pid"] != infos[1]["pid"]
    handle = ray_session.remote(ReplayNode).options(
        **placement.node_options(config, "replay")).remote(
        config.to_dict(), SPEC, str(tmp_path), labeller, [0, 1])
    replay = RemoteReplay(placement.started(handle, "replay", {}))
    stack.callback(replay.close)
    replay.write_many(eps)  # Unlabelled: labelled by the nodes.
    assert replay.num_episodes() == len(eps)
  assert placement.make_labeller(load_config(DEFAULT, []), det, contextlib.ExitStack()) is det
  with pytest.raises(ConfigError, match="labeller.nodes"):
    placement.check(load_config(DEFAULT, ["program.placement=actors", "labeller.nodes=0"]))


def test_replay_node_gets_its_resources_and_restarts_without_losing_or_doubling(
    tmp_path, ray_session):
  """A real ReplayNode: placed with `replay.*` resources; SIGKILLed, it comes back on the
  same port with every acknowledged episode, and a retried write stores nothing twice."""
  from mtopt.program.replay_node import RemoteReplay, ReplayNode
  from tests.test_replay_helpers import MAX_TASKS, SPEC, random_episodes
  config = load_config(DEFAULT, ["program.placement=actors", "replay.num_cpus=0.25",
                                 "replay.memory_gb=0.5", f"max_tasks={MAX_TASKS}"])
  options = placement.node_options(config, "replay")
  handle = ray_session.remote(ReplayNode).options(**options).remote(
      config.to_dict(), SPEC, str(tmp_path), None, [0, 1])
  replay = RemoteReplay(placement.started(handle, "replay", options))
  try:
    info = replay.info()
    assert info["resources"]["CPU"] == 0.25 and info["resources"]["memory"] == 2**29
    rng = np.random.default_rng(0)
    episodes = random_episodes(rng, 6, [0, 1])
    replay.write_many(episodes[:4])
    os.kill(info["pid"], signal.SIGKILL)
    replay.write_many(episodes[2:])  # Retried by Ray once the node is back; 2 are stored.
    again = replay.info()
    assert again["starts"] == 2 and again["pid"] != info["pid"]
    assert again["address"] == info["address"]  # Samplers reconnect by themselves.
    assert replay.acknowledged() == replay.num_episodes() == 6
  finally:
    replay.close()


def test_followed_batches_keep_the_samplers_order_and_errors():
  """Read in chunks on a thread, the batches come in the sampler's order, and its error is
  raised in the caller's thread after the batches read before it."""
  from mtopt.program.learner_node import FollowedReplays

  def sampler():
    yield from range(11)
    raise TimeoutError("no data")
  batches = FollowedReplays(lambda: ["a:1"], lambda _: sampler(), chunk=4)
  assert [next(batches) for _ in range(11)] == list(range(11))
  with pytest.raises(TimeoutError, match="no data"):
    next(batches)
  batches.close()


@pytest.mark.timeout(300)  # 20 s; without following, it would wait forever.
def test_the_learner_nodes_batches_follow_a_replay_node_that_moved(tmp_path, ray_session):
  """A real ReplayNode is SIGKILLed and its port taken, so Ray restarts it elsewhere (as on
  another machine). Reverb alone would wait on the old address forever; the learner node's
  batches ask where the replay is now and go on from there."""
  import socket
  import time
  from mtopt.program.learner_node import FollowedReplays
  from mtopt.program.replay_node import RemoteReplay, ReplayNode
  from tests.test_replay_helpers import MAX_TASKS, SPEC, random_episodes
  config = load_config(DEFAULT, ["program.placement=actors", "replay.num_cpus=0.25",
                                 f"max_tasks={MAX_TASKS}", "replay.min_size=1"])
  options = placement.node_options(config, "replay")
  handle = ray_session.remote(ReplayNode).options(**options).remote(
      config.to_dict(), SPEC, str(tmp_path), None, [0, 1])
  replay = RemoteReplay(placement.started(handle, "replay", options))
  replay.write_many(random_episodes(np.random.default_rng(0), 8, [0, 1], p_success=0.5))
  batches = FollowedReplays(lambda: [replay.address()],
                            lambda _: replay.client(config).sampler(4), check_seconds=0.5)
  taken = socket.socket()
  try:
    next(batches)
    info = replay.info()
    os.kill(info["pid"], signal.SIGKILL)
    while os.path.exists(f"/proc/{info['pid']}"):
      time.sleep(0.01)
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # Past TIME_WAIT.
    taken.bind(("", int(info["address"].rsplit(":", 1)[1])))
    taken.listen()
    deadline = time.monotonic() + 120
    while batches.rebuilds < 2 and time.monotonic() < deadline:
      next(batches)  # What the old sampler had fetched comes first.
    assert batches.rebuilds == 2 and replay.address() != info["address"]
    assert next(batches).observation["state"].shape == (4, 4)
    batches.follow()
    assert batches.rebuilds == 2  # Not moved again: nothing rebuilt.
  finally:
    taken.close()
    batches.close()
    replay.close()


def test_replay_node_imports_a_dataset_itself(ray_session, tmp_path):
  """The offline import runs in the node (the episodes do not cross the driver), and a
  repeated import resumes after what the node acknowledged."""
  from mtopt import rlds_format
  from mtopt.program import offline_data
  from mtopt.program.replay_node import RemoteReplay, ReplayNode
  from mtopt.tasks import TaskRegistry
  from tests.test_replay_helpers import MAX_TASKS, SPEC, random_episodes
  config = load_config(DEFAULT, ["program.placement=actors", "replay.num_cpus=0.25",
                                 f"max_tasks={MAX_TASKS}"])
  data = str(tmp_path / "data")
  episodes = random_episodes(np.random.default_rng(1), 9, [0, 1])
  with rlds_format.DatasetWriter(data, SPEC, MAX_TASKS, [], episodes_per_shard=4) as w:
    for ep in episodes:
      w.write(ep)
  registry = TaskRegistry.from_names(MAX_TASKS, ["a", "b"])
  options = placement.node_options(config, "replay")
  handle = ray_session.remote(ReplayNode).options(**options).remote(
      config.to_dict(), SPEC, str(tmp_path / "run"), None, [0, 1])
  replay = RemoteReplay(placement.started(handle, "replay", options))
  try:
    lines = []
    assert offline_data.import_offline(config, replay, registry, data, None, lines.append) == 9
    assert "imported 9 episodes" in lines[-1]
    assert replay.num_episodes() == replay.acknowledged() == 9
    assert offline_data.import_offline(config, replay, registry, data, None, lines.append) == 9
    assert "resuming the import" in lines[-2] and replay.num_episodes() == 9
  finally:
    replay.close()


def _descendant(root: int, name: str):
  import psutil
  for p in psutil.Process(root).children(recursive=True):
    try:
      if name in " ".join(p.cmdline()):
        return p
    except psutil.Error:
      continue
  return None


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 294 s alone; its waits allow for a loaded machine.
def test_train_survives_killed_replay_learner_and_actor_nodes(tmp_path):
  """`mtopt train` with placement=actors; SIGKILL the replay node, then the learner node,
  then a robot actor, the parameter server and the labeller node. Every acknowledged episode is in the replay
  afterwards, the learner resumed at a checkpoint step, and the run finishes with all its
  evaluations."""
  from mtopt import envs
  from mtopt.program import run_dir
  from replay.reverb_replay import ReverbReplay
  run = str(tmp_path / "run")
  settings = [f"run_dir={run}", *(a.removeprefix("--config.") for a in TINY),
              "train.mode=online", "learner.num_steps=400", "train.eval_every=200",
              "learner.checkpoint_every=40", "program.placement=actors",
              "replay.num_cpus=0.25", "learner.num_cpus=0.25", "labeller.num_cpus=0.25"]
  command = [sys.executable, "-m", "mtopt.cli", "train", "--config", DEFAULT,
             *(f"--config.{s}" for s in settings)]
  out = open(tmp_path / "stdout", "w+")
  proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                          start_new_session=True)  # Its own Ray goes with its group.
  step = lambda: run_dir.load_progress(run)["step"]  # noqa: E731
  try:
    _wait_for(lambda: step() >= 80, 600, "two save points", proc, out)
    _descendant(proc.pid, "ray::ReplayNode").kill()
    replay_node = os.path.join(run, "replay_node.json")
    _wait_for(lambda: json.load(open(replay_node))["starts"] == 2, 300,
              "the replay node's restart", proc, out)
    killed_at = step()
    _wait_for(lambda: step() >= killed_at + 40, 600, "a save point after the replay's restart",
              proc, out)
    learner_at = step()
    _descendant(proc.pid, "ray::LearnerNode").kill()
    starts = lambda: json.load(open(os.path.join(run, "learner_node.json")))  # noqa: E731
    _wait_for(lambda: len(starts()) == 2, 300, "the learner node's restart", proc, out)
    busy = []  # Kept as found: between episodes the worker's title drops ".run_episodes".
    _wait_for(lambda: busy.append(_descendant(proc.pid, "ray::RobotActor.run_episodes"))
              or busy[-1] is not None, 120, "a busy robot actor", proc, out)
    busy[-1].kill()
    ps = _descendant(proc.pid, "ray::ParameterServer")
    ps.kill()  # Back empty; the learner's next publication refills it.
    _wait_for(lambda: (p := _descendant(proc.pid, "ray::ParameterServer")) is not None
              and p.pid != ps.pid, 300, "the parameter server's restart", proc, out)
    labeller = _descendant(proc.pid, "ray::LabellerNode")
    labeller.kill()  # The replay's writes wait on it: Ray retries their labels.
    _wait_for(lambda: (p := _descendant(proc.pid, "ray::LabellerNode")) is not None
              and p.pid != labeller.pid, 300, "the labeller node's restart", proc, out)
    assert proc.wait(timeout=900) == 0
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
  out.seek(0)
  log = out.read()
  assert "the replay node at" in log and "was restarted" in log, log[-3000:]
  assert "labeller node 0 at" in log, log[-3000:]
  resumed = starts()[1]
  assert "learner node was restarted: it resumed from its checkpoint at step " \
         f"{resumed}" in log.replace("\n", " "), log[-3000:]
  assert resumed % 40 == 0 and resumed >= learner_at  # A checkpoint, at or after its save point.
  progress = run_dir.load_progress(run)
  assert progress["step"] == 400 and [e["step"] for e in progress["evaluations"]] == [200, 400]
  config = load_config(DEFAULT, settings)
  with ReverbReplay.from_config(config, envs.make(config.env).spec(), run_dir=run) as r:
    ids = [e.episode_id for e in r.episodes()]
    assert len(ids) == len(set(ids)) == r.acknowledged() >= progress["collected_episodes"] > 0
