"""`mtopt serve --ray`: the policy server as a Ray Serve application, two replicas."""

import json
import socket
import urllib.request

import numpy as np
import pytest

from mtopt.serving.config import ServerConfig
from tests.serving_run import episode, make_run


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_ray_serve_replicas_act_refuse_bad_tokens_and_store_uploads_once(tmp_path,
                                                                          ray_session):
  from ray import serve
  from mtopt.robot_client import RobotClient, ServerError
  from mtopt.serving import auth, ray_serve
  run = make_run(str(tmp_path / "run"))
  token = auth.add_robot(run, "r1")
  port = _free_port()
  config = ServerConfig(port=port, max_batch=8, warm_up=False, poll_seconds=0.2,
                        replay=False)
  serve.start(http_options={"host": "127.0.0.1", "port": port})
  serve.run(ray_serve.build(run, config, replicas=2), name=ray_serve.APP_NAME,
            route_prefix="/")
  try:
    url = f"ws://127.0.0.1:{port}"
    rng = np.random.default_rng(0)
    with RobotClient(url, "r1", token) as c:
      obs = {"state": rng.normal(size=44).astype(np.float32)}
      action = c.act(obs, "reach_red")
      assert action.shape == (5,) and c.policy_version == 10
      reply = c.upload_episode(7, "reach_red", **episode(rng))
      again = c.upload_episode(7, "reach_red", **episode(rng))
      assert (reply["duplicate"], again["duplicate"]) == (False, True)
    with pytest.raises(ServerError):
      RobotClient(url, "r1", "wrong-token").__enter__()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
      health = json.loads(r.read())
    assert health["status"] == "ok" and health["episodes_stored"] == 1
  finally:
    serve.delete(ray_serve.APP_NAME)
    serve.shutdown()
