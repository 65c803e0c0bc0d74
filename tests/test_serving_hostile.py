"""Hostile input to `mtopt serve`: every case gets an error naming the problem (or a
refused / closed connection), leaves the server up, and stores nothing twice or lost."""

import os
import socket
import struct
import time

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from mtopt.robot_client import ServerError, protocol
from mtopt.serving import journal
from tests.serving_run import Served, episode, make_run

OBS = {"state": np.zeros(44, np.float32)}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
  s = Served(make_run(str(tmp_path_factory.mktemp("run"))), warm_up=False, max_batch=4,
             max_message_bytes=1 << 20, max_connections=24, idle_timeout_s=3.0,
             open_timeout_s=1.0)
  yield s
  s.stop()


def _connect(served):
  ws = connect(served.url, additional_headers={"Authorization": f"Bearer {served.tokens['r1']}",
                                               "X-Robot": "r1"}, compression=None)
  assert protocol.unpack(ws.recv(timeout=5))["type"] == "metadata"
  return ws


@pytest.fixture
def raw(served):
  """An authenticated WebSocket with the metadata read, for hand-made frames."""
  ws = _connect(served)
  yield ws
  ws.close()


def still_up(served):
  """The server answers a good robot and /healthz."""
  with served.client("r2") as c:
    assert c.act(OBS, "reach_red").shape == (5,)
  assert served.healthz()["status"] == "ok"


def ask(ws, message) -> dict:
  ws.send(message if isinstance(message, (bytes, str)) else protocol.pack(message))
  return protocol.unpack(ws.recv(timeout=10))


@pytest.mark.parametrize("headers", [{}, {"X-Robot": "r1"},
                                     {"X-Robot": "r1", "Authorization": "Bearer wrong"},
                                     {"X-Robot": "r9", "Authorization": "Bearer wrong"},
                                     {"X-Robot": "r2", "Authorization": "Basic abc"}])
def test_missing_or_wrong_token_is_refused(served, headers):
  with pytest.raises(InvalidStatus) as e:
    connect(served.url, additional_headers=headers, open_timeout=5)
  assert e.value.response.status_code == 401
  assert b"token" in e.value.response.body
  still_up(served)


def test_other_robots_token_is_refused(served):
  from mtopt.robot_client import RobotClient
  with pytest.raises(ServerError, match="401"):
    RobotClient(served.url, "r1", served.tokens["r2"])
  still_up(served)


@pytest.mark.parametrize("data, problem", [
    (b"\xc1\xc1garbage", "not valid msgpack"),
    (b"\x92\x01\x02", "map with a string 'type'"),
    ("a text frame", "binary frame"),
    (protocol.pack({"type": "fly"}), "unknown message type"),
    (protocol.pack({"type": "act", "task": "reach_red",
                    "observation": {"state": {"__nd__": ["|O", [44], b"x" * 352]}}}),
     "not allowed"),
    (protocol.pack({"type": "act", "task": "reach_red",
                    "observation": {"state": {"__nd__": ["<f4", [44], b"x" * 10]}}}),
     "needs 176 bytes"),
    (protocol.pack({"type": "act", "task": "reach_red",
                    "observation": {"state": {"__nd__": ["<f4", [10**6, 10**6], b""]}}}),
     "needs"),
])
def test_malformed_messages_get_an_error_reply_and_the_connection_goes_on(served, raw, data,
                                                                          problem):
  reply = ask(raw, data)
  assert reply["type"] == "error" and problem in reply["error"], reply
  good = ask(raw, {"type": "act", "id": 5, "observation": OBS, "task": 0})
  assert good["type"] == "action" and good["id"] == 5
  still_up(served)


@pytest.mark.parametrize("observation, task, problem", [
    ({"state": np.zeros(43, np.float32)}, 0, "expected shape (44,)"),
    ({"state": np.zeros((1, 44), np.float32)}, 0, "expected shape (44,)"),
    ({"state": np.zeros(44, np.float64)}, 0, "expected dtype float32"),
    ({"state": np.zeros(44, np.int32)}, 0, "expected dtype float32"),
    ({"state": np.full(44, np.nan, np.float32)}, 0, "non-finite"),
    ({"state": np.r_[np.zeros(43), np.inf].astype(np.float32)}, 0, "non-finite"),
    ({}, 0, "missing 'state'"),
    ({"state": np.zeros(44, np.float32), "image": np.zeros(3, np.uint8)}, 0, "unexpected"),
    ({"state": [0.0] * 44}, 0, "expected a numpy array"),
    (OBS, "open_the_pod_bay_doors", "unknown task"),
    (OBS, 9, "not an active task"),
    (OBS, -1, "not an active task"),
    (OBS, 1.5, "expected a task name or slot"),
])
def test_bad_act_requests_name_the_problem(served, raw, observation, task, problem):
  reply = ask(raw, {"type": "act", "id": 1, "observation": observation, "task": task})
  assert reply["type"] == "error" and problem in reply["error"], reply
  assert reply["id"] == 1
  still_up(served)


