"""Shared fixtures. Ray starts once per test session (ray.init takes ~8 s here)."""

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def ray_session():
  import ray
  # address="local": never join a cluster someone started with `ray start` on this machine.
  ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
           runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2"}},
           ignore_reinit_error=True)
  yield ray
  ray.shutdown()


@pytest.fixture
def rng():
  return np.random.default_rng(0)
