"""Environments: the tabletop scene and the Meta-World adapter behind one interface.

    env = mtopt.envs.make(config.env)            # or make("tabletop", observation="image")
    obs = env.reset("lift_red", seed=0)
    obs, done, info = env.step(env.expert_action())
"""

from __future__ import annotations

from typing import Any, Mapping

from mtopt.envs.rendering import choose_gl_backend

choose_gl_backend()  # Before anything imports mujoco.

from mtopt.envs.base import Env, EnvError  # noqa: E402

ENV_NAMES = ("tabletop", "metaworld")
# Config keys of the `env` section that are not constructor arguments.
_NOT_ARGS = ("name",)


def make(env: str | Mapping[str, Any], seed: int | None = None, **overrides) -> Env:
  """Builds an env from a name or a config `env` section, e.g. `make(config.env, seed=3)`.

  Section keys: name (tabletop | metaworld), observation (state | image), tasks (names;
  empty = all), max_episode_steps, terminate_action, and for metaworld benchmark (MT10 |
  MT50). `overrides` replace section keys.
  """
  if isinstance(env, str):
    options: dict[str, Any] = {"name": env}
  elif isinstance(env, Mapping) or hasattr(env, "to_dict"):
    options = dict(env.to_dict() if hasattr(env, "to_dict") else env)
  else:
    raise EnvError(f"make: expected an env name or config section, got {type(env).__name__}")
  options.update(overrides)
  name = options.pop("name", None)
  tasks = list(options.pop("tasks", None) or ())
  kwargs = {k: v for k, v in options.items() if k not in _NOT_ARGS}
  if name == "tabletop":
    from mtopt.envs.tabletop import TabletopEnv
    kwargs.pop("benchmark", None)
    return _construct(TabletopEnv, name, tasks_subset=tasks, seed=seed, **kwargs)
  if name == "metaworld":
    from mtopt.envs.metaworld_env import MetaWorldEnv
    return _construct(MetaWorldEnv, name, tasks_subset=tasks, seed=seed, **kwargs)
  raise EnvError(f"unknown env {name!r}; known: {', '.join(ENV_NAMES)}")


def _construct(cls, name: str, **kwargs) -> Env:
  try:
    return cls(**kwargs)
  except TypeError as e:  # An unknown option in the config section: name it.
    raise EnvError(f"{name}: bad env option: {e}") from None


__all__ = ["Env", "EnvError", "ENV_NAMES", "make"]
