"""Environments: the tabletop scene and the Meta-World adapter behind one interface."""

from mtopt.envs.rendering import choose_gl_backend

choose_gl_backend()  # Before anything imports mujoco.
