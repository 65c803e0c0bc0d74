"""Success / failure examples: the on-disk folder format, its validation, and `ExampleSet`.

An example folder defines one task by final observations, as a person would give them:

    DIR/
      task.json          optional: {"name": "lift_red", "description": "..."}
      success/*.npz      final observations where the task succeeded
      failure/*.npz      final observations where it did not

Each `.npz` holds one array per observation name of the env (e.g. "state" float32 [D], or
"image" uint8 [64, 64, 3] plus "state" for image envs). A file holds either one example
(arrays of exactly the observation shape) or a batch of them (a leading axis N, the same N
for every array). Extra arrays in a file are ignored. Anything else (a missing folder, no
examples, only one class, an unreadable file, a wrong shape or dtype, NaN) is an
`ExamplesError` naming the folder or file; reading never changes anything on disk.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import zipfile
from typing import Iterable, Mapping, Sequence

import numpy as np

from mtopt.specs import ArraySpec, EnvSpec

SUCCESS_DIR = "success"
FAILURE_DIR = "failure"
TASK_FILE = "task.json"


class ExamplesError(ValueError):
  """A bad example folder or example set; the message names the path and the problem."""


@dataclasses.dataclass
class ExampleSet:
  """Final observations with a success/failure label, each for one task slot.

  Attributes:
    observations: name -> [N, ...] (float32 states, uint8 images).
    slot: int32 [N], the task slot each example was given for.
    success: bool [N], whether that task succeeded.
  """

  observations: dict[str, np.ndarray]
  slot: np.ndarray
  success: np.ndarray

  def __post_init__(self):
    self.slot = np.asarray(self.slot, np.int32).reshape(-1)
    self.success = np.asarray(self.success, bool).reshape(-1)
    n = len(self.slot)
    if len(self.success) != n or any(len(v) != n for v in self.observations.values()):
      raise ExamplesError("example set: observations, slot and success differ in length")

  def __len__(self) -> int:
    return len(self.slot)

  def take(self, idx) -> "ExampleSet":
    return ExampleSet({k: v[idx] for k, v in self.observations.items()},
                      self.slot[idx], self.success[idx])

  def for_slots(self, slots: Iterable[int]) -> "ExampleSet":
    return self.take(np.isin(self.slot, list(slots)))

  def counts(self) -> dict[int, tuple[int, int]]:
    """slot -> (successes, failures)."""
    return {int(s): (int(np.sum(self.success & (self.slot == s))),
                     int(np.sum(~self.success & (self.slot == s))))
            for s in np.unique(self.slot)}

  @classmethod
  def concat(cls, sets: Sequence["ExampleSet"]) -> "ExampleSet":
    sets = [s for s in sets if s is not None and len(s)]
    if not sets:
      raise ExamplesError("no examples to concatenate")
    keys = set(sets[0].observations)
    if any(set(s.observations) != keys for s in sets):
      raise ExamplesError("example sets have different observation names")
    return cls({k: np.concatenate([s.observations[k] for s in sets]) for k in sorted(keys)},
               np.concatenate([s.slot for s in sets]), np.concatenate([s.success for s in sets]))

  def save(self, path: str) -> None:
    """Writes one `.npz` atomically (observation arrays plus `_slot`, `_success`)."""
    tmp = path + ".tmp.npz"
    np.savez(tmp, _slot=self.slot, _success=self.success, **self.observations)
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: str) -> "ExampleSet":
    with np.load(path) as f:
      obs = {k: f[k] for k in f.files if not k.startswith("_")}
      return cls(obs, f["_slot"], f["_success"])


def holdout_mask(examples: ExampleSet, fraction: float, seed: int = 0) -> np.ndarray:
  """bool [N]: a held-out split stratified by (slot, success); each group keeps >= 1 for
  training, and holds out round(fraction * n) of its n examples."""
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
  rng = np.random.default_rng(seed)
  held = np.zeros(len(examples), bool)
  for s in np.unique(examples.slot):
    for y in (True, False):
      idx = np.flatnonzero((examples.slot == s) & (examples.success == y))
      k = min(int(round(fraction * len(idx))), len(idx) - 1)
      if k > 0:
        held[rng.choice(idx, k, replace=False)] = True
  return held


def _check_array(path: str, name: str, value: np.ndarray, spec: ArraySpec) -> np.ndarray:
  """The examples in one file's array, as [n, *spec.shape] of the spec's dtype."""
  if value.shape == spec.shape:
    value = value[None]
  elif value.shape[1:] != spec.shape:
    raise ExamplesError(f"{path}: array {name!r} has shape {value.shape}; expected "
                        f"{spec.shape} (one example) or (N, {', '.join(map(str, spec.shape))})")
  if spec.dtype == np.uint8:
    if value.dtype != np.uint8:
      raise ExamplesError(f"{path}: array {name!r} is {value.dtype}; images must be uint8")
  else:
    if not np.issubdtype(value.dtype, np.floating):
      raise ExamplesError(f"{path}: array {name!r} is {value.dtype}; expected floats")
    value = value.astype(spec.dtype)
    if not np.all(np.isfinite(value)):
      raise ExamplesError(f"{path}: array {name!r} has NaN or inf values")
  return value


def _read_file(path: str, obs_spec: Mapping[str, ArraySpec]) -> dict[str, np.ndarray]:
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
    raise ExamplesError(f"{path}: cannot read as .npz ({type(e).__name__}: {e})") from None
  missing = sorted(set(obs_spec) - set(arrays))
  if missing:
    raise ExamplesError(f"{path}: missing observation array(s) {missing}; "
                        f"has {sorted(arrays)}")
  out = {k: _check_array(path, k, arrays[k], s) for k, s in obs_spec.items()}
  sizes = {len(v) for v in out.values()}
  if len(sizes) != 1:
    raise ExamplesError(f"{path}: arrays hold different numbers of examples {sorted(sizes)}")
  return out


def _read_class(folder: str, cls_dir: str, obs_spec) -> dict[str, np.ndarray] | None:
  d = os.path.join(folder, cls_dir)
  if not os.path.isdir(d):
    return None
  files = sorted(glob.glob(os.path.join(d, "*.npz")))
  if not files:
    return None
  chunks = [_read_file(p, obs_spec) for p in files]
  return {k: np.concatenate([c[k] for c in chunks]) for k in obs_spec}


def read_example_folder(folder: str, spec: EnvSpec, slot: int = 0) -> ExampleSet:
  """Reads and validates a task's example folder (see the module docstring) for `slot`."""
  if not os.path.isdir(folder):
    raise ExamplesError(f"example folder {folder!r} does not exist or is not a directory")
  obs_spec = dict(spec.observation)
  pos = _read_class(folder, SUCCESS_DIR, obs_spec)
  neg = _read_class(folder, FAILURE_DIR, obs_spec)
  if pos is None and neg is None:
    raise ExamplesError(f"example folder {folder!r} is empty: put .npz files of final "
                        f"observations in {SUCCESS_DIR}/ and {FAILURE_DIR}/")
  if pos is None or neg is None:
    have, lack = (SUCCESS_DIR, FAILURE_DIR) if neg is None else (FAILURE_DIR, SUCCESS_DIR)
    raise ExamplesError(f"example folder {folder!r} has only one class ({have}/); "
                        f"add .npz examples in {lack}/ too")
  n_pos, n_neg = len(next(iter(pos.values()))), len(next(iter(neg.values())))
  obs = {k: np.concatenate([pos[k], neg[k]]) for k in obs_spec}
  success = np.concatenate([np.ones(n_pos, bool), np.zeros(n_neg, bool)])
  return ExampleSet(obs, np.full(n_pos + n_neg, slot, np.int32), success)


