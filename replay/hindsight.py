"""Hindsight goal relabelling (Actionable Models): every stored episode as goal-reaching data.

Every transition (s_t, a_t, s_t+1) of every episode, whatever task it was collected for
and however it was labelled, is a row for a goal g:

- in-episode goals (AM's hindsight relabelling of all sub-sequences): g is the goal of a
  later state s_j of the same episode (j in t+1..T; the final state with probability
  `final_goal_prob`). The row's Monte-Carlo return is known: the goal is first reached at
  some s_r, r <= j, so `outcome` = 1 and `steps_after` = r - (t + 1).
- chained goals (AM's goal chaining, with probability `chain_prob`): g is a state of a
  *successor* episode, one that starts where this one ends (a robot whose scene is not
  reset between attempts leaves such pairs; found by matching goals, so any dataset can
  have them); with no successor, a state of a random other episode (AM's rule). The
  target bootstraps through Q(s_t+1, a*, g), and at this episode's end through the
  Q-value of reaching g from its final state, which the successor's own in-episode rows
  teach. So goals that no single episode reached (two cubes moved by two episodes) become
  reachable. Through a successor the return is known as well: this episode's remaining
  steps and then the successor's up to g (the robot's move home between the two counted
  as free), so `outcome` = 1 and `steps_after` counts along that path, and the
  Monte-Carlo bound carries value across the seam at once instead of one bootstrap per
  target refresh (one chain of ~60 steps needed ~6000 updates that way). With
  `chain_return` off (AM as published) such rows bootstrap only; `chain_imitate` still
  marks them as reaching their goal (`outcome` 1, so a behaviour head imitates them: the
  path is known to get there) but with no known length (`steps_after` inf: the bound is
  0). A random episode's goal has no known path (`outcome` 0).

The reward is 1 exactly where the goal is reached at s_t+1 (`GoalSpec.reached`), and the
row is then terminal (discount 0); elsewhere 0, discount 1. A transition that pressed
terminate is left out: it moved nothing, and goal reaching ends when the goal is reached,
so the goal-conditioned action space pins terminate to "not pressed" (`goal_action_spec`).
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from mtopt.batch import Batch
from mtopt.episode import Episode
from mtopt.goals import GOAL_KEY, STATE_KEY, GoalSpec

RANDOM = -2  # A chained goal from a random other episode (no successor): no known path.


class GoalEpisodes:
  """The state observations and actions of episodes, flat, indexed for relabelling.

  Attributes:
    states: float32 [S, D], every episode's T+1 states one after another.
    actions: float32 [R, A], the action of each usable transition (row).
    rows: int [R], the state index of each row's s_t (s_t+1 follows it).
    row_episode: int [R], its episode.
    first, last: int [E], each episode's first and final state index.
    successors: per episode, the episodes that start where it ends.
  """

  def __init__(self, episodes: Iterable[Episode], goals: GoalSpec,
               terminate_dim: int | None = None):
    states, actions, rows, row_episode, first, last = [], [], [], [], [], []
    offset = 0
    for e, ep in enumerate(episodes):
      s = np.asarray(ep.observations[STATE_KEY], np.float32)
      a = np.asarray(ep.actions, np.float32)
      keep = np.ones(len(a), bool) if terminate_dim is None else a[:, terminate_dim] <= 0
      states.append(s)
      actions.append(a[keep])
      rows.append(offset + np.flatnonzero(keep))
      row_episode.append(np.full(int(keep.sum()), e))
      first.append(offset)
      last.append(offset + len(s) - 1)
      offset += len(s)
    if not states:
      raise ValueError("hindsight relabelling needs at least one episode")
    goals.check(states[0].shape[-1])
    self.goals = goals
    self.states = np.concatenate(states)
    self.actions = np.concatenate(actions)
    self.rows = np.concatenate(rows)
    self.row_episode = np.concatenate(row_episode)
    self.first, self.last = np.asarray(first), np.asarray(last)
    if not len(self.rows):
      raise ValueError("hindsight relabelling: no transition without terminate")
    self.goal_states = goals.goal_of(self.states)  # [S, G]: what relabelling compares.
    self.successors = self._successors()
    # The successors flat (CSR), for vectorised draws.
    self.successor_count = np.array([len(s) for s in self.successors])
    self.successor_start = np.concatenate([[0], np.cumsum(self.successor_count)[:-1]])
    self.successor_flat = np.concatenate([*self.successors, np.zeros(0, int)]).astype(int)

  @property
  def num_episodes(self) -> int:
    return len(self.first)

  def _successors(self) -> list[np.ndarray]:
    """Episode f succeeds e if f's first state reaches e's final goal (f != e). Candidates
    come from the starts sorted by their first entry (within tolerance of the final's),
    so the match is not E x E."""
    g = self.goals
    finals, starts = self.goal_states[self.last], self.goal_states[self.first]
    order = np.argsort(starts[:, 0], kind="stable")
    key = starts[order, 0]
    lo = np.searchsorted(key, finals[:, 0] - g.tolerance, side="left")
    hi = np.searchsorted(key, finals[:, 0] + g.tolerance, side="right")
    out = []
    for e in range(self.num_episodes):
      candidates = order[lo[e]:hi[e]]
      match = candidates[g.matches(starts[candidates], finals[e])]
      out.append(np.sort(match[match != e]))
    return out

  def chained_fraction(self) -> float:
    """Share of episodes with at least one successor."""
    return float(np.mean(self.successor_count > 0))


class HindsightSampler:
  """An endless iterator of goal-relabelled `Batch`es (see the module docstring).

  Observations carry `GOAL_KEY` (`GoalSpec.goal_inputs` of the row's goal at s_t and at
  s_t+1), the task column is `goal_slot` (the network's slot for goal reaching). With
  `chain_return` False, rows chained through a successor have no known return either
  (AM's chaining as published: bootstrapped only); `chain_imitate` then keeps them as
  known to reach their goal, of unknown length (imitated, no Monte-Carlo bound).
  """

  def __init__(self, data: GoalEpisodes, batch_size: int, goal_slot: int, *,
               final_goal_prob: float = 0.3, chain_prob: float = 0.0,
               chain_return: bool = True, chain_imitate: bool = False, seed: int = 0):
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for name, p in (("final_goal_prob", final_goal_prob), ("chain_prob", chain_prob)):
      if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {p}")
    self.data, self.batch_size, self.goal_slot = data, int(batch_size), int(goal_slot)
    self.final_goal_prob, self.chain_prob = float(final_goal_prob), float(chain_prob)
    self.chain_return, self.chain_imitate = bool(chain_return), bool(chain_imitate)
    self._rng = np.random.default_rng(seed)
    self._horizon = int((data.last - data.first).max())

  def __iter__(self) -> Iterator[Batch]:
    return self

  def __next__(self) -> Batch:
    return self.sample()

  def sample(self) -> Batch:
    d, rng, n = self.data, self._rng, self.batch_size
    pick = rng.integers(len(d.rows), size=n)
    state_idx, episode = d.rows[pick], d.row_episode[pick]
    goal_idx, via = self._goal_states(state_idx, episode)
    goal = d.goal_states[goal_idx]
    s, s_next = d.states[state_idx], d.states[state_idx + 1]
    reward = d.goals.reached(s_next, goal).astype(np.float32)
    # The known return: along this episode to the goal, or on through the successor.
    chained = via >= 0
    seam = np.where(chained, d.last[episode], goal_idx)
    resume = np.where(chained, d.first[np.maximum(via, 0)], goal_idx)
    steps_after = self._steps_to_reach(state_idx + 1, seam, resume, goal_idx, goal)
    known = (via == -1) | ((via >= 0) & self.chain_return)
    reaches = known | ((via >= 0) & self.chain_imitate)
    return Batch(
        observation={STATE_KEY: s, GOAL_KEY: d.goals.goal_inputs(s, goal)},
        action=d.actions[pick], reward=reward, discount=1.0 - reward,
        next_observation={STATE_KEY: s_next, GOAL_KEY: d.goals.goal_inputs(s_next, goal)},
        task=np.full(n, self.goal_slot, np.int32), outcome=reaches.astype(np.float32),
        steps_after=np.where(known, steps_after, np.where(reaches, np.inf, 0))
        .astype(np.float32))

  def _goal_states(self, state_idx: np.ndarray, episode: np.ndarray):
    """The state index of each row's goal, and the episode it was chained through (-1:
    in-episode; RANDOM: a random other episode's, with no known path)."""
    d, rng, n = self.data, self._rng, len(state_idx)
    via = np.full(n, -1)
    other = episode.copy()
    chain = rng.random(n) < self.chain_prob
    count = d.successor_count[episode]
    through = chain & (count > 0)
    pick = d.successor_start[episode] + (rng.random(n) * count).astype(int)
    other[through] = via[through] = d.successor_flat[pick[through]]
    random = chain & (count == 0) & (d.num_episodes > 1)  # AM's rule: a random other episode.
    drawn = rng.integers(max(d.num_episodes - 1, 1), size=n)
    other[random] = drawn[random] + (drawn[random] >= episode[random])
    via[random] = RANDOM
    # In-episode goals come after s_t; a chained one is any state of the other but its first.
    lo = np.where(other == episode, state_idx + 1, d.first[other] + 1)
    later = rng.integers(lo, d.last[other] + 1)
    goal_idx = np.where(rng.random(n) < self.final_goal_prob, d.last[other], later)
    return goal_idx, via

  def _steps_to_reach(self, start, seam, resume, stop, goal) -> np.ndarray:
    """Per row, transitions after s_t+1 until the goal is first reached along the path
    start..seam, then resume+1..stop (a successor picks up where its predecessor ended;
    for an in-episode goal seam = resume = stop). The state at stop reaches the goal by
    construction."""
    p = np.arange(2 * self._horizon + 1)
    along = start[:, None] + p  # [B, P]
    beyond = np.minimum(resume[:, None] + along - seam[:, None], stop[:, None])
    idx = np.where(along <= seam[:, None], along, beyond)
    hit = self.data.goals.matches(self.data.goal_states[idx], goal[:, None, :])
    hit[:, -1] = True
    return hit.argmax(axis=1)


def with_goal_inputs(batches: Iterable[Batch], goals: GoalSpec) -> Iterator[Batch]:
  """Task-conditioned batches for a network that also takes goals: `GOAL_KEY` is added
  with no goal (zeros, flag 0), so a learner initialised from a goal-conditioned one
  (or trained beside it) sees the same input layout."""
  for b in batches:
    obs = {**b.observation, GOAL_KEY: goals.goal_inputs(b.observation[STATE_KEY], None)}
    nxt = {**b.next_observation,
           GOAL_KEY: goals.goal_inputs(b.next_observation[STATE_KEY], None)}
    yield b._replace(observation=obs, next_observation=nxt)
