"""Uploaded episodes into the fleet replay: validated, labelled, journalled, written once.

An upload is checked against the run's spec and tasks, given a run-wide id (robot index
<< 32 | the robot's own id), labelled by the run's success detector where the run has one
(a robot's own labels are not trusted then), appended to the journal (fsync) and written
to the replay; only then is it acknowledged. An id already stored is acknowledged as a
duplicate and stored no second time, which is what makes the robot's retries safe.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np

from mtopt.episode import Episode, EpisodeError
from mtopt.serving.journal import Journal, journal_path
from mtopt.specs import EnvSpec

MAX_ROBOT_EPISODE_ID = 1 << 32


class UploadError(ValueError):
  """An uploaded episode is not acceptable; the message says why."""


def run_labeller(run_dir: str, config) -> Callable | None:
  """The run's success detector (RUN/detector), else ground-truth labels where the run
  was configured for them (simulated robots send `success`), else None."""
  path = os.path.join(run_dir, "detector")
  if os.path.exists(path):
    from success_detectors.detector import SuccessDetector
    return SuccessDetector.load(path)
  if config.train.get("labels") == "ground_truth":
    def ground_truth(episodes):
      bad = [ep.episode_id for ep in episodes if ep.success is None]
      if bad:
        raise UploadError(f"episode {bad[0]}: this run labels by ground truth and it has no "
                          "'success'")
      return np.stack([np.asarray(ep.success, np.float32) for ep in episodes])
    return ground_truth
  return None


def to_episode(raw: Any, robot_index: int, tasks: dict[str, int], spec: EnvSpec,
               max_tasks: int) -> Episode:
  """An Episode from an upload message's `episode` map; raises UploadError / EpisodeError."""
  if not isinstance(raw, dict):
    raise UploadError("episode: expected a map")
  unknown = set(raw) - {"episode_id", "task", "observations", "actions", "terminated",
                        "labels", "success"}
  if unknown:
    raise UploadError(f"episode: unexpected fields {sorted(unknown)}")
  eid = raw.get("episode_id")
  if isinstance(eid, bool) or not isinstance(eid, int) or not 0 <= eid < MAX_ROBOT_EPISODE_ID:
    raise UploadError(f"episode_id: expected an int in [0, 2**32), got {eid!r}")
  slot = task_slot(raw.get("task"), tasks)
  obs = raw.get("observations")
  if not isinstance(obs, dict) or not all(isinstance(v, np.ndarray) for v in obs.values()):
    raise UploadError("observations: expected a map of arrays")
  actions = raw.get("actions")
  if not isinstance(actions, np.ndarray):
    raise UploadError("actions: expected an array [T, A]")
  terminated = raw.get("terminated", False)
  if not isinstance(terminated, bool):
    raise UploadError("terminated: expected a bool")
  ep = Episode(observations=dict(obs), actions=actions, task_id=slot, robot_id=robot_index,
               episode_id=(robot_index << 32) | eid, terminated=terminated,
               labels=raw.get("labels"), success=raw.get("success"))
  return ep.validate(spec, max_tasks)


def task_slot(task: Any, tasks: dict[str, int]) -> int:
  """The active slot of a task name or slot number; raises UploadError otherwise."""
  if isinstance(task, str):
    if task not in tasks:
      raise UploadError(f"unknown task {task!r}; this run serves {sorted(tasks)}")
    return tasks[task]
  if isinstance(task, int) and not isinstance(task, bool):
    if task not in tasks.values():
      raise UploadError(f"task slot {task} is not an active task (active: "
                        f"{sorted(tasks.values())})")
    return task
  raise UploadError(f"task: expected a task name or slot, got {type(task).__name__}")


def _record(ep: Episode) -> dict:
  r = {"type": "episode", "episode_id": ep.episode_id, "robot_id": ep.robot_id,
       "task_id": ep.task_id, "terminated": ep.terminated, "observations": ep.observations,
       "actions": ep.actions, "labels": ep.labels}
  if ep.success is not None:
    r["success"] = ep.success
  return r


def _from_record(r: dict) -> Episode:
  return Episode(observations=r["observations"], actions=r["actions"], task_id=r["task_id"],
                 robot_id=r["robot_id"], episode_id=r["episode_id"],
                 terminated=r["terminated"], labels=r["labels"], success=r.get("success"))


