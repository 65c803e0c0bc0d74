"""RobotActor: one simulated (or real) robot that owns an env and runs whole episodes.

Per episode it asks its task scheduler which task to attempt and its policy which action
to take. It attempts any registered task: one the env does not define (a task given by
success examples only) starts from a scene reset without a task (`Env.reset(None)`). Each
finished, validated episode goes to the caller (`run_episodes` returns them) and to an
optional sink (a replay writer, a labeller). An episode is only ever
emitted complete: if the process dies mid-episode, that episode is gone, and Ray
restarts the actor (see `remote_robot_actor`).
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from mtopt import envs
from mtopt.episode import Episode
from mtopt.tasks import TaskRegistry

from actors.episode_runner import run_episode
from actors.policies import Policy, make_policy
from actors.task_scheduler import make_scheduler

Sink = Callable[[Episode], Any]


def episode_seed(seed: int, episode_id: int) -> int:
  """The env reset seed of an episode: the same id gives the same start on any actor."""
  return int(np.random.SeedSequence([seed, episode_id]).generate_state(1)[0])


class RobotActor:
  """Attributes:
    robot_id: this robot's id, stored in every episode.
    env: the env it owns.
    registry: task names <-> slots.
  """

  def __init__(self, robot_id: int, env_config: Mapping[str, Any] | str,
               registry: TaskRegistry | Mapping, policy: str | Policy = "scripted",
               scheduler: str = "uniform", task_weights: Sequence[float] = (),
               tasks: Sequence[str] = (), gaussian_std: float = 0.0, epsilon: float = 0.0,
               sticky_prob: float = 0.0, sticky_steps: int = 5,
               early_terminate_prob: float = 0.0, seed: int = 0,
               sink: Sink | None = None):
    self.robot_id = int(robot_id)
    self.seed = int(seed)
    self.env = envs.make(env_config, seed=[self.seed, self.robot_id, 0])
    self.registry = (registry if isinstance(registry, TaskRegistry)
                     else TaskRegistry.from_json(dict(registry)))
    env_tasks = self.env.task_names()
    # Ground truth is kept for the env tasks that have a slot (for reports only).
    self._slots = [self.registry.slot(t) if t in self.registry else -1 for t in env_tasks]
    self._env_tasks = set(env_tasks)
    # Default: every registered task, the env's own in the env's order first.
    self.tasks = list(tasks) or ([t for t in env_tasks if t in self.registry] +
                                 [t for t in self.registry.names if t not in env_tasks])
    unknown = [t for t in self.tasks if t not in self.registry]
    if unknown:
      raise ValueError(f"robot {robot_id}: task(s) {unknown} are not registered; "
                       f"known: {', '.join(self.registry.names)}")
    # A task only a success detector knows is attempted in the env's shared scene.
    own = [t for t in self.tasks if t not in self._env_tasks]
    if own and not self.env.shared_scene:
      raise ValueError(f"robot {robot_id}: task(s) {own} are not {type(self.env).__name__} "
                       f"tasks, and its scene depends on the task; known: {', '.join(env_tasks)}")
    if own and isinstance(policy, str) and policy == "scripted":
      raise ValueError(f"robot {robot_id}: task(s) {own} have no scripted expert (they are "
                       f"defined by examples only); attempt them with a learned policy")
    self.scheduler = make_scheduler(scheduler, self.tasks, task_weights,
                                    seed=[self.seed, self.robot_id, 1])
    self.policy = make_policy(policy, self.env, gaussian_std, epsilon, sticky_prob,
                              sticky_steps, early_terminate_prob,
                              seed=[self.seed, self.robot_id, 2])
    if hasattr(self.policy, "reseed"):  # A given policy object explores with this robot's seed.
      self.policy.reseed([self.seed, self.robot_id, 2])
    self.sink = sink
    self._counter = 0
    self.episodes_run = 0

  def spec(self):
    return self.env.spec()

  def pid(self) -> int:
    return os.getpid()

  def stats(self) -> dict[str, float]:
    """Episodes run and CPU seconds used by this process (for monitoring, benchmarks)."""
    return {"episodes": self.episodes_run, "cpu_s": time.process_time(), "pid": os.getpid()}

  def run_episode(self, task: str | None = None, episode_id: int | None = None) -> Episode:
    """One complete episode; `task` defaults to the scheduler's choice."""
    task = task or self.scheduler.next_task()
    if episode_id is None:
      episode_id = (self.robot_id << 32) + self._counter
    self._counter += 1
    ep = _run(self, task, episode_id)
    self.episodes_run += 1
    if self.sink is not None:
      self.sink(ep)
    return ep

  def run_episodes(self, n: int, first_episode_id: int | None = None,
                   tasks: Sequence[str] | None = None) -> list[Episode]:
    """`n` complete episodes, ids first_episode_id, +1, ... (or this robot's own ids)."""
    out = []
    for i in range(n):
      eid = None if first_episode_id is None else first_episode_id + i
      out.append(self.run_episode(tasks[i] if tasks else None, eid))
    return out

  def set_success_estimates(self, estimates: Mapping[str, float]) -> None:
    """The fleet's success per task, as the driver's success labeller judged it (a robot
    never judges its own episodes: on a real robot only the detector knows the task)."""
    self.scheduler.set_success_estimates(estimates)

  def set_focus(self, tasks: Sequence[str], share: float) -> None:
    self.scheduler.set_focus(tasks, share)

  def task_probabilities(self) -> dict[str, float]:
    return dict(zip(self.scheduler.tasks, self.scheduler.probabilities().tolist()))

  def sleep(self, seconds: float) -> None:
    """For tests: keeps the actor busy."""
    time.sleep(seconds)


def _run(actor: RobotActor, task: str, episode_id: int) -> Episode:
  ep = run_episode(actor.env, actor.policy, task if task in actor._env_tasks else None,
                   actor.registry.slot(task),
                   env_slots=actor._slots, max_tasks=actor.registry.max_tasks,
                   robot_id=actor.robot_id, episode_id=episode_id,
                   seed=episode_seed(actor.seed, episode_id))
  return ep


def remote_robot_actor(ray, max_restarts: int = -1, num_cpus: float = 1.0):
  """RobotActor as a Ray actor class that Ray restarts after a crash (a killed process).

  A call that was running when the process died raises RayActorError and is not retried
  (max_task_retries=0): its episodes are dropped, never half-emitted.
  """
  return ray.remote(num_cpus=num_cpus, max_restarts=max_restarts, max_task_retries=0)(RobotActor)
