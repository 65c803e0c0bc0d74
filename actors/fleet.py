"""A fleet of K Ray RobotActors collecting episodes, surviving actor crashes.

Each call asks one actor for a few whole episodes with ids allotted here, so ids are
unique across the fleet and restarts. If an actor dies (a killed process, a crash), Ray
restarts it, the call fails, its ids are recorded as lost and never reused, and the
fleet asks again: a killed episode is absent, never half-written, and collection goes on.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

from mtopt.episode import Episode

from actors.robot_actor import remote_robot_actor


class FleetError(RuntimeError):
  """An actor failed more often than allowed; the message names it and the last error."""


class Fleet:
  """Attributes:
    actors: the Ray actor handles (robot ids 0..K-1).
    lost_episode_ids: ids of episodes dropped because their actor died mid-call.
    failures: crash count per actor.
  """

  def __init__(self, ray, num_actors: int, actor_kwargs: dict[str, Any],
               episodes_per_call: int = 4, calls_in_flight: int = 2,
               max_failures_per_actor: int = 10, num_cpus: float = 1.0):
    if num_actors < 1:
      raise ValueError(f"Fleet: num_actors must be >= 1, got {num_actors}")
    if episodes_per_call < 1 or calls_in_flight < 1:
      raise ValueError("Fleet: episodes_per_call and calls_in_flight must be >= 1")
    self._ray = ray
    cls = remote_robot_actor(ray, num_cpus=num_cpus)
    self.actors = [cls.remote(robot_id=i, **actor_kwargs) for i in range(num_actors)]
    self.episodes_per_call = episodes_per_call
    self.calls_in_flight = calls_in_flight
    self.max_failures = max_failures_per_actor
    self.failures = [0] * num_actors
    self.lost_episode_ids: list[int] = []

  def wait_ready(self, timeout: float = 120.0) -> None:
    """Blocks until every actor has built its env (so timing excludes start-up)."""
    self._ray.get([a.pid.remote() for a in self.actors], timeout=timeout)

  def collect(self, num_episodes: int, first_episode_id: int = 0) -> Iterator[Episode]:
    """Yields `num_episodes` complete episodes as they arrive (in no fixed order)."""
    from ray.exceptions import RayActorError
    ray = self._ray
    pending: dict[Any, tuple[int, int, int]] = {}
    state = {"next_id": first_episode_id, "unrequested": num_episodes}

    def submit(i: int) -> None:
      n = min(self.episodes_per_call, state["unrequested"])
      if n <= 0:
        return
      ref = self.actors[i].run_episodes.remote(n, state["next_id"])
      pending[ref] = (i, state["next_id"], n)
      state["next_id"] += n
      state["unrequested"] -= n

    for _ in range(self.calls_in_flight):
      for i in range(len(self.actors)):
        submit(i)
    while pending:
      [ref], _ = ray.wait(list(pending), num_returns=1)
      i, first, n = pending.pop(ref)
      try:
        episodes = ray.get(ref)
      except RayActorError as e:
        self.failures[i] += 1
        self.lost_episode_ids.extend(range(first, first + n))
        state["unrequested"] += n
        if self.failures[i] > self.max_failures:
          raise FleetError(f"robot {i} failed {self.failures[i]} times; last error: {e}") from e
        self._wait_alive(i)
        submit(i)
        continue
      submit(i)  # Keep the actor busy while the caller handles these.
      yield from episodes

  def _wait_alive(self, i: int, timeout: float = 120.0) -> None:
    """Waits for Ray to restart actor i (calls sent while it restarts would fail too)."""
    from ray.exceptions import GetTimeoutError, RayActorError
    deadline = time.monotonic() + timeout
    while True:
      try:
        self._ray.get(self.actors[i].pid.remote(), timeout=max(1.0, deadline - time.monotonic()))
        return
      except (RayActorError, GetTimeoutError) as e:
        if time.monotonic() > deadline:
          raise FleetError(f"robot {i} did not come back within {timeout:.0f} s: {e}") from e
        time.sleep(0.2)

  def call_all(self, method: str, *args, **kwargs) -> list:
    """Calls a RobotActor method on every actor and waits for the results."""
    return self._ray.get([getattr(a, method).remote(*args, **kwargs) for a in self.actors])

  def tell_all(self, method: str, *args, **kwargs) -> int:
    """Advice (success estimates, focus) to every actor that is up; one that is down or
    restarting is skipped (it starts afresh and hears the next advice). Returns how many
    took it."""
    from ray.exceptions import RayActorError
    took = 0
    for ref in [getattr(a, method).remote(*args, **kwargs) for a in self.actors]:
      try:
        self._ray.get(ref)
        took += 1
      except RayActorError:  # Includes ActorUnavailableError (restarting).
        pass
    return took

  def shutdown(self) -> None:
    for a in self.actors:
      self._ray.kill(a, no_restart=True)
    self.actors = []

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.shutdown()
