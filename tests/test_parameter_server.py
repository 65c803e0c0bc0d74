import numpy as np

from mtopt.parameter_server import ParameterServer


def test_publish_and_pull_versions():
  ps = ParameterServer()
  assert ps.pull() == (-1, None)
  ps.publish({"w": np.ones(2)}, 3)
  v, p = ps.pull()
  assert v == 3 and np.array_equal(p["w"], np.ones(2))
  assert ps.pull(have_version=3) == (3, None)  # Up to date: nothing transferred.
  assert ps.publish({"w": np.zeros(2)}, 2) == 3  # Stale publish is ignored.
  assert np.array_equal(ps.pull()[1]["w"], np.ones(2))


def test_as_ray_actor(ray_session):
  ray = ray_session
  ps = ray.remote(ParameterServer).remote()
  ray.get(ps.publish.remote({"w": np.arange(3.0)}, 1))
  v, p = ray.get(ps.pull.remote(0))
  assert v == 1 and np.array_equal(p["w"], np.arange(3.0))
