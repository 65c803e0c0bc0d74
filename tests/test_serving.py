"""`mtopt serve` over real loopback sockets: metadata, /healthz, acting, batching, policy
versions, hot reload, pin and rollback, uploads (stored once), and `mtopt export`."""

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from mtopt import cli
from mtopt.robot_client import ServerError
from mtopt.serving import journal
from tests.conftest import ROOT
from tests.serving_run import Served, add_step, episode, make_run

OBS = {"state": np.zeros(44, np.float32)}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
  s = Served(make_run(str(tmp_path_factory.mktemp("run")), steps=(10,)))
  yield s
  s.stop()


def test_metadata_healthz_and_act(served):
  with served.client() as c:
    meta = c.metadata
    assert meta["robot"] == "r1" and meta["policy_version"] == 10
    assert meta["env_spec"]["observation"]["state"]["shape"] == [44]
    assert meta["tasks"]["reach_red"] == 0 and meta["max_tasks"] == 16
    a = c.act(OBS, "reach_red")
    assert a.shape == (5,) and a.dtype == np.float32 and np.all(np.abs(a) <= 1)
    assert c.policy_version == 10 and 0 <= c.last_q <= 1
    assert np.array_equal(c.act(OBS, 0, key=[1, 2]), c.act(OBS, "reach_red", key=[1, 2]))
  h = served.healthz()
  assert h["status"] == "ok" and h["policy_version"] == 10


def test_concurrent_robots_share_one_cem_call_and_keys_decide_actions(served):
  alone = {}
  with served.client() as c:
    for i in range(8):
      alone[i] = c.act(OBS, i % 6, key=[7, i])
  served.server._acts.batch_sizes.clear()
  got, errors = {}, []

  def robot(i):
    try:
      with served.client("r1" if i % 2 else "r2") as c:
        for _ in range(20):
          got[i] = c.act(OBS, i % 6, key=[7, i])
    except Exception as e:  # Reported below.
      errors.append(e)
  threads = [threading.Thread(target=robot, args=(i,)) for i in range(8)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors
  assert max(served.server._acts.batch_sizes) > 1  # Requests were batched...
  for i in range(8):  # ...and a row's action depends on its own key, not its batch.
    np.testing.assert_allclose(got[i], alone[i], atol=1e-5)


def test_hot_reload_pin_and_rollback_without_dropping_requests(served):
  versions, errors, stop = set(), [], threading.Event()

  def keep_acting():
    with served.client("r2") as c:
      while not stop.is_set():
        try:
          c.act(OBS, "lift_red")
          versions.add(c.policy_version)
        except Exception as e:
          errors.append(e)
  t = threading.Thread(target=keep_acting)
  t.start()
  try:
    add_step(served.run_dir, 20, seed=5)  # The learner writes a newer checkpoint.
    _wait(lambda: served.healthz()["policy_version"] == 20)
    assert cli.main(["pin", "--run-dir", served.run_dir, "--step", "10"]) == 0
    _wait(lambda: served.healthz()["policy_version"] == 10)
    with served.client() as c:
      c.act(OBS, 0)
      assert c.policy_version == 10
    assert cli.main(["pin", "--run-dir", served.run_dir, "--latest"]) == 0
    _wait(lambda: served.healthz()["policy_version"] == 20)
  finally:
    stop.set()
    t.join()
  assert not errors and {10, 20} <= versions


def test_upload_is_stored_once_and_retries_are_acknowledged_as_duplicates(served, rng):
  ep = episode(rng)
  with served.client() as c:
    ack = c.upload_episode(41, "lift_red", terminated=True, **ep)
    assert ack["episode_id"] == 41 and not ack["duplicate"]
    again = c.upload_episode(41, "lift_red", terminated=True, **ep)
    assert again["duplicate"]
  with served.client("r2") as c:  # Ids are per robot: r2's 41 is another episode.
    assert not c.upload_episode(41, "reach_red", **ep)["duplicate"]
  records = list(journal.iter_records(served.run_dir))
  mine = [r for r in records if r["episode_id"] & 0xFFFFFFFF == 41]
  assert len(mine) == 2 and len({r["robot_id"] for r in mine}) == 2
  r1 = next(r for r in mine if r["task_id"] == 3)
  np.testing.assert_array_equal(r1["actions"], ep["actions"])
  assert r1["terminated"] is True


def test_restart_keeps_acknowledged_episodes(tmp_path, rng):
  run = make_run(str(tmp_path / "run"))
  s = Served(run, warm_up=False)
  try:
    with s.client() as c:
      c.upload_episode(1, "reach_red", **episode(rng))
  finally:
    s.stop()
  with open(journal.journal_path(run), "ab") as f:  # A crash mid-append leaves a torn tail.
    f.write(b"\x10\x00\x00\x00garbage")
  s = Served(run, warm_up=False)
  try:
    assert s.healthz()["episodes_stored"] == 1
    with s.client() as c:
      assert c.upload_episode(1, "reach_red", **episode(rng))["duplicate"]
      assert not c.upload_episode(2, "reach_red", **episode(rng))["duplicate"]
  finally:
    s.stop()
  assert len(list(journal.iter_records(run))) == 2


def test_exported_policy_acts_like_the_server(served, tmp_path, rng):
  from mtopt.serving.export import ExportedPolicy
  out = str(tmp_path / "export")
  assert cli.main(["pin", "--run-dir", served.run_dir, "--step", "10"]) == 0
  _wait(lambda: served.healthz()["policy_version"] == 10)
  assert cli.main(["export", "--run-dir", served.run_dir, "--out", out, "--step", "10"]) == 0
  policy = ExportedPolicy(out)
  assert policy.policy_version == 10 and policy.tasks["lift_red"] == 3
  with served.client() as c:
    for i in range(5):
      obs = {"state": rng.normal(size=44).astype(np.float32)}
      key = np.array([3, i], np.uint32)
      served_action = c.act(obs, "lift_red", key=key)
      assert c.policy_version == 10
      np.testing.assert_array_equal(policy.act(obs, "lift_red", key), served_action)
  cli.main(["pin", "--run-dir", served.run_dir, "--latest"])


@pytest.mark.slow
def test_exported_artifact_loads_with_jax_alone(served, tmp_path):
  """No flax, TensorFlow, Ray or mtopt learner code is needed to act with the export."""
  out = str(tmp_path / "export")
  assert cli.main(["export", "--run-dir", served.run_dir, "--out", out]) == 0
  code = ("import sys, numpy as np\n"
          "from mtopt.serving.export import ExportedPolicy\n"
          f"p = ExportedPolicy({out!r})\n"
          "a = p.act({'state': np.zeros(44, np.float32)}, 'lift_red', np.uint32([1, 2]))\n"
          "bad = {'flax', 'tensorflow', 'ray', 'learners', 'reverb', 'optax', 'orbax'}\n"
          "print(a.shape, sorted(bad & {m.split('.')[0] for m in sys.modules}))\n")
  out_text = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=120, cwd=ROOT).stdout
  assert out_text.strip().splitlines()[-1] == "(5,) []"


