"""The tabletop scene: one table, a mocap gripper, three objects, a bin and a plate.

Every tabletop task is a predicate on this one scene, so one episode is a success or a
failure for many tasks at once (as on MT-Opt's robots). The scene is kept small for
speed: the gripper is a mocap body whose only collision geom is a small tip sphere, and
a grasped object is carried kinematically (it follows the gripper at the pose it had
when the gripper closed around it; a soft weld lags centimetres behind a fast gripper).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class SceneObject:
  name: str
  rgba: tuple[float, float, float, float]
  half_size: float  # Cubes: half the edge length (m).


@dataclasses.dataclass(frozen=True)
class Zone:
  name: str
  center: tuple[float, float]
  half_extent: float  # Half the side of the bin's inside, or the plate's radius.
  top: float  # Height of the surface an object rests on.


OBJECTS = (
    SceneObject("red", (0.9, 0.1, 0.1, 1.0), 0.02),
    SceneObject("green", (0.1, 0.8, 0.2, 1.0), 0.018),
    SceneObject("blue", (0.15, 0.3, 0.95, 1.0), 0.022),
)
BIN = Zone("bin", (0.2, 0.11), 0.065, 0.004)
PLATE = Zone("plate", (0.2, -0.11), 0.06, 0.008)
ZONES = (BIN, PLATE)

BIN_WALL_HEIGHT = 0.03
TIP_RADIUS = 0.008
# Where the gripper may go (tip position, metres).
WORKSPACE_LOW = np.array([-0.28, -0.22, TIP_RADIUS + 0.002])
WORKSPACE_HIGH = np.array([0.3, 0.22, 0.25])
HOME = np.array([0.0, 0.0, 0.15])
# Objects start here, clear of the bin and the plate.
SPAWN_LOW = np.array([-0.22, -0.17])
SPAWN_HIGH = np.array([0.08, 0.17])
SPAWN_MIN_GAP = 0.09

TIMESTEP = 0.0075
SUBSTEPS = 4  # Physics steps per control step.
MAX_DELTA = 0.04  # Metres per control step at |action| = 1.


def scene_xml() -> str:
  """The MJCF of the scene."""
  objects = []
  for i, o in enumerate(OBJECTS):
    x = -0.2 + 0.1 * i
    rgba = " ".join(str(c) for c in o.rgba)
    objects.append(f"""
    <body name="{o.name}" pos="{x} 0 {o.half_size}">
      <freejoint name="{o.name}"/>
      <geom name="{o.name}" type="box" size="{o.half_size} {o.half_size} {o.half_size}"
            rgba="{rgba}" mass="0.05" contype="1" conaffinity="3"/>
    </body>""")
  bx, by = BIN.center
  h = BIN.half_extent
  wall = 0.004
  wh = BIN_WALL_HEIGHT / 2
  px, py = PLATE.center
  return f"""
<mujoco model="tabletop">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{TIMESTEP}" integrator="implicitfast" cone="pyramidal"
          iterations="50" ls_iterations="20"/>
  <visual>
    <quality offsamples="0" shadowsize="0" numslices="8" numstacks="2" numquads="1"/>
    <global offwidth="64" offheight="64"/>
    <headlight ambient="0.4 0.4 0.4" diffuse="0.5 0.5 0.5" specular="0 0 0"/>
  </visual>
  <default>
    <geom friction="1 0.005 0.0001" condim="3" contype="1" conaffinity="1" solref="0.015 1"/>
  </default>
  <worldbody>
    <camera name="front" pos="0.01 -0.42 0.42" xyaxes="1 0 0 0 0.74 0.67" fovy="58"/>
    <!-- Collide with an infinite plane (nothing tunnels through it), draw a thin box:
         software rendering of a plane costs several times more. -->
    <geom name="table" type="plane" size="0.4 0.3 0.01" group="3"/>
    <geom name="table_top" type="box" size="0.4 0.3 0.001" pos="0 0 -0.001"
          rgba="0.55 0.45 0.35 1" contype="0" conaffinity="0"/>
    <body name="bin" pos="{bx} {by} 0">
      <geom name="bin_floor" type="box" size="{h + wall} {h + wall} 0.002" pos="0 0 0.002"
            rgba="0.25 0.25 0.25 1"/>
      <geom type="box" size="{wall} {h + wall} {wh}" pos="{h + wall} 0 {wh}" rgba="0.25 0.25 0.25 1"/>
      <geom type="box" size="{wall} {h + wall} {wh}" pos="{-h - wall} 0 {wh}" rgba="0.25 0.25 0.25 1"/>
      <geom type="box" size="{h + wall} {wall} {wh}" pos="0 {h + wall} {wh}" rgba="0.25 0.25 0.25 1"/>
      <geom type="box" size="{h + wall} {wall} {wh}" pos="0 {-h - wall} {wh}" rgba="0.25 0.25 0.25 1"/>
    </body>
    <body name="plate" pos="{px} {py} 0">
      <geom name="plate" type="cylinder" size="{PLATE.half_extent} {PLATE.top / 2}"
            pos="0 0 {PLATE.top / 2}" rgba="0.95 0.95 0.9 1"/>
    </body>
    <body name="gripper" mocap="true" pos="{HOME[0]} {HOME[1]} {HOME[2]}">
      <geom name="tip" type="capsule" fromto="0 0 0 0 0 0.025" size="{TIP_RADIUS}"
            rgba="0.15 0.15 0.15 1"
            contype="2" conaffinity="0" priority="1" friction="0.05 0.005 0.0001"/>
      <geom name="palm" type="box" size="0.008 0.045 0.006" pos="0 0 0.03"
            rgba="0.15 0.15 0.15 1" contype="0" conaffinity="0"/>
      <geom name="finger_left" type="box" size="0.005 0.004 0.025" pos="0 0.04 0.0"
            rgba="0.3 0.3 0.3 1" contype="0" conaffinity="0"/>
      <geom name="finger_right" type="box" size="0.005 0.004 0.025" pos="0 -0.04 0.0"
            rgba="0.3 0.3 0.3 1" contype="0" conaffinity="0"/>
    </body>
    {"".join(objects)}
  </worldbody>
</mujoco>
"""
