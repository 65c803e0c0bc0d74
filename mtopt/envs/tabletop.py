"""The tabletop env: a Cartesian-delta gripper in the shared bin-and-plate scene."""

from __future__ import annotations

from typing import Any, Sequence

from mtopt.envs.rendering import choose_gl_backend, make_renderer

choose_gl_backend()

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from mtopt.envs import tabletop_scene as scene  # noqa: E402
from mtopt.envs import tabletop_scripted as scripted  # noqa: E402
from mtopt.envs import tabletop_tasks as tasks  # noqa: E402
from mtopt.envs.base import Env, EnvError, check_action  # noqa: E402
from mtopt.specs import ArraySpec, BoundedArraySpec, EnvSpec  # noqa: E402

OPEN_WIDTH = 0.08  # Finger gap when open (m).
GRASP_XY = 0.015  # The tip must be this close (horizontally) to the object's centre...
GRASP_Z = (-0.004, 0.025)  # ...and this far above its top, when the gripper closes.
IMAGE_SIZE = 64
STATE_DIM = 5 + 10 * len(scene.OBJECTS)
# Relative positions in decimetres: success tolerances are 1.5-2.5 cm, which raw metres
# make hard for an unnormalised network to resolve.
RELATIVE_SCALE = 10.0
# With `fine_features`: the same vectors in centimetres, clipped to +-FINE_CLIP, so that the
# last few centimetres of a grasp or reach span a range a network resolves easily.
FINE_SCALE, FINE_CLIP = 100.0, 5.0
FINE_DIM = 3 * len(scene.OBJECTS)
PROPRIO_DIM = 5


