"""The robot client runs on a robot's own computer: numpy, msgpack and websockets only."""

import json
import subprocess
import sys

from tests.conftest import ROOT

HEAVY = ("jax", "jaxlib", "tensorflow", "ray", "flax", "reverb", "orbax", "mujoco", "optax")


def test_robot_client_imports_no_jax_tensorflow_or_ray():
  code = ("import sys, json\n"
          "import mtopt.robot_client\n"
          "from mtopt.robot_client import RobotClient, EpisodeUploader, protocol\n"
          "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       check=True, timeout=60)
  loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
  assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
  assert {"numpy", "msgpack", "websockets"} <= loaded
