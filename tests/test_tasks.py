import json

import pytest

from mtopt.tasks import TaskError, TaskRegistry


def test_add_rename_retire_and_slots():
  reg = TaskRegistry.from_names(4, ["lift_red", "lift_blue"])
  assert reg.slot("lift_red") == 0 and reg.slot("lift_blue") == 1
  t = reg.add("push_green")
  assert t.slot == 2
  reg.rename("lift_blue", "lift_cyan")
  assert reg.slot("lift_cyan") == 1 and "lift_blue" not in reg
  reg.retire("lift_red")
  assert reg.names == ["lift_cyan", "push_green"]
  # A retired slot is not handed out again: stored labels still refer to it.
  assert reg.add("new").slot == 3
  with pytest.raises(TaskError, match="no free slot"):
    reg.add("one_too_many")


@pytest.mark.parametrize("bad", ["", "1abc", "has space", "x" * 65])
def test_bad_names(bad):
  with pytest.raises(TaskError, match="bad task name"):
    TaskRegistry(4).add(bad)


def test_duplicates_and_unknown():
  reg = TaskRegistry.from_names(4, ["a"])
  with pytest.raises(TaskError, match="already exists"):
    reg.add("a")
  with pytest.raises(TaskError, match="unknown task 'b'"):
    reg.slot("b")
  with pytest.raises(TaskError, match="slot 3"):
    reg.name(3)
  with pytest.raises(TaskError, match="outside"):
    reg.add("z", slot=9)


def test_persistence_roundtrip(tmp_path):
  reg = TaskRegistry.from_names(8, ["a", "b", "c"])
  reg.retire("b")
  reg.rename("c", "cc")
  reg.save(str(tmp_path))
  back = TaskRegistry.load(str(tmp_path))
  assert back.to_json() == reg.to_json()
  # A resumed run sees the saved slots, not the config's new list.
  resumed = TaskRegistry.load_or_create(str(tmp_path), 8, ["x", "y"])
  assert resumed.names == ["a", "cc"] and resumed.slot("cc") == 2
  with pytest.raises(TaskError, match="max_tasks=8"):
    TaskRegistry.load_or_create(str(tmp_path), 16, ["a"])


def test_corrupt_registry_file(tmp_path):
  (tmp_path / "tasks.json").write_text("{not json")
  with pytest.raises(TaskError, match="not valid JSON"):
    TaskRegistry.load(str(tmp_path))
  (tmp_path / "tasks.json").write_text(json.dumps({"tasks": []}))
  with pytest.raises(TaskError, match="malformed"):
    TaskRegistry.load(str(tmp_path))