class TabletopEnv(Env):
  """Attributes of the state observation (float32 [STATE_DIM]): tip position (3), gripper
  closed (1: 0 or 1), finger gap (1, m), then per object: position (3), quaternion (4);
  then per object: (object position - tip) * RELATIVE_SCALE (3); with `fine_features`,
  then per object: clip((object position - tip) * FINE_SCALE, +-FINE_CLIP) (3).
  In image mode the observation is {"image": uint8 [64, 64, 3], "state": the first
  PROPRIO_DIM entries (proprioception)}.
  """

  def __init__(self, observation: str = "state", tasks_subset: Sequence[str] = (),
               max_episode_steps: int = 50, terminate_action: bool = True,
               seed: int | None = None, camera: str = "front", fine_features: bool = False,
               respawn_every: int = 1):
    if observation not in ("state", "image"):
      raise EnvError(f"tabletop: observation must be 'state' or 'image', got {observation!r}")
    if max_episode_steps < 1:
      raise EnvError(f"tabletop: max_episode_steps must be >= 1, got {max_episode_steps}")
    if int(respawn_every) < 1:
      raise EnvError(f"tabletop: respawn_every must be >= 1, got {respawn_every}")
    for name in tasks_subset:
      if name not in tasks.TASK_NAMES:
        raise EnvError(f"tabletop: unknown task {name!r}; known: {', '.join(tasks.TASK_NAMES)}")
    self._names = list(tasks_subset) or list(tasks.TASK_NAMES)
    self._columns = np.array([tasks.TASK_NAMES.index(n) for n in self._names])
    self._observation = observation
    self._max_steps = int(max_episode_steps)
    self._terminate_action = bool(terminate_action)
    self._fine = bool(fine_features)
    self._rng = np.random.default_rng(seed)
    # Objects respawn at every this many resets; in between an episode starts where the
    # last one ended (the gripper sent home, open), as a robot's bin is not reset between
    # attempts. Such data holds sequences of tasks done one after another in one scene.
    self._respawn_every = int(respawn_every)
    self._resets = 0

    self.model = mujoco.MjModel.from_xml_string(scene.scene_xml())
    self.data = mujoco.MjData(self.model)
    m = self.model
    self._qadr = np.array([[m.jnt_qposadr[m.joint(o.name).id] + k for k in range(7)]
                           for o in scene.OBJECTS])
    self._vadr = np.array([[m.jnt_dofadr[m.joint(o.name).id] + k for k in range(6)]
                           for o in scene.OBJECTS])
    self._held_offset = np.zeros(3)
    self._held_quat = np.array([1.0, 0.0, 0.0, 0.0])
    self._fingers = (m.geom("finger_left").id, m.geom("finger_right").id)
    self._renderer = None
    self._camera = camera
    if observation == "image":
      self._renderer = make_renderer(m, IMAGE_SIZE, IMAGE_SIZE)

    action_dim = 5 if self._terminate_action else 4
    obs = {"state": ArraySpec((STATE_DIM + FINE_DIM * self._fine,), np.float32, "state")}
    if observation == "image":
      obs = {"image": ArraySpec((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8, "image"),
             "state": ArraySpec((PROPRIO_DIM,), np.float32, "state")}
    self._spec = EnvSpec(obs, BoundedArraySpec((action_dim,), np.float32, "action", -1.0, 1.0),
                         self._max_steps, action_dim - 1 if self._terminate_action else None)
    self._task: str | None = None
    self._taskdef = None
    self._closed = False
    self._held = -1
    self._t = 0
    self._done = True

  shared_scene = True  # Every task happens in the one bin-and-plate scene.

  # Interface.
  def spec(self) -> EnvSpec:
    return self._spec

  def task_names(self) -> list[str]:
    return list(self._names)

  def reset(self, task: str | None, seed: int | None = None,
            keep_scene: bool = False) -> dict[str, np.ndarray]:
    """Starts an episode of `task` (None: no simulator task). The objects respawn (from
    `seed`'s stream where given) unless `keep_scene` or `respawn_every` keeps them where
    the last episode left them; the gripper always starts near home, open."""
    if task is not None and task not in self._names:
      raise EnvError(f"tabletop: unknown task {task!r}; this env has: {', '.join(self._names)}")
    rng = np.random.default_rng(seed) if seed is not None else self._rng
    m, d = self.model, self.data
    keep = self._resets > 0 and (keep_scene or self._resets % self._respawn_every != 0)
    kept = d.qpos[self._qadr].copy()
    self._resets += 1
    mujoco.mj_resetData(m, d)
    if keep:
      d.qpos[self._qadr] = kept
    else:
      for i, (xy, yaw) in enumerate(_spawn(rng)):
        half = scene.OBJECTS[i].half_size
        d.qpos[self._qadr[i]] = [xy[0], xy[1], half, np.cos(yaw / 2), 0.0, 0.0,
                                 np.sin(yaw / 2)]
    d.mocap_pos[0] = scene.HOME + rng.uniform(-0.03, 0.03, 3)
    self._closed, self._held, self._t, self._done = False, -1, 0, False
    self._task = task
    self._taskdef = tasks.task_by_name(task) if task is not None else None  # One shared scene.
    self._set_fingers()
    mujoco.mj_forward(m, d)
    return self._observe()

  def step(self, action) -> tuple[dict[str, np.ndarray], bool, dict[str, Any]]:
    if self._done:
      raise EnvError("tabletop: step() after the episode ended; call reset(task) first")
    a = check_action(action, self._spec)
    terminated = self._terminate_action and bool(a[4] > 0)
    if terminated:  # Terminate means stop: the final state is the one the robot judged.
      a = np.zeros_like(a)
      a[3] = 1.0 if self._closed else -1.0
    m, d = self.model, self.data
    start = d.mocap_pos[0].copy()
    target = np.minimum(np.maximum(start + a[:3] * scene.MAX_DELTA, scene.WORKSPACE_LOW),
                        scene.WORKSPACE_HIGH)
    # Move the mocap in equal parts per substep, so a pushed object follows smoothly.
    increment = (target - start) * (1.0 / scene.SUBSTEPS)
    if self._held >= 0:
      velocity = increment * (1.0 / m.opt.timestep)
      for k in range(1, scene.SUBSTEPS + 1):
        d.mocap_pos[0] = start + k * increment
        self._carry(velocity)
        mujoco.mj_step(m, d)
      self._carry(velocity)
    elif increment.any():
      for k in range(1, scene.SUBSTEPS + 1):
        d.mocap_pos[0] = start + k * increment
        mujoco.mj_step(m, d)
    else:
      mujoco.mj_step(m, d, scene.SUBSTEPS)
    close = bool(a[3] > 0)
    if close and not self._closed:
      self._grasp()
    elif not close and self._closed:
      self._release()
    self._closed = close
    self._t += 1
    if self._observation == "image":
      self._set_fingers()
      mujoco.mj_forward(m, d)
    self._done = terminated or self._t >= self._max_steps
    success = self.success()
    return self._observe(), self._done, {"success": success, "terminated": terminated,
                                         "held": self._held}

  def success(self) -> np.ndarray:
    return self._success_all()[self._columns]

  def judge_states(self, observation: dict) -> np.ndarray:
    """bool [N, env tasks]: ground-truth success of N state observations ([N, STATE_DIM]),
    as `success()` judges the current one. Image observations hold no object positions."""
    if "state" not in observation or self._observation != "state":
      raise EnvError("tabletop: judge_states needs state observations")
    state = np.asarray(observation["state"])
    objects = np.stack([state[:, 5 + 7 * i:8 + 7 * i] for i in range(len(scene.OBJECTS))], 1)
    return tasks.success_batch(state[:, :3], objects)[:, self._columns]

  def expert_action(self) -> np.ndarray:
    if self._taskdef is None:
      raise EnvError("tabletop: no scripted expert: reset() was not called, or the episode's "
                     "task is not a simulator task (reset(None))")
    act = scripted.expert_action(self._taskdef, self.data.mocap_pos[0].copy(), self._closed,
                                 self._held, self._object_pos(), self._success_all())
    return act if self._terminate_action else act[:4]

  def close(self) -> None:
    if self._renderer is not None:
      self._renderer.close()
      self._renderer = None

  # Internals.
  def _object_pos(self) -> np.ndarray:
    return self.data.qpos[self._qadr[:, :3]]

  def _success_all(self) -> np.ndarray:
    return tasks.success_all(self.data.mocap_pos[0], self._object_pos())

  def _gap(self) -> float:
    if not self._closed:
      return OPEN_WIDTH
    return 2 * scene.OBJECTS[self._held].half_size if self._held >= 0 else 0.0

  def _observe(self) -> dict[str, np.ndarray]:
    d = self.data
    proprio = [*d.mocap_pos[0], float(self._closed), self._gap()]
    if self._observation == "state":
      poses = d.qpos[self._qadr]
      offset = poses[:, :3] - d.mocap_pos[0]
      parts = [proprio, poses.ravel(), (offset * RELATIVE_SCALE).ravel()]
      if self._fine:
        parts.append(np.clip(offset * FINE_SCALE, -FINE_CLIP, FINE_CLIP).ravel())
      return {"state": np.concatenate(parts).astype(np.float32)}
    self._renderer.update_scene(d, self._camera)
    return {"image": self._renderer.render(), "state": np.asarray(proprio, np.float32)}

  def _grasp(self) -> None:
    tip = self.data.mocap_pos[0]
    pos = self._object_pos()
    for i, o in enumerate(scene.OBJECTS):
      dz = tip[2] - (pos[i, 2] + o.half_size)
      if np.hypot(*(tip[:2] - pos[i, :2])) < GRASP_XY and GRASP_Z[0] <= dz <= GRASP_Z[1]:
        self._held = i
        self._held_offset = pos[i] - tip
        self._held_quat = self.data.qpos[self._qadr[i, 3:]].copy()
        self.data.qvel[self._vadr[i]] = 0.0
        return

  def _carry(self, velocity: np.ndarray) -> None:
    """Puts the held object at its grasp pose relative to the tip, moving with it."""
    i = self._held
    self.data.qpos[self._qadr[i, :3]] = self.data.mocap_pos[0] + self._held_offset
    self.data.qpos[self._qadr[i, 3:]] = self._held_quat
    self.data.qvel[self._vadr[i, :3]] = velocity
    self.data.qvel[self._vadr[i, 3:]] = 0.0

  def _release(self) -> None:
    self._held = -1

  def _set_fingers(self) -> None:
    if self._renderer is None:
      return
    half_gap = self._gap() / 2 + 0.004
    self.model.geom_pos[self._fingers[0], 1] = half_gap
    self.model.geom_pos[self._fingers[1], 1] = -half_gap


def _spawn(rng: np.random.Generator) -> list[tuple[np.ndarray, float]]:
  """Random object positions in the spawn area, at least SPAWN_MIN_GAP apart, and yaws."""
  placed: list[np.ndarray] = []
  while len(placed) < len(scene.OBJECTS):
    xy = rng.uniform(scene.SPAWN_LOW, scene.SPAWN_HIGH)
    if all(np.linalg.norm(xy - p) >= scene.SPAWN_MIN_GAP for p in placed):
      placed.append(xy)
  return [(xy, float(rng.uniform(-np.pi / 4, np.pi / 4))) for xy in placed]
