"""Experiment configs: `configs/NAME.py` files with `get_config() -> ConfigDict`, plus
command-line overrides such as `--config.learner.batch_size=512`."""

from __future__ import annotations

import ast
import importlib.util
import os
from typing import Iterable

import ml_collections
import yaml

ConfigDict = ml_collections.ConfigDict


class ConfigError(ValueError):
  """A bad config file or override; the message names the key."""


def load_config(path: str, overrides: Iterable[str] = ()) -> ConfigDict:
  """Loads `path`'s get_config(), applies "a.b=value" overrides, and locks the result."""
  if not os.path.isfile(path):
    raise ConfigError(f"config file not found: {path}")
  spec = importlib.util.spec_from_file_location(f"_mtopt_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # A broken config file: say which, keep the cause.
    raise ConfigError(f"{path}: failed to load: {type(e).__name__}: {e}") from e
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{path}: has no get_config()")
  config = module.get_config()
  if not isinstance(config, ConfigDict):
    raise ConfigError(f"{path}: get_config() returned {type(config).__name__}, not a ConfigDict")
  config.unlock()
  for item in overrides:
    apply_override(config, item)
  config.lock()
  return config


def apply_override(config: ConfigDict, item: str) -> None:
  """Sets one dotted key from "key=value"; the value is parsed to the key's current type."""
  if "=" not in item:
    raise ConfigError(f"override {item!r}: expected key=value")
  key, raw = item.split("=", 1)
  key = key.strip()
  if key.startswith("config."):
    key = key[len("config."):]
  *parents, leaf = key.split(".")
  node = config
  for i, p in enumerate(parents):
    if p not in node or not isinstance(node[p], ConfigDict):
      raise ConfigError(f"unknown config key {'.'.join(parents[:i + 1])!r} (in override {key!r})")
    node = node[p]
  if leaf not in node:
    known = ", ".join(sorted(node.keys()))
    raise ConfigError(f"unknown config key {key!r}; known keys here: {known}")
  current = node[leaf]
  if isinstance(current, ConfigDict):
    raise ConfigError(f"config key {key!r} is a section; override one of its keys")
  value = _parse(key, raw, current)
  try:
    node[leaf] = value
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config key {key!r}: cannot set {raw!r}: {e}") from None


def _parse(key: str, raw: str, current):
  def fail(kind: str):
    raise ConfigError(f"config key {key!r} expects {kind}, got {raw!r}")

  if isinstance(current, bool):
    low = raw.strip().lower()
    if low in ("true", "1", "yes"):
      return True
    if low in ("false", "0", "no"):
      return False
    fail("a bool (true/false)")
  if isinstance(current, int):
    try:
      return int(raw)
    except ValueError:
      fail("an int")
  if isinstance(current, float):
    try:
      return float(raw)
    except ValueError:
      fail("a float")
  if isinstance(current, str):
    return raw
  if isinstance(current, (list, tuple)):
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = [s.strip() for s in raw.split(",") if s.strip()]  # a,b,c
    if not isinstance(value, (list, tuple)):
      value = [value]
    return type(current)(value)
  # None or another type: a Python literal if it is one, else the string.
  try:
    return ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    return raw


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
  """Separates `--config.a.b=v` / `--config.a.b v` from the other command-line words."""
  rest, overrides = [], []
  i = 0
  while i < len(argv):
    a = argv[i]
    if a.startswith("--config."):
      if "=" in a:
        overrides.append(a[2:])
      elif i + 1 < len(argv):
        overrides.append(f"{a[2:]}={argv[i + 1]}")
        i += 1
      else:
        raise ConfigError(f"override {a!r} has no value")
    else:
      rest.append(a)
    i += 1
  return rest, overrides


def to_yaml(config: ConfigDict) -> str:
  return yaml.safe_dump(config.to_dict(), sort_keys=True, default_flow_style=False)