def test_bad_key_and_bad_observation_map(served, raw):
  for msg, problem in [({"key": np.zeros(3, np.uint32)}, "key"),
                       ({"key": "abc"}, "key"), ({"observation": 7}, "map of arrays")]:
    reply = ask(raw, {"type": "act", "observation": OBS, "task": 0, **msg})
    assert reply["type"] == "error" and problem in reply["error"]
  still_up(served)


@pytest.mark.parametrize("change, problem", [
    ({"actions": np.zeros((8, 4), np.float32)}, "actions"),
    ({"actions": np.full((8, 5), 3.0, np.float32)}, "outside bounds"),
    ({"observations": {"state": np.zeros((8, 44), np.float32)}}, "observations/state"),
    ({"observations": {"state": np.full((9, 44), np.nan, np.float32)}}, "non-finite"),
    ({"labels": np.full(16, 2.0, np.float32)}, "labels"),
    ({"labels": None}, "uploads must carry 'labels'"),
    ({"episode_id": -3}, "episode_id"),
    ({"episode_id": 2**40}, "episode_id"),
    ({"task": "nope"}, "unknown task"),
    ({"extra": 1}, "unexpected fields"),
    ({"actions": np.zeros((60, 5), np.float32),
      "observations": {"state": np.zeros((61, 44), np.float32)}}, "max_episode_steps"),
])
def test_bad_uploads_are_refused_and_nothing_is_stored(served, raw, rng, change, problem):
  before = served.healthz()["episodes_stored"]
  ep = {"episode_id": 900, "task": "reach_red", "terminated": False, **episode(rng)}
  ep.update(change)
  ep = {k: v for k, v in ep.items() if v is not None}
  reply = ask(raw, {"type": "upload", "episode": ep})
  assert reply["type"] == "error" and problem in reply["error"], reply
  assert served.healthz()["episodes_stored"] == before
  still_up(served)


def test_oversized_message_closes_only_that_connection(served):
  big = protocol.pack({"type": "act", "task": 0,
                       "observation": {"state": np.zeros(25 << 20, np.float32)}})  # 100 MB
  assert len(big) > 100e6
  raw = _connect(served)  # After building the message, which may outlast the idle timeout.
  with pytest.raises((ConnectionClosed, OSError)):
    raw.send(big)
    raw.recv(timeout=10)
  assert raw.close_code == 1009  # "message too big"
  still_up(served)


def test_many_idle_connections(served):
  # Sockets that never finish a handshake are dropped after open_timeout_s...
  sockets = [socket.create_connection(("127.0.0.1", served.server.port)) for _ in range(50)]
  # ...authenticated ones that go quiet after idle_timeout_s; past max_connections a
  # new one is refused with 503.
  clients = []
  try:
    for _ in range(24):
      clients.append(served.client())
    with pytest.raises(ServerError, match="503"):
      served.client()
    deadline = time.time() + 10  # Past the idle timeout the server closes them all.
    while served.healthz()["connections"] and time.time() < deadline:
      time.sleep(0.2)
    assert served.healthz()["connections"] == 0
    still_up(served)
    for s in sockets:
      s.settimeout(5)
      assert s.recv(100) == b""  # Closed by the server.
  finally:
    for s in sockets:
      s.close()
    for c in clients:
      c.close()


def _masked_frame(payload: bytes) -> bytes:
  """A client-to-server binary frame (RFC 6455: clients mask)."""
  mask = os.urandom(4)
  head = b"\x82" + bytes([0x80 | 127]) + struct.pack(">Q", len(payload)) + mask
  body = (np.frombuffer(payload, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8),
                                                      len(payload))).tobytes()
  return head + body


def test_upload_cut_off_midway_then_retried_is_stored_exactly_once(served, rng):
  ep = episode(rng, steps=40)
  message = protocol.pack({"type": "upload", "id": 1, "episode": {
      "episode_id": 77, "task": "lift_red", "terminated": True, **ep}})
  frame = _masked_frame(message)
  before = served.healthz()["episodes_stored"]
  # 1. The connection drops halfway through the upload: nothing is stored.
  ws = connect(served.url, additional_headers={"Authorization": f"Bearer {served.tokens['r1']}",
                                               "X-Robot": "r1"}, compression=None)
  ws.recv(timeout=5)
  ws.socket.sendall(frame[:len(frame) // 2])
  ws.socket.close()
  time.sleep(0.3)
  assert served.healthz()["episodes_stored"] == before
  still_up(served)
  # 2. Sent whole, but the robot vanishes before the acknowledgement.
  ws = connect(served.url, additional_headers={"Authorization": f"Bearer {served.tokens['r1']}",
                                               "X-Robot": "r1"}, compression=None)
  ws.recv(timeout=5)
  ws.socket.sendall(frame)
  ws.socket.close()
  # 3. The robot's retries (same id) until acknowledged: one stored copy whatever happened.
  with served.client() as c:
    for _ in range(3):
      ack = c.upload_episode(77, "lift_red", terminated=True, **ep)
      assert ack["episode_id"] == 77
  assert served.healthz()["episodes_stored"] == before + 1
  copies = [r for r in journal.iter_records(served.run_dir)
            if r["episode_id"] & 0xFFFFFFFF == 77]
  assert len(copies) == 1
  np.testing.assert_array_equal(copies[0]["actions"], ep["actions"])
  still_up(served)