def read_task_info(folder: str) -> dict:
  """The optional task.json of an example folder ({} if none)."""
  path = os.path.join(folder, TASK_FILE)
  if not os.path.exists(path):
    return {}
  try:
    with open(path) as f:
      info = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ExamplesError(f"{path}: not readable JSON ({e})") from None
  if not isinstance(info, dict):
    raise ExamplesError(f"{path}: expected a JSON object")
  return info


def write_example_folder(folder: str, successes: Mapping[str, np.ndarray],
                         failures: Mapping[str, np.ndarray], name: str = "",
                         description: str = "", per_file: int = 256) -> str:
  """Writes batched observations [N, ...] as an example folder (files of <= per_file)."""
  for cls_dir, obs in ((SUCCESS_DIR, successes), (FAILURE_DIR, failures)):
    d = os.path.join(folder, cls_dir)
    os.makedirs(d, exist_ok=True)
    n = len(next(iter(obs.values()))) if obs else 0
    for i, start in enumerate(range(0, n, per_file)):
      np.savez(os.path.join(d, f"{i:05d}.npz"),
               **{k: np.asarray(v[start:start + per_file]) for k, v in obs.items()})
  if name or description:
    with open(os.path.join(folder, TASK_FILE), "w") as f:
      json.dump({"name": name, "description": description}, f, indent=2)
  return folder


def final_observations(episodes: Sequence, keys: Iterable[str]) -> dict[str, np.ndarray]:
  """Stacks the final observation of each episode: name -> [N, ...]."""
  return {k: np.stack([ep.observations[k][-1] for ep in episodes]) for k in keys}
