"""The house's floors, read from the imports: vocabulary <- components <- program.

- vocabulary: `mtopt/` (specs, episode, tasks, cem, config, batch, envs, ...) imports no
  component package and nothing of the program;
- components (actors, replay, success_detectors, learners) import the vocabulary and
  themselves, never another component or the program;
- program: `mtopt.launch`, `mtopt.cli`, `mtopt.commands`, `mtopt.program`, `mtopt.serving`
  (may import all).
"""

import ast
import os

from tests.conftest import ROOT

COMPONENTS = ("actors", "replay", "success_detectors", "learners")
PROGRAM = ("mtopt.launch", "mtopt.cli", "mtopt.commands", "mtopt.program", "mtopt.serving")


def _modules(package: str):
  for dirpath, _, files in os.walk(os.path.join(ROOT, package)):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(dirpath, name)
        rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        yield rel.removesuffix(".__init__"), path


def _imports(path: str):
  """Every module named by an import statement (also inside functions: lazy imports count)."""
  for node in ast.walk(ast.parse(open(path).read(), path)):
    if isinstance(node, ast.Import):
      yield from (a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      yield node.module
      yield from (f"{node.module}.{a.name}" for a in node.names)  # `from mtopt import launch`


def _within(name: str, prefixes) -> bool:
  return any(name == p or name.startswith(p + ".") for p in prefixes)


def _layer(module: str) -> str:
  if _within(module, PROGRAM):
    return "program"
  top = module.split(".")[0]
  return "component" if top in COMPONENTS else "vocabulary"


def test_import_layers():
  bad = []
  for package in ("mtopt", *COMPONENTS):
    for module, path in _modules(package):
      layer = _layer(module)
      for name in set(_imports(path)):
        if name.split(".")[0] not in ("mtopt", *COMPONENTS):
          continue  # Third-party.
        target = _layer(name)
        if layer == "vocabulary" and target != "vocabulary":
          bad.append(f"{module} (vocabulary) imports {name} ({target})")
        if layer == "component" and (target == "program" or (
            target == "component" and name.split(".")[0] != module.split(".")[0])):
          bad.append(f"{module} (component) imports {name} ({target})")
  assert not bad, "imports against the layers:\n" + "\n".join(sorted(bad))
