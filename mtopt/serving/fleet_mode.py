"""The simulated fleet through the policy server (`actors.mode = "served"` in a config).

Instead of pulling params from the parameter server and handing episodes to the driver,
the online robot actors act through `mtopt serve` (a PolicyServer in the driver, on a
loopback port) with `mtopt.robot_client`, and upload every finished episode to it; the
server labels them (with the program's labeller: with `program.placement=actors`, its
labeller nodes) and writes them to the training replay, as it would for real robots.
The server follows the learner's checkpoints, so robots act with the params of the last
evaluation (`train.eval_every`), not the last publication.
"""

from __future__ import annotations

import os

from mtopt.program import collection, nodes
from mtopt.serving import auth, policy_source
from mtopt.serving.config import ServerConfig
from mtopt.serving.server import PolicyServer

ROBOT = "simulated-fleet"  # One identity for the simulated robots (their ids are unique).


class ServedFleet:
  """Starts the server and the robot actors; `collector` keeps them collecting.

  Args:
    ray, config, registry, tasks: as in `mtopt.launch.train`.
    learner: saved once first if the run has no checkpoint, so the server has a policy.
    replay: where uploads are written (the run's online replay, or its only one).
    labeller: the program's labeller, which labels the uploads.
  """

  def __init__(self, ray, config, registry, tasks, learner, replay, labeller, log=print):
    from actors.fleet import Fleet
    from actors.served_policy import ServedPolicy, UploadSink
    run_dir = os.path.abspath(config.run_dir)
    if not policy_source.checkpoint_steps(run_dir):
      learner.save()
    token = auth.add_robot(run_dir, ROBOT)
    self.server = PolicyServer(run_dir, ServerConfig(port=0, replay=False), log=log,
                               replay=replay, refill_replay=False, labeller=labeller).start()
    t, a = config.train, config.actors
    policy = ServedPolicy(self.server.url, ROBOT, token, seed=config.seed)
    kwargs = nodes.actor_kwargs(config, registry, policy, tasks,
                                gaussian_std=t.explore_gaussian_std,
                                epsilon=t.explore_epsilon)
    kwargs["sink"] = UploadSink(self.server.url, ROBOT, token)
    fleet = Fleet(ray, int(a.num_actors), kwargs, episodes_per_call=1,
                  num_cpus=float(a.num_cpus))
    self.collector = collection.Collector(fleet, replay, write=False)

  def shutdown(self) -> None:
    self.collector.stop()  # Also shuts the fleet down.
    self.server.stop()
