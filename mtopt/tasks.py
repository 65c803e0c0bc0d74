"""The task registry: names for the Q-network's and detector's fixed `max_tasks` slots.

A new task takes a free slot, so no network changes shape. The registry is saved in the
run directory (`tasks.json`) so that a resumed run sees the same slots; a retired slot is
never handed out again, because stored labels and Q-values still refer to it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Iterable

from mtopt.durable_files import write_json

REGISTRY_FILE = "tasks.json"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")


class TaskError(ValueError):
  """Unknown task, duplicate name, no free slot, or a malformed registry file."""


@dataclasses.dataclass
class Task:
  name: str
  slot: int
  retired: bool = False
  description: str = ""


class TaskRegistry:
  """Maps task names to integer slots in [0, max_tasks)."""

  def __init__(self, max_tasks: int, tasks: Iterable[Task] = ()):
    if not isinstance(max_tasks, int) or max_tasks < 1:
      raise TaskError(f"max_tasks must be a positive int, got {max_tasks!r}")
    self.max_tasks = max_tasks
    self._by_slot: dict[int, Task] = {}
    for t in tasks:
      self._insert(Task(**dataclasses.asdict(t)))

  @classmethod
  def from_names(cls, max_tasks: int, names: Iterable[str]) -> "TaskRegistry":
    reg = cls(max_tasks)
    for n in names:
      reg.add(n)
    return reg

  def _insert(self, task: Task) -> None:
    if not _NAME.match(task.name):
      raise TaskError(f"bad task name {task.name!r}: use letters, digits, '_' or '-'")
    if not 0 <= task.slot < self.max_tasks:
      raise TaskError(f"task {task.name!r}: slot {task.slot} outside [0, {self.max_tasks})")
    if task.slot in self._by_slot:
      raise TaskError(f"slot {task.slot} is already taken by {self._by_slot[task.slot].name!r}")
    if any(t.name == task.name for t in self._by_slot.values()):
      raise TaskError(f"task {task.name!r} already exists")
    self._by_slot[task.slot] = task

  # Queries.
  def __len__(self) -> int:
    return len(self.active())

  def __contains__(self, name: str) -> bool:
    return any(t.name == name and not t.retired for t in self._by_slot.values())

  def active(self) -> list[Task]:
    return [t for _, t in sorted(self._by_slot.items()) if not t.retired]

  @property
  def names(self) -> list[str]:
    return [t.name for t in self.active()]

  @property
  def slots(self) -> list[int]:
    return [t.slot for t in self.active()]

  def get(self, name: str) -> Task:
    for t in self._by_slot.values():
      if t.name == name and not t.retired:
        return t
    raise TaskError(f"unknown task {name!r}; known: {', '.join(self.names) or '(none)'}")

  def slot(self, name: str) -> int:
    return self.get(name).slot

  def name(self, slot: int) -> str:
    t = self._by_slot.get(slot)
    if t is None or t.retired:
      raise TaskError(f"no active task in slot {slot}")
    return t.name

  def free_slots(self) -> list[int]:
    return [s for s in range(self.max_tasks) if s not in self._by_slot]

  # Changes.
  def add(self, name: str, description: str = "", slot: int | None = None) -> Task:
    if slot is None:
      free = self.free_slots()
      if not free:
        raise TaskError(f"no free slot for {name!r}: all {self.max_tasks} slots are used")
      slot = free[0]
    task = Task(name, slot, False, description)
    self._insert(task)
    return task

  def rename(self, old: str, new: str) -> Task:
    task = self.get(old)
    if not _NAME.match(new):
      raise TaskError(f"bad task name {new!r}")
    if any(t.name == new for t in self._by_slot.values()):
      raise TaskError(f"task {new!r} already exists")
    task.name = new
    return task

  def retire(self, name: str) -> Task:
    task = self.get(name)
    task.retired = True
    return task

  # Persistence.
  def to_json(self) -> dict:
    return {"max_tasks": self.max_tasks,
            "tasks": [dataclasses.asdict(t) for _, t in sorted(self._by_slot.items())]}

  @classmethod
  def from_json(cls, d: dict) -> "TaskRegistry":
    try:
      return cls(int(d["max_tasks"]), [Task(**t) for t in d["tasks"]])
    except (KeyError, TypeError) as e:
      raise TaskError(f"malformed task registry: {e}") from None

  def save(self, run_dir: str) -> str:
    """Writes run_dir/tasks.json atomically (a crash never leaves half a file)."""
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, REGISTRY_FILE)
    write_json(path, self.to_json(), indent=2)
    return path

  @classmethod
  def load(cls, run_dir: str) -> "TaskRegistry":
    path = os.path.join(run_dir, REGISTRY_FILE)
    try:
      with open(path) as f:
        return cls.from_json(json.load(f))
    except json.JSONDecodeError as e:
      raise TaskError(f"{path}: not valid JSON ({e})") from None

  @classmethod
  def load_or_create(cls, run_dir: str, max_tasks: int, names: Iterable[str]) -> "TaskRegistry":
    """A resumed run keeps its saved slots; a new run registers `names` in order."""
    if os.path.exists(os.path.join(run_dir, REGISTRY_FILE)):
      reg = cls.load(run_dir)
      if reg.max_tasks != max_tasks:
        raise TaskError(f"{run_dir}: saved registry has max_tasks={reg.max_tasks}, "
                        f"config says {max_tasks}")
      return reg
    reg = cls.from_names(max_tasks, names)
    reg.save(run_dir)
    return reg