def test_unknown_robot_name_is_rejected_by_cli(tmp_path):
  assert cli.main(["robots", "add", "bad name!", "--run-dir", str(tmp_path)]) == 2


def _wait(cond, timeout=20.0):
  end = time.time() + timeout
  while time.time() < end:
    if cond():
      return
    time.sleep(0.05)
  raise AssertionError("condition not reached in time")


def _self_signed(tmp_path):
  import datetime
  import ipaddress
  from cryptography import x509
  from cryptography.hazmat.primitives import hashes, serialization
  from cryptography.hazmat.primitives.asymmetric import ec
  from cryptography.x509.oid import NameOID
  key = ec.generate_private_key(ec.SECP256R1())
  name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
  now = datetime.datetime.now(datetime.timezone.utc)
  cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
          .public_key(key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.SubjectAlternativeName([x509.IPAddress(
              ipaddress.ip_address("127.0.0.1"))]), critical=False)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(key, hashes.SHA256()))
  cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
  cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
  key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
  return str(cert_path), str(key_path)


@pytest.mark.slow
def test_tls(tmp_path):
  import ssl
  from mtopt.robot_client import RobotClient
  cert, key = _self_signed(tmp_path)
  s = Served(make_run(str(tmp_path / "run")), warm_up=False, max_batch=1, tls_cert=cert,
             tls_key=key)
  try:
    assert s.url.startswith("wss://")
    context = ssl.create_default_context(cafile=cert)
    with RobotClient(s.url, "r1", s.tokens["r1"], ssl_context=context) as c:
      assert c.act(OBS, "reach_red").shape == (5,)
    with pytest.raises(Exception):  # Unverified certificates are refused by default.
      RobotClient(s.url, "r1", s.tokens["r1"], timeout=3)
    with pytest.raises(Exception):  # Plain WebSocket to a TLS port.
      RobotClient(s.url.replace("wss:", "ws:"), "r1", s.tokens["r1"], timeout=3)
  finally:
    s.stop()
