"""The success labeller as nodes of their own (`program.placement = "actors"`,
`labeller.nodes` of them): Ray actors holding the run's labeller (its success detector, or
ground truth), with the `labeller` section's resources. Everything in the program that
labels (the replay node's write path, the collector's reviewer, evaluation, a streamed
dataset's index, relabelling after `tasks add`) calls them through one `RemoteLabeller`.

A detector sees only the episodes' final observations, so only those cross to the nodes;
a call's rows are split between the nodes. Ray restarts a dead node with the labeller it
was built with, and retries the calls that were in flight: the writes waiting on it go on.
"""

from __future__ import annotations

import os

import numpy as np

from mtopt.config import ConfigDict
from mtopt.program.remote_node import assigned_resources


class LabellerNode:
  """One labeller in a Ray actor: episodes (or final observations) -> success labels."""

  def __init__(self, labeller):
    self.labeller = labeller

  def ready(self) -> bool:
    return True

  def info(self) -> dict:
    import ray
    return dict(pid=os.getpid(), address=ray.util.get_node_ip_address(),
                resources=assigned_resources())

  def label(self, episodes) -> np.ndarray:
    return np.asarray(self.labeller(episodes), np.float32)

  def predict(self, observations: dict) -> np.ndarray:
    return np.asarray(self.labeller.predict(observations), np.float32)


def _sees_final_observations(labeller) -> bool:
  """A success detector: labels from final observations alone (`predict`)."""
  return hasattr(labeller, "predict") and hasattr(labeller, "spec")


class RemoteLabeller:
  """The program's labeller over LabellerNodes: `labeller(episodes) -> float32 [N,
  max_tasks]`, as the labeller they hold, with its `version` and `task_names` (which
  `relabel` stamps a replay with). Picklable: the replay and learner nodes get it too."""

  def __init__(self, handles, labeller):
    self.handles = list(handles)
    self._keys = list(labeller.spec.observation) if _sees_final_observations(labeller) else None
    for name in ("version", "task_names"):
      if hasattr(labeller, name):
        setattr(self, name, getattr(labeller, name))

  def __call__(self, episodes) -> np.ndarray:
    import ray
    episodes = list(episodes)
    if not episodes:
      return ray.get(self.handles[0].label.remote([]))
    parts = np.array_split(np.arange(len(episodes)), min(len(self.handles), len(episodes)))
    if self._keys is None:
      refs = [h.label.remote([episodes[i] for i in part])
              for h, part in zip(self.handles, parts)]
    else:
      from success_detectors.examples import final_observations
      refs = [h.predict.remote(final_observations([episodes[i] for i in part], self._keys))
              for h, part in zip(self.handles, parts)]
    return np.concatenate(ray.get(refs))

  def infos(self) -> list[dict]:
    import ray
    return ray.get([h.info.remote() for h in self.handles])


def count(config: ConfigDict) -> int:
  """`labeller.nodes` (default 1): how many labeller nodes `placement=actors` runs."""
  return int(config.get("labeller", {}).get("nodes", 1))
