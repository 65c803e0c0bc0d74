"""Tabletop tasks: ground-truth success predicates on the one shared scene.

A task is judged on the current state (for an episode: its final state), the same thing
a success detector sees in the final observation. All predicates are evaluated at once,
vectorised, so that every step can report success for every task.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mtopt.envs import tabletop_scene as scene

KINDS = ("reach", "lift", "bin", "plate", "push")
PUSH_PAIRS = ((0, 1), (1, 2), (2, 0))  # push OBJECTS[a] next to OBJECTS[b].

REACH_TOLERANCE = 0.02  # Tip to the point just above the object's top (m).
LIFT_HEIGHT = 0.05  # Object's bottom above the table (m).
REST_TOLERANCE = 0.015  # An object rests on a surface if its bottom is within this (m).
PUSH_GAP = 0.025  # Push a to b: the cubes' sides are at most this far apart (m).


@dataclasses.dataclass(frozen=True)
class TaskDef:
  """Attributes:
    name: the task name, e.g. "place_red_in_bin".
    kind: one of KINDS.
    obj: index into scene.OBJECTS of the object acted on.
    other: for "push", the index of the object to push towards; else -1.
  """

  name: str
  kind: str
  obj: int
  other: int = -1


def _build_tasks() -> tuple[TaskDef, ...]:
  names = [o.name for o in scene.OBJECTS]
  tasks = [TaskDef(f"reach_{n}", "reach", i) for i, n in enumerate(names)]
  tasks += [TaskDef(f"lift_{n}", "lift", i) for i, n in enumerate(names)]
  tasks += [TaskDef(f"place_{n}_in_bin", "bin", i) for i, n in enumerate(names)]
  tasks += [TaskDef(f"place_{n}_on_plate", "plate", i) for i, n in enumerate(names)]
  tasks += [TaskDef(f"push_{names[a]}_to_{names[b]}", "push", a, b) for a, b in PUSH_PAIRS]
  return tuple(tasks)


TASKS = _build_tasks()
TASK_NAMES = tuple(t.name for t in TASKS)
HALF = np.array([o.half_size for o in scene.OBJECTS])


def task_by_name(name: str) -> TaskDef:
  for t in TASKS:
    if t.name == name:
      return t
  raise KeyError(f"unknown tabletop task {name!r}; known: {', '.join(TASK_NAMES)}")


def reach_point(obj_pos: np.ndarray, i: int) -> np.ndarray:
  """The point just above object i's top where the gripper tip touches it."""
  return obj_pos[i] + np.array([0.0, 0.0, HALF[i] + _TIP_CLEARANCE])


def success_all(tip: np.ndarray, obj_pos: np.ndarray) -> np.ndarray:
  """bool [len(TASKS)]: which tasks the state (tip [3], object positions [N, 3]) satisfies.

  The order is TASKS' order: reach, lift, bin, plate (one per object), then push pairs.
  Plain float arithmetic: for three objects it is several times faster than numpy.
  """
  tx, ty, tz = tip.tolist()
  objs = obj_pos.tolist()
  bx, by = scene.BIN.center
  px, py = scene.PLATE.center
  bin_h, plate_r2 = scene.BIN.half_extent, scene.PLATE.half_extent ** 2
  reach, lift, in_bin, on_plate, on_table = [], [], [], [], []
  for (x, y, z), half in zip(objs, _HALF):
    bottom = z - half
    dz = z + half + _TIP_CLEARANCE - tz
    reach.append((x - tx) ** 2 + (y - ty) ** 2 + dz * dz < REACH_TOLERANCE ** 2)
    lift.append(bottom > LIFT_HEIGHT)
    in_bin.append(abs(x - bx) < bin_h and abs(y - by) < bin_h
                  and bottom < scene.BIN.top + REST_TOLERANCE)
    on_plate.append((x - px) ** 2 + (y - py) ** 2 < plate_r2
                    and abs(bottom - scene.PLATE.top) < REST_TOLERANCE)
    on_table.append(bottom < REST_TOLERANCE)
  push = []
  for a, b in PUSH_PAIRS:
    reach_ab = _HALF[a] + _HALF[b] + PUSH_GAP
    gap2 = (objs[a][0] - objs[b][0]) ** 2 + (objs[a][1] - objs[b][1]) ** 2
    push.append(gap2 < reach_ab ** 2 and on_table[a] and on_table[b])
  return np.array(reach + lift + in_bin + on_plate + push, dtype=bool)


def success_batch(tip: np.ndarray, obj_pos: np.ndarray) -> np.ndarray:
  """bool [N, len(TASKS)]: `success_all` of N states at once (tip [N, 3], objects [N, K, 3])."""
  tip, obj = np.asarray(tip, np.float64)[:, None], np.asarray(obj_pos, np.float64)
  half = HALF[None]
  bottom = obj[..., 2] - half
  dz = obj[..., 2] + half + _TIP_CLEARANCE - tip[..., 2]
  reach = (np.square(obj[..., :2] - tip[..., :2]).sum(-1) + dz * dz) < REACH_TOLERANCE ** 2
  lift = bottom > LIFT_HEIGHT
  b, p = np.asarray(scene.BIN.center), np.asarray(scene.PLATE.center)
  in_bin = (np.abs(obj[..., :2] - b).max(-1) < scene.BIN.half_extent) & (
      bottom < scene.BIN.top + REST_TOLERANCE)
  on_plate = (np.square(obj[..., :2] - p).sum(-1) < scene.PLATE.half_extent ** 2) & (
      np.abs(bottom - scene.PLATE.top) < REST_TOLERANCE)
  on_table = bottom < REST_TOLERANCE
  push = [(np.square(obj[:, a, :2] - obj[:, b_, :2]).sum(-1)
           < (HALF[a] + HALF[b_] + PUSH_GAP) ** 2) & on_table[:, a] & on_table[:, b_]
          for a, b_ in PUSH_PAIRS]
  return np.concatenate([reach, lift, in_bin, on_plate, np.stack(push, -1)], -1)


_HALF = HALF.tolist()
_TIP_CLEARANCE = scene.TIP_RADIUS + 0.002