class EpisodeIngest:
  """Stores uploads; `store(batch)` runs in one worker thread (not thread-safe itself).

  Args:
    run_dir: the journal is RUN/fleet/episodes.journal.
    replay: a `replay.base.Replay` (e.g. ReverbReplay, its labeller unused here), or None
      to keep the journal only.
    refill: write the whole journal to `replay` (one the server owns); False: only the
      journal's episodes past `replay.acknowledged()` (a replay that restores its log).
    labeller: labeller(episodes) -> float32 [N, max_tasks], or None (robots send labels).
  """

  def __init__(self, run_dir: str, spec: EnvSpec, tasks: dict[str, int], max_tasks: int,
               replay=None, labeller: Callable | None = None, refill: bool = True):
    self.spec, self.tasks, self.max_tasks = spec, dict(tasks), int(max_tasks)
    self.replay, self.labeller = replay, labeller
    self.journal = Journal(journal_path(run_dir))
    self.stored_ids: set[int] = set()
    restored = [_from_record(r) for r in self.journal.records]
    self.journal.records = []
    self.stored_ids.update(ep.episode_id for ep in restored)
    # refill: a replay of the server's own (in memory) gets the whole journal again.
    # Otherwise the replay restores its own log and holds the journal's episodes in the
    # journal's order (the served fleet's training replay): a crash between the journal's
    # fsync and the replay's write leaves the journal's tail past what the replay
    # acknowledged, which goes in now.
    start = (len(restored) if replay is None else 0 if refill
             else min(int(replay.acknowledged()), len(restored)))
    for i in range(start, len(restored), 256):
      replay.write_many(restored[i:i + 256])
    self.num_restored, self.num_rewritten = len(restored), len(restored) - start

  def store(self, uploads: Sequence[tuple[int, Any]]) -> list:
    """uploads: (robot index, raw episode map). Returns per upload
    {"episode_id", "duplicate"} or an UploadError/EpisodeError instance."""
    results: list = [None] * len(uploads)
    fresh: dict[int, tuple[int, Episode]] = {}  # run-wide id -> (upload index, episode)
    for i, (robot, raw) in enumerate(uploads):
      try:
        ep = to_episode(raw, robot, self.tasks, self.spec, self.max_tasks)
      except (UploadError, EpisodeError) as e:
        results[i] = e
        continue
      own_id = ep.episode_id & (MAX_ROBOT_EPISODE_ID - 1)
      if ep.episode_id in self.stored_ids or ep.episode_id in fresh:
        results[i] = {"episode_id": own_id, "duplicate": True}
        continue
      fresh[ep.episode_id] = (i, ep)
    if not fresh:
      return results
    index = [i for i, _ in fresh.values()]
    episodes = [ep for _, ep in fresh.values()]
    bad = (UploadError, EpisodeError, ValueError)
    try:
      labelled = self._label(episodes)
    except bad:
      # One robot's bad upload must not fail the others batched with it: one at a time.
      labelled = []
      for i, ep in zip(index, episodes):
        try:
          labelled.append(self._label([ep])[0])
        except bad as e:
          results[i] = UploadError(str(e))
          labelled.append(None)
    keep = [(i, ep) for i, ep in zip(index, labelled) if ep is not None]
    if not keep:
      return results
    index, episodes = [i for i, _ in keep], [ep for _, ep in keep]
    self.journal.append_many([_record(ep) for ep in episodes])  # Durable from here on.
    self.stored_ids.update(ep.episode_id for ep in episodes)
    if self.replay is not None:
      self.replay.write_many(episodes)
    for i, ep in zip(index, episodes):
      results[i] = {"episode_id": ep.episode_id & (MAX_ROBOT_EPISODE_ID - 1), "duplicate": False}
    return results

  def _label(self, episodes: list[Episode]) -> list[Episode]:
    if self.labeller is None:
      missing = [ep.episode_id for ep in episodes if ep.labels is None]
      if missing:
        raise UploadError("this run has no success detector: uploads must carry 'labels' "
                          f"(float32 [{self.max_tasks}])")
      return episodes
    probs = np.asarray(self.labeller(episodes), np.float32)
    if probs.shape != (len(episodes), self.max_tasks):
      raise UploadError(f"labeller returned shape {probs.shape}")
    return [ep.with_labels(p).validate(self.spec, self.max_tasks)
            for ep, p in zip(episodes, probs)]

  def close(self) -> None:
    self.journal.close()
