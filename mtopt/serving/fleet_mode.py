"""The simulated fleet through the policy server (`actors.mode = "served"` in a config).

Instead of pulling params from the parameter server and handing episodes to the driver,
the online robot actors act through `mtopt serve` (a PolicyServer in the driver, on a
loopback port) with `mtopt.robot_client`, and upload every finished episode to it; the
server labels them and writes them to the training replay, as it would for real robots.
The server follows the learner's checkpoints, so robots act with the params of the last
evaluation (`train.eval_every`), not the last publication.
"""

from __future__ import annotations

import os
import threading

from mtopt.serving import auth, policy_source
from mtopt.serving.config import ServerConfig
from mtopt.serving.server import PolicyServer

ROBOT = "simulated-fleet"  # One identity for the simulated robots (their ids are unique).


class ServedFleet:
  """Starts the server and the robot actors; `collector` drives them in a thread.

  Args:
    ray, config, registry, tasks: as in `mtopt.launch.train`.
    learner: saved once first if the run has no checkpoint, so the server has a policy.
    replay: where uploads are written (the run's online replay, or its only one).
    progress: the run's progress dict; `collected_episodes` counts stored uploads.
  """

  def __init__(self, ray, config, registry, tasks, learner, replay, progress, log=print):
    from actors.fleet import Fleet
    from actors.served_policy import ServedPolicy, UploadSink
    from mtopt import launch
    run_dir = os.path.abspath(config.run_dir)
    if not policy_source.checkpoint_steps(run_dir):
      learner.save()
    token = auth.add_robot(run_dir, ROBOT)
    self.server = PolicyServer(run_dir, ServerConfig(port=0, replay=False), log=log,
                               replay=replay, refill_replay=False).start()
    t, a = config.train, config.actors
    policy = ServedPolicy(self.server.url, ROBOT, token, seed=config.seed)
    kwargs = launch.actor_kwargs(config, registry, policy, tasks,
                                 gaussian_std=t.explore_gaussian_std,
                                 epsilon=t.explore_epsilon)
    kwargs["sink"] = UploadSink(self.server.url, ROBOT, token)
    self.fleet = Fleet(ray, int(a.num_actors), kwargs, episodes_per_call=1,
                       num_cpus=float(a.num_cpus))
    self.collector = _Driver(self.fleet, progress)

  def call_all(self, method, *args, **kwargs):
    return self.fleet.call_all(method, *args, **kwargs)

  def shutdown(self) -> None:
    self.collector.stop()
    self.fleet.shutdown()
    self.server.stop()


class _Driver:
  """Keeps the robots collecting; the episodes are already stored by the server."""

  def __init__(self, fleet, progress: dict):
    self._fleet, self._progress = fleet, progress
    self._stop = threading.Event()
    self.error: BaseException | None = None
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()

  def _run(self):
    try:
      first = int(self._progress.get("collected_episodes", 0))
      for _ in self._fleet.collect(1 << 31, first_episode_id=(1 << 40) + first):
        self._progress["collected_episodes"] += 1
        if self._stop.is_set():
          break
    except BaseException as e:  # Surfaced by the driver loop.
      self.error = e

  def stop(self):
    self._stop.set()
    self._thread.join(timeout=30)
