"""Array specs: the shapes and dtypes that envs, episodes, replay and networks agree on."""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np


class SpecError(ValueError):
  """A value does not match its spec; the message names the field."""


@dataclasses.dataclass(frozen=True)
class ArraySpec:
  """Shape and dtype of one array (without any leading time or batch axis)."""

  shape: tuple[int, ...]
  dtype: np.dtype
  name: str = ""

  def __post_init__(self):
    object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
    object.__setattr__(self, "dtype", np.dtype(self.dtype))

  def zeros(self, *leading: int) -> np.ndarray:
    return np.zeros((*leading, *self.shape), self.dtype)

  def check(self, value: np.ndarray, leading: tuple[int, ...] = (), field: str = "") -> None:
    """Raises SpecError unless `value` has shape `leading + shape`, this dtype, finite floats."""
    field = field or self.name
    if not isinstance(value, np.ndarray):
      raise SpecError(f"{field}: expected a numpy array, got {type(value).__name__}")
    want = (*leading, *self.shape)
    if value.shape != want:
      raise SpecError(f"{field}: expected shape {want}, got {value.shape}")
    if value.dtype != self.dtype:
      raise SpecError(f"{field}: expected dtype {self.dtype}, got {value.dtype}")
    if np.issubdtype(self.dtype, np.floating) and not np.all(np.isfinite(value)):
      bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
      raise SpecError(f"{field}: {bad} non-finite value(s) (NaN or inf)")

  def to_json(self) -> dict:
    return {"shape": list(self.shape), "dtype": self.dtype.name, "name": self.name}

  @classmethod
  def from_json(cls, d: Mapping) -> "ArraySpec":
    if "minimum" in d:
      return BoundedArraySpec(tuple(d["shape"]), d["dtype"], d.get("name", ""),
                              np.asarray(d["minimum"]), np.asarray(d["maximum"]))
    return cls(tuple(d["shape"]), d["dtype"], d.get("name", ""))


@dataclasses.dataclass(frozen=True)
class BoundedArraySpec(ArraySpec):
  """An ArraySpec with elementwise bounds (actions)."""

  minimum: np.ndarray = dataclasses.field(default_factory=lambda: np.asarray(-1.0))
  maximum: np.ndarray = dataclasses.field(default_factory=lambda: np.asarray(1.0))

  def __post_init__(self):
    super().__post_init__()
    lo = np.broadcast_to(np.asarray(self.minimum, self.dtype), self.shape).copy()
    hi = np.broadcast_to(np.asarray(self.maximum, self.dtype), self.shape).copy()
    if np.any(lo > hi):
      raise SpecError(f"{self.name}: minimum > maximum")
    object.__setattr__(self, "minimum", lo)
    object.__setattr__(self, "maximum", hi)

  def check(self, value, leading=(), field="", atol: float = 1e-5) -> None:
    super().check(value, leading, field)
    if np.any(value < self.minimum - atol) or np.any(value > self.maximum + atol):
      raise SpecError(f"{field or self.name}: values outside bounds "
                      f"[{self.minimum.min()}, {self.maximum.max()}]")

  def to_json(self) -> dict:
    return {**super().to_json(), "minimum": self.minimum.tolist(), "maximum": self.maximum.tolist()}

  # Frozen dataclasses compare arrays with ==, which is ambiguous for numpy: compare by value.
  def __eq__(self, other):
    return (isinstance(other, BoundedArraySpec) and self.shape == other.shape
            and self.dtype == other.dtype and np.array_equal(self.minimum, other.minimum)
            and np.array_equal(self.maximum, other.maximum))

  __hash__ = None


@dataclasses.dataclass(frozen=True)
class EnvSpec:
  """What an environment produces and accepts.

  Attributes:
    observation: named observation arrays, e.g. {"state": (D,)} or {"image": (64, 64, 3)}.
    action: bounded continuous action, e.g. (dx, dy, dz, gripper) in [-1, 1].
    max_episode_steps: the time limit T of one episode.
    terminate_dim: the action dimension that ends the episode when > 0, if any. The env
      then ignores the other dimensions, so every terminate action is the same action.
  """

  observation: Mapping[str, ArraySpec]
  action: BoundedArraySpec
  max_episode_steps: int
  terminate_dim: int | None = None

  def __post_init__(self):
    if self.terminate_dim is not None and not 0 <= self.terminate_dim < self.action.shape[-1]:
      raise SpecError(f"terminate_dim {self.terminate_dim} is not an action dimension "
                      f"(action shape {self.action.shape})")

  def to_json(self) -> dict:
    return {"observation": {k: v.to_json() for k, v in self.observation.items()},
            "action": self.action.to_json(), "max_episode_steps": self.max_episode_steps,
            "terminate_dim": self.terminate_dim}

  @classmethod
  def from_json(cls, d: Mapping) -> "EnvSpec":
    t = d.get("terminate_dim")
    return cls({k: ArraySpec.from_json(v) for k, v in d["observation"].items()},
               ArraySpec.from_json(d["action"]), int(d["max_episode_steps"]),
               None if t is None else int(t))
