"""The small env interface every simulator (and later every real robot) implements."""

from __future__ import annotations

import abc
from typing import Any

import numpy as np

from mtopt.specs import EnvSpec


class EnvError(ValueError):
  """Bad env name, task, option or action; the message names the problem."""


class Env(abc.ABC):
  """One robot in one scene that can attempt several tasks.

  An episode: `reset(task)`, then `step(action)` until it returns done=True (terminate
  action, terminal state or `spec().max_episode_steps`). Ground-truth success is for
  evaluation and for making success examples; it is never the training reward unless a
  config says so.
  """

  # True where one scene serves every task, so that reset(None) starts an episode of a task
  # the env does not define.
  shared_scene = False

  @abc.abstractmethod
  def spec(self) -> EnvSpec:
    """Observation and action specs, and the time limit."""

  @abc.abstractmethod
  def task_names(self) -> list[str]:
    """The tasks this env can judge, in the order of `success()`."""

  @abc.abstractmethod
  def reset(self, task: str | None, seed: int | None = None) -> dict[str, np.ndarray]:
    """Starts an episode of `task`; the same seed gives the same episode.

    task=None resets the scene for a task the env does not define (one only a success
    detector knows), where the env's scene does not depend on the task; such an episode
    has no scripted expert. Envs whose scene is the task raise EnvError.
    """

  @abc.abstractmethod
  def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], bool, dict[str, Any]]:
    """Applies `action`; returns (observation, done, info).

    info["success"] is bool [len(task_names())], the ground truth after this step;
    info["terminated"] is True if the episode ended by a terminate action or a terminal
    state (not the time limit).
    """

  @abc.abstractmethod
  def success(self) -> np.ndarray:
    """bool [len(task_names())]: ground-truth success of every task now.

    An episode's success is this at its final step.
    """

  def expert_action(self) -> np.ndarray:
    """A scripted expert's action for the current task (privileged state)."""
    raise NotImplementedError(f"{type(self).__name__} has no scripted expert")

  @property
  def current_task(self) -> str | None:
    return getattr(self, "_task", None)

  def close(self) -> None:
    """Releases renderers and simulator handles."""

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def check_action(action, spec: EnvSpec) -> np.ndarray:
  """The action as float32 clipped to the spec's bounds; EnvError if malformed."""
  a = np.asarray(action, dtype=np.float32)
  if a.shape != spec.action.shape:
    raise EnvError(f"action: expected shape {spec.action.shape}, got {a.shape}")
  if not np.isfinite(a).all():
    raise EnvError("action: contains NaN or inf")
  # minimum/maximum: np.clip's dispatch costs several microseconds per call.
  return np.minimum(np.maximum(a, spec.action.minimum), spec.action.maximum)
