"""Learner, network and CEM settings, built from a config's `learner` and `cem` sections."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from mtopt.cem import check_cem_sizes
from mtopt.config import ConfigError

ARCHITECTURES = ("split", "whole")
HEADS_INPUTS = ("observation", "torso")


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
  """Shape of the task-conditioned Q-network.

  Attributes:
    architecture: "split" (ours: the observation torso runs once per state, only a small
      post-merge head runs per CEM sample) or "whole" (the reference: the whole network,
      action concatenated to the input, runs per sample).
    torso_sizes: hidden widths of the MLP over (state features, task embedding).
    merge_width: width where the action joins the torso's features ("split" only).
    head_sizes: hidden widths after the merge, evaluated per CEM sample ("split"), or the
      extra layers after the torso ("whole").
    task_embedding_dim: width of the learned task-slot embedding (`max_tasks` rows).
    conv_channels: output channels of the image torso's 3x3 stride-2 convolutions.
    image_embedding_dim: width of the dense layer after the convolutions.
    behaviour_sizes: hidden widths of a behaviour head pi(s, task) -> action, trained to
      imitate the rows of successful episodes; CEM then searches around its action (see
      `learners.learning`). Empty: no head, CEM searches the whole action box.
    terminate_sizes: hidden widths of a terminate head: Q(s, terminate) from its own MLP
      over the state and the task embedding (a success classifier of the state; see
      `learners.networks`) instead of the shared head. Empty: the shared head scores it.
    behaviour_modes: K > 1 gives the behaviour head K actions, trained by multiple choice
      (each successful row teaches mostly the action nearest to it), and CEM's first round
      samples around all K. One regressed action is the mean of the data's modes: for a
      task such as "reach any cube" it points between the cubes, where CEM's narrow search
      around it cannot reach one.
    layer_norm: a LayerNorm before each torso layer's ReLU ("split": the per-state torso
      only, not the per-sample head). It bounds the features that extrapolating actions
      are scored from (Ball et al. 2023 use it in offline-to-online critics).
    heads_input: what the behaviour and terminate heads' MLPs read: "observation" (the
      torso's inputs: state vectors, task embedding, image features) or "torso" (its last
      hidden layer, which the Q-function computes anyway; "split" only). With "torso" a
      narrow head costs a fraction of one as wide as the torso, which on state
      observations costs as many FLOPs as the rest of the update (`benchmarks.learner`).
  """

  architecture: str = "split"
  torso_sizes: tuple[int, ...] = (256, 256)
  merge_width: int = 64
  head_sizes: tuple[int, ...] = (32,)
  task_embedding_dim: int = 32
  conv_channels: tuple[int, ...] = (16, 32, 32)
  image_embedding_dim: int = 128
  behaviour_sizes: tuple[int, ...] = ()
  terminate_sizes: tuple[int, ...] = ()
  behaviour_modes: int = 1
  layer_norm: bool = False
  heads_input: str = "observation"

  def __post_init__(self):
    if self.architecture not in ARCHITECTURES:
      raise ConfigError(f"learner.network.architecture must be one of {ARCHITECTURES}, "
                        f"got {self.architecture!r}")
    if int(self.behaviour_modes) < 1:
      raise ConfigError(f"learner.network.behaviour_modes must be >= 1, got "
                        f"{self.behaviour_modes}")
    object.__setattr__(self, "behaviour_modes", int(self.behaviour_modes))
    if self.behaviour_modes > 1 and not self.behaviour_sizes:
      raise ConfigError("learner.network.behaviour_modes > 1 needs a behaviour head "
                        "(learner.network.behaviour_sizes)")
    if self.layer_norm and self.architecture != "split":
      raise ConfigError("learner.network.layer_norm needs architecture 'split'")
    if self.heads_input not in HEADS_INPUTS:
      raise ConfigError(f"learner.network.heads_input must be one of {HEADS_INPUTS}, got "
                        f"{self.heads_input!r}")
    if self.heads_input == "torso" and self.architecture != "split":
      raise ConfigError("learner.network.heads_input 'torso' needs architecture 'split'")
    for name in ("torso_sizes", "head_sizes", "conv_channels", "behaviour_sizes",
                 "terminate_sizes"):
      sizes = tuple(int(s) for s in getattr(self, name))
      if any(s < 1 for s in sizes):
        raise ConfigError(f"learner.network.{name} must be positive widths, got {sizes}")
      object.__setattr__(self, name, sizes)
    for name in ("merge_width", "task_embedding_dim", "image_embedding_dim"):
      if int(getattr(self, name)) < 1:
        raise ConfigError(f"learner.network.{name} must be >= 1, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class CEMConfig:
  """How CEM maximises Q (QT-Opt: 64 samples, 6 elites, 2 iterations).

  Attributes:
    num_samples: candidate actions per state and iteration.
    num_elites: best samples the next sampling distribution is fitted to.
    num_iterations: sampling rounds.
    discrete_dims: indices of binary action dimensions (e.g. gripper open/close).
    prior_std: where the network has a behaviour head (`NetworkConfig.behaviour_sizes`),
      the first round samples around its action with this std (a fraction of each
      dimension's half range) and keeps its discrete choices (see `mtopt.cem`)...
    score_terminate: Q, not the prior, decides terminate (where the env has it): each CEM
      round scores the terminate action beside continuing samples (see `mtopt.cem`). Needs
      a Q of terminating that is right away from the data's own terminations, i.e. state
      labels (`learner.state_label_weight`).
    switch_margin: where a policy acts (not in the Bellman targets), each discrete dim other
      than terminate is switched to its other value after CEM where that raises Q by more
      than this (a probability): the behaviour head's binary choices, which CEM keeps, are
      a regression of rare events (the expert closes the gripper on one step per grasp).
      1.0: never (see `learners.learning.switch_discrete`).
  """

  num_samples: int = 64
  num_elites: int = 6
  num_iterations: int = 2
  discrete_dims: tuple[int, ...] = ()
  prior_std: float = 0.2
  score_terminate: bool = False
  switch_margin: float = 1.0

  def __post_init__(self):
    if not self.prior_std > 0:
      raise ConfigError(f"cem.prior_std must be > 0, got {self.prior_std}")
    if not 0.0 <= self.switch_margin <= 1.0:
      raise ConfigError(f"cem.switch_margin must be in [0, 1], got {self.switch_margin}")
    try:
      check_cem_sizes(self.num_samples, self.num_elites, self.num_iterations)
    except ValueError as e:
      raise ConfigError(str(e)) from None
    object.__setattr__(self, "discrete_dims", tuple(int(d) for d in self.discrete_dims))


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
  """QT-Opt learner settings.

  Attributes:
    batch_size: transitions per update (split across devices when there are several).
    learning_rate: Adam step size.
    final_learning_rate_fraction: the step size at `num_steps`, as a fraction of
      `learning_rate`, reached along a cosine and held after; 1.0: constant. A run
      continued with more `num_steps` follows the schedule stretched to the new length.
    gamma: discount; the batch's per-row discount (0 where an episode terminated) is
      multiplied by it.
    num_steps: updates that `mtopt train` runs.
    grad_clip_norm: global gradient norm clip before Adam.
    polyak_tau: the first target moves this far towards the online network per step
      (QT-Opt's averaging constant 0.9999 is tau = 1e-4).
    lagged_period: every this many steps the second target becomes a copy of the online
      network (QT-Opt lags it by ~6000 steps).
    log_every: steps between TensorBoard writes.
    checkpoint_every: steps between Orbax checkpoints (0: only when asked).
    publish_every: steps between parameter publications to actors.
    updates_per_call: updates that `Learner.run` runs per call of the compiled update, on
      that many batches (fewer where a checkpoint or publication falls in between); more
      per call spend less on launching each (see `learning.make_update_fn`).
    negative_actions: uniformly random actions per row trained toward Q = 0 (artificial
      negatives, see `learning`); 0: none (plain QT-Opt).
    negative_weight: weight of the negatives' cross-entropy beside the Bellman term's.
    negative_terminate_prob: chance that a negative presses terminate (where the env has
      a terminate action); see `learning`.
    mc_lower_bound: targets are at least the row's Monte-Carlo return (see `learning`).
    state_label_weight: weight of the cross-entropy of Q of terminating at a row's state
      toward that state's success label (`Batch.state_label`, see `learning`); 0: off.
    shared_head_at_terminations: with a terminate head, the shared head is also trained at
      the data's terminating rows (toward their targets, as without one): its torso then
      still learns from them what success looks like (see configs/tabletop_state.py).
    network: the Q-network's shape.
    cem: how targets and actions maximise Q.
  """

  batch_size: int = 256
  learning_rate: float = 1e-3
  final_learning_rate_fraction: float = 1.0
  gamma: float = 0.9
  num_steps: int = 2000
  grad_clip_norm: float = 10.0
  polyak_tau: float = 0.005
  lagged_period: int = 500
  log_every: int = 100
  checkpoint_every: int = 1000
  publish_every: int = 100
  updates_per_call: int = 4
  negative_actions: int = 0
  negative_weight: float = 1.0
  negative_terminate_prob: float = 0.5
  mc_lower_bound: bool = True
  state_label_weight: float = 0.0
  shared_head_at_terminations: bool = False
  network: NetworkConfig = NetworkConfig()
  cem: CEMConfig = CEMConfig()

  def __post_init__(self):
    if self.batch_size < 1:
      raise ConfigError(f"learner.batch_size must be >= 1, got {self.batch_size}")
    if not 0.0 <= self.gamma < 1.0:
      raise ConfigError(f"learner.gamma must be in [0, 1), got {self.gamma}")
    if not 0.0 < self.polyak_tau <= 1.0:
      raise ConfigError(f"learner.polyak_tau must be in (0, 1], got {self.polyak_tau}")
    if self.lagged_period < 1:
      raise ConfigError(f"learner.lagged_period must be >= 1, got {self.lagged_period}")
    if self.learning_rate <= 0 or self.grad_clip_norm <= 0:
      raise ConfigError("learner.learning_rate and learner.grad_clip_norm must be > 0")
    if not 0.0 <= self.final_learning_rate_fraction <= 1.0:
      raise ConfigError(f"learner.final_learning_rate_fraction must be in [0, 1], got "
                        f"{self.final_learning_rate_fraction}")
    if not 0.0 <= self.negative_terminate_prob <= 1.0:
      raise ConfigError(f"learner.negative_terminate_prob must be in [0, 1], got "
                        f"{self.negative_terminate_prob}")
    if self.negative_actions < 0 or not self.negative_weight >= 0:
      raise ConfigError(f"learner.negative_actions and learner.negative_weight must be >= 0, "
                        f"got {self.negative_actions}, {self.negative_weight}")
    for name in ("log_every", "publish_every", "updates_per_call"):
      if getattr(self, name) < 1:
        raise ConfigError(f"learner.{name} must be >= 1, got {getattr(self, name)}")

  @classmethod
  def from_config(cls, config: Mapping[str, Any]) -> "LearnerConfig":
    """Builds from an experiment ConfigDict's `learner` (with `network`) and `cem` sections."""
    learner = _section(config, "learner")
    for key in PLACEMENT_KEYS:  # Where the program runs the learner, not how it learns.
      learner.pop(key, None)
    network = dict(learner.pop("network", {}) or {})
    cem = _section(config, "cem")
    return cls(network=_build(NetworkConfig, network, "learner.network"),
               cem=_build(CEMConfig, cem, "cem"),
               **_fields(cls, learner, "learner", exclude=("network", "cem")))


# `learner.*` keys that place the learner node (`mtopt.program.placement`).
PLACEMENT_KEYS = ("num_cpus", "num_gpus", "memory_gb", "resources")


def _section(config, name: str) -> dict:
  if name not in config:
    raise ConfigError(f"config has no {name!r} section")
  section = config[name]
  return dict(section.to_dict() if hasattr(section, "to_dict") else section)


def _fields(cls, values: dict, where: str, exclude=()) -> dict:
  known = {f.name for f in dataclasses.fields(cls)} - set(exclude)
  unknown = sorted(set(values) - known)
  if unknown:
    raise ConfigError(f"unknown key(s) in {where}: {', '.join(unknown)}; known: "
                      f"{', '.join(sorted(known))}")
  return values


def _build(cls, values: dict, where: str):
  return cls(**_fields(cls, values, where))
