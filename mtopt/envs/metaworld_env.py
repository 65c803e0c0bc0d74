"""Meta-World 3 (MT10 / MT50) behind mtopt's env interface.

Each Meta-World task is its own scene, so this env holds one Meta-World env per task
(built on first use) and reports success only for the task being attempted; the others
are unknown to the simulator and reported False. Meta-World's `info["success"]` is not
latched (a pushed puck can roll off its goal), so success here counts the first success
of the episode. Goals and object positions are randomised at every reset.

Two options shorten the horizon that Q-learning must bootstrap over (Meta-World experts
need 50-150 simulator steps): `end_on_success` ends the episode at its first success (the
final observation is then a success state, and the sparse reward comes at once), and
`action_repeat` applies each action for several simulator steps.

With `relative_features`, the state also holds object-minus-hand, goal-minus-object and
goal-minus-hand vectors in decimetres: Meta-World reports positions in metres, too fine for
a Q-network to see what a 1-3 cm action changes (the tabletop env does the same).
"""

from __future__ import annotations

from typing import Any, Sequence

from mtopt.envs.rendering import choose_gl_backend

choose_gl_backend()

import numpy as np  # noqa: E402

from mtopt.envs.base import Env, EnvError, check_action  # noqa: E402
from mtopt.specs import ArraySpec, BoundedArraySpec, EnvSpec  # noqa: E402

OBS_DIM = 39
RELATIVE_DIM = 9  # 3 difference vectors (see the module docstring).
HAND, OBJECT, GOAL = slice(0, 3), slice(4, 7), slice(36, 39)  # In Meta-World's observation.
MT10 = ("reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3",
        "drawer-close-v3", "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3",
        "window-close-v3")
MAX_PATH_LENGTH = 500  # Meta-World refuses to step past this.


def benchmark_tasks(name: str) -> list[str]:
  """Task names of "MT10" or "MT50" (Meta-World 3 env names, e.g. "reach-v3")."""
  import metaworld
  key = name.upper()
  if key == "MT10":
    return list(MT10)
  if key == "MT50":
    return list(metaworld.env_dict.ALL_V3_ENVIRONMENTS.keys())
  raise EnvError(f"metaworld: unknown benchmark {name!r}; use MT10 or MT50")


