"""Chooses MuJoCo's headless OpenGL backend before `mujoco` is imported.

EGL (libEGL, GPU or Mesa's software rasteriser) is preferred; OSMesa is the fallback.
An explicit MUJOCO_GL in the environment always wins.
"""

from __future__ import annotations

import ctypes.util
import os


def choose_gl_backend() -> str:
  """Sets MUJOCO_GL (and PYOPENGL_PLATFORM) unless already set; returns the backend."""
  if "MUJOCO_GL" not in os.environ:
    if ctypes.util.find_library("EGL"):
      os.environ["MUJOCO_GL"] = "egl"
    elif ctypes.util.find_library("OSMesa"):
      os.environ["MUJOCO_GL"] = "osmesa"
  backend = os.environ.get("MUJOCO_GL", "")
  if backend in ("egl", "osmesa"):
    os.environ.setdefault("PYOPENGL_PLATFORM", backend)
  return backend


def disable_expensive_effects(model, scene) -> None:
  """Turns off multisampling, shadows and reflections: they cost much and teach little."""
  import mujoco
  model.vis.quality.offsamples = 0
  scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
  scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
  scene.flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = 0


def make_renderer(model, height: int, width: int):
  """An offscreen mujoco.Renderer with the expensive effects off.

  Raises RuntimeError naming the fix if MuJoCo was imported (and chose GLFW, which needs
  a display) before this module could pick a headless backend.
  """
  import mujoco
  from mujoco import gl_context
  context = getattr(gl_context, "GLContext", None)
  module = getattr(context, "__module__", "")
  if not os.environ.get("DISPLAY") and module.endswith("glfw"):
    raise RuntimeError(
        "MuJoCo chose GLFW (needs a display): import mtopt.envs before mujoco, or set "
        "MUJOCO_GL=egl (or osmesa) in the environment")
  renderer = mujoco.Renderer(model, height, width)
  disable_expensive_effects(model, renderer.scene)
  return renderer
