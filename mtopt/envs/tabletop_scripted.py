"""Scripted experts for every tabletop task, computed from the true scene state.

Each controller is a stateless function of the state (no remembered phase), so it
recovers from whatever exploration noise did to the scene on the previous step.
Actions are [dx, dy, dz, gripper, terminate] in [-1, 1]: gripper > 0 closes, terminate
> 0 ends the episode.
"""

from __future__ import annotations

import numpy as np

from mtopt.envs import tabletop_scene as scene
from mtopt.envs import tabletop_tasks as tasks

APPROACH_Z = 0.09  # Tip height for moving over objects (m).
CARRY_Z = 0.13  # Tip height for carrying an object over the bin's walls (m).
RELEASE_GAP = 0.006  # Object's bottom above the target surface when letting go (m).
PUSH_STEP = 0.015  # Metres per step while pushing (slow keeps the cube from spinning).
AT = 0.004  # "Close enough" to a waypoint (m).
ZONE_AT = 0.015  # Release this near the bin's or plate's centre.
GRASP_AT = 0.008  # Close the gripper this near the grasp point (inside the env's grasp zone).


def _move(tip: np.ndarray, target: np.ndarray, grip: float, terminate: bool = False,
          max_step: float = scene.MAX_DELTA) -> np.ndarray:
  delta = np.clip((target - tip) / scene.MAX_DELTA, -max_step / scene.MAX_DELTA,
                  max_step / scene.MAX_DELTA)
  return np.array([*delta, grip, 1.0 if terminate else -1.0], np.float32)


def _travel(tip: np.ndarray, xy: np.ndarray, height: float, grip: float) -> np.ndarray:
  """Goes to (xy, height), first climbing if the tip is low and far from xy."""
  far = np.linalg.norm(tip[:2] - xy) > AT
  if far and tip[2] < height - 0.02:
    return _move(tip, np.array([tip[0], tip[1], height]), grip)
  return _move(tip, np.array([xy[0], xy[1], height]), grip)


def _grasp_point(obj_pos: np.ndarray, i: int) -> np.ndarray:
  return tasks.reach_point(obj_pos, i)


def _pick(tip, closed, held, obj_pos, i) -> np.ndarray | None:
  """Moves to and grasps object i; None once it is held."""
  if held == i:
    return None
  if held >= 0:  # Holding the wrong object: let go and climb.
    return _move(tip, np.array([tip[0], tip[1], APPROACH_Z]), -1.0)
  g = _grasp_point(obj_pos, i)
  xy_err = np.linalg.norm(tip[:2] - g[:2])
  if closed:  # Open before approaching, or the next close would not grasp.
    return _move(tip, np.array([tip[0], tip[1], max(tip[2], g[2] + 0.01)]), -1.0)
  if xy_err <= GRASP_AT and -0.002 <= tip[2] - g[2] <= GRASP_AT:
    return _move(tip, tip, 1.0)  # Inside the grasp zone, open: close now.
  if xy_err > GRASP_AT and tip[2] < g[2] + 0.015:
    return _travel(tip, g[:2], max(APPROACH_Z, g[2] + 0.02), -1.0)
  return _move(tip, g, -1.0)


def _place(tip, closed, held, obj_pos, i, zone, success) -> np.ndarray:
  if held != i:
    if success:  # Placed and released: climb clear, then stop.
      done = tip[2] > obj_pos[i, 2] + tasks.HALF[i] + 0.04
      return _move(tip, np.array([tip[0], tip[1], CARRY_Z]), -1.0, terminate=done)
    return _pick(tip, closed, held, obj_pos, i)
  hang = tip[2] - obj_pos[i, 2]  # Tip height above the held object's centre.
  release_z = zone.top + RELEASE_GAP + tasks.HALF[i] + hang
  target_xy = np.asarray(zone.center)
  if np.linalg.norm(tip[:2] - target_xy) > ZONE_AT:
    return _travel(tip, target_xy, CARRY_Z, 1.0)
  if tip[2] > release_z + 0.006:
    return _move(tip, np.array([*target_xy, release_z]), 1.0)
  return _move(tip, tip, -1.0)  # Let go.


def _push(tip, closed, held, obj_pos, a, b, success) -> np.ndarray:
  if success:
    return _move(tip, tip, -1.0, terminate=True)
  if held >= 0:
    return _move(tip, np.array([tip[0], tip[1], APPROACH_Z]), -1.0)
  pa, pb = obj_pos[a, :2], obj_pos[b, :2]
  d = pb - pa
  dist = np.linalg.norm(d)
  d = d / max(dist, 1e-6)
  normal = np.array([-d[1], d[0]])
  push_z = max(0.8 * tasks.HALF[a], scene.WORKSPACE_LOW[2])
  behind = tasks.HALF[a] + scene.TIP_RADIUS + 0.004
  rel = tip[:2] - pa
  along, lateral = rel @ d, rel @ normal
  low = tip[2] < push_z + 0.01
  if low and -(behind + 0.03) < along < -0.004 and abs(lateral) < 0.015:
    # Aim a little past the touching point, relative to the cube (not the tip), so that a
    # lagging cube is never run over and sideways drift is corrected at once.
    remaining = dist - (tasks.HALF[a] + tasks.HALF[b] + 0.012)
    step = np.clip(remaining, 0.004, PUSH_STEP)
    target = pa - d * (tasks.HALF[a] + scene.TIP_RADIUS) + d * step
    return _move(tip, np.array([*target, push_z]), -1.0)
  pre = pa - d * behind
  if np.linalg.norm(tip[:2] - pre) <= AT:
    return _move(tip, np.array([*pre, push_z]), -1.0)
  return _travel(tip, pre, APPROACH_Z, -1.0)


def expert_action(task: tasks.TaskDef, tip: np.ndarray, closed: bool, held: int,
                  obj_pos: np.ndarray, success: np.ndarray) -> np.ndarray:
  """The scripted action float32 [5] for `task` in the given state.

  Args:
    task: the task being attempted.
    tip: gripper tip position [3].
    closed: whether the gripper is closed.
    held: index of the held object, or -1.
    obj_pos: object centre positions [num_objects, 3].
    success: the current success of every task (tasks.TASKS order).
  """
  i = task.obj
  ok = bool(success[tasks.TASKS.index(task)])
  if task.kind == "reach":
    g = tasks.reach_point(obj_pos, i)
    if ok:
      return _move(tip, tip, -1.0, terminate=True)
    if held >= 0:
      return _move(tip, np.array([tip[0], tip[1], APPROACH_Z]), -1.0)
    if np.linalg.norm(tip[:2] - g[:2]) > AT:
      return _travel(tip, g[:2], max(APPROACH_Z, g[2] + 0.02), -1.0)
    return _move(tip, g, -1.0)
  if task.kind == "lift":
    act = _pick(tip, closed, held, obj_pos, i)
    if act is not None:
      return act
    goal_z = tip[2] - obj_pos[i, 2] + tasks.HALF[i] + tasks.LIFT_HEIGHT + 0.03
    return _move(tip, np.array([tip[0], tip[1], goal_z]), 1.0, terminate=ok)
  if task.kind in ("bin", "plate"):
    zone = scene.BIN if task.kind == "bin" else scene.PLATE
    return _place(tip, closed, held, obj_pos, i, zone, ok)
  if task.kind == "push":
    return _push(tip, closed, held, obj_pos, task.obj, task.other, ok)
  raise ValueError(f"no scripted controller for task kind {task.kind!r}")