class MetaWorldEnv(Env):
  """Observation {"state": float32 [39]} (Meta-World's goal-observable observation; [48]
  with `relative_features`);
  action [dx, dy, dz, gripper] (+ terminate if `terminate_action`) in [-1, 1]."""

  def __init__(self, tasks_subset: Sequence[str] = (), benchmark: str = "MT10",
               observation: str = "state", max_episode_steps: int = 200,
               terminate_action: bool = True, end_on_success: bool = False,
               action_repeat: int = 1, relative_features: bool = False,
               seed: int | None = None):
    import metaworld
    if observation != "state":
      raise EnvError(f"metaworld: only 'state' observations are supported, got {observation!r}")
    if not 1 <= max_episode_steps <= MAX_PATH_LENGTH:
      raise EnvError(f"metaworld: max_episode_steps must be in [1, {MAX_PATH_LENGTH}], "
                     f"got {max_episode_steps}")
    self._classes = metaworld.env_dict.ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE
    names = list(tasks_subset) or benchmark_tasks(benchmark)
    for n in names:
      if f"{n}-goal-observable" not in self._classes:
        raise EnvError(f"metaworld: unknown task {n!r} (Meta-World 3 names end in -v3, "
                       f"e.g. {MT10[0]!r})")
    if not 1 <= action_repeat <= MAX_PATH_LENGTH // max_episode_steps:
      raise EnvError(f"metaworld: action_repeat must be in [1, {MAX_PATH_LENGTH} // "
                     f"max_episode_steps], got {action_repeat}")
    self._names = names
    self._max_steps = int(max_episode_steps)
    self._end_on_success = bool(end_on_success)
    self._repeat = int(action_repeat)
    self._relative = bool(relative_features)
    self._terminate_action = bool(terminate_action)
    self._rng = np.random.default_rng(seed)
    self._envs: dict[str, Any] = {}
    self._experts: dict[str, Any] = {}
    action_dim = 5 if self._terminate_action else 4
    dim = OBS_DIM + (RELATIVE_DIM if self._relative else 0)
    self._spec = EnvSpec({"state": ArraySpec((dim,), np.float32, "state")},
                         BoundedArraySpec((action_dim,), np.float32, "action", -1.0, 1.0),
                         self._max_steps)
    self._task: str | None = None
    self._env = None
    self._obs = None
    self._t = 0
    self._done = True
    self._succeeded = False

  def spec(self) -> EnvSpec:
    return self._spec

  def task_names(self) -> list[str]:
    return list(self._names)

  def _scene(self, task: str):
    if task not in self._envs:
      env = self._classes[f"{task}-goal-observable"]()
      env._freeze_rand_vec = False  # A new goal and object pose at every reset.
      env.seeded_rand_vec = True  # ...drawn from env.np_random, which reset() seeds.
      self._envs[task] = env
    return self._envs[task]

  def reset(self, task: str | None, seed: int | None = None) -> dict[str, np.ndarray]:
    if task is None:
      raise EnvError("metaworld: every task has its own scene; reset needs one of "
                     f"{', '.join(self._names)}")
    if task not in self._names:
      raise EnvError(f"metaworld: unknown task {task!r}; this env has: {', '.join(self._names)}")
    env = self._scene(task)
    env.seed(int(seed) if seed is not None else int(self._rng.integers(2**31 - 1)))
    obs, _ = env.reset()
    self._task, self._env, self._obs = task, env, obs
    self._t, self._done, self._succeeded = 0, False, False
    return self._observation(obs)

  def _observation(self, obs: np.ndarray) -> dict[str, np.ndarray]:
    if self._relative:
      hand, obj, goal = obs[HAND], obs[OBJECT], obs[GOAL]
      obs = np.concatenate([obs, 10 * (obj - hand), 10 * (goal - obj), 10 * (goal - hand)])
    return {"state": obs.astype(np.float32)}

  def step(self, action) -> tuple[dict[str, np.ndarray], bool, dict[str, Any]]:
    if self._done:
      raise EnvError("metaworld: step() after the episode ended; call reset(task) first")
    a = check_action(action, self._spec)
    success_now = False
    for _ in range(self._repeat):
      obs, _, _, _, info = self._env.step(a[:4])
      success_now = success_now or bool(info.get("success", False))
    self._obs = obs
    self._succeeded = self._succeeded or success_now
    self._t += 1
    # Ending on success is a terminal state too (no bootstrap past it; see mtopt.batch).
    terminated = ((self._terminate_action and bool(a[4] > 0))
                  or (self._end_on_success and self._succeeded))
    self._done = terminated or self._t >= self._max_steps
    return (self._observation(obs), self._done,
            {"success": self.success(), "terminated": terminated, "success_now": success_now})

  def success(self) -> np.ndarray:
    out = np.zeros(len(self._names), bool)
    if self._task is not None:
      out[self._names.index(self._task)] = self._succeeded
    return out

  def expert_action(self) -> np.ndarray:
    """Meta-World's scripted policy for the current task; terminates after success."""
    import metaworld.policies
    if self._task is None:
      raise EnvError("metaworld: expert_action() before reset()")
    if self._task not in self._experts:
      self._experts[self._task] = metaworld.policies.ENV_POLICY_MAP[self._task]()
    act = np.clip(self._experts[self._task].get_action(self._obs), -1, 1).astype(np.float32)
    if self._terminate_action:
      act = np.append(act, np.float32(1.0 if self._succeeded else -1.0))
    return act

  def close(self) -> None:
    for env in self._envs.values():
      env.close()
    self._envs.clear()
