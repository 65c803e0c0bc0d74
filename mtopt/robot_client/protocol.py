"""The wire format between robots and `mtopt serve`: msgpack maps with numpy arrays.

Imports numpy and msgpack only (robots run this). An array travels as the map
`{"__nd__": [dtype, shape, bytes]}`; decoding accepts only plain numeric dtypes in
little-endian order and checks that the byte count matches the shape, so a message can
never make the receiver build an object array or run code (nothing here is unpickled).

Messages (every one a msgpack map with a "type"):
  server -> robot on connect: metadata {protocol, robot, env_spec, tasks, policy_version, limits}
  act     {id, observation: {name: array}, task: name or slot, key?: uint32[2]}
          -> action {id, action: float32[A], q, policy_version}
  upload  {id, episode: {episode_id, task, observations: {name: [T+1, ...]}, actions: [T, A],
          terminated, labels?, success?}} -> stored {id, episode_id, duplicate, policy_version}
  any bad request -> error {id, error: "what is wrong", policy_version}
"""

from __future__ import annotations

import math

import msgpack
import numpy as np

PROTOCOL_VERSION = 1
_ND = "__nd__"
# Numeric dtypes only: no object, string or void dtypes ever come off the network.
_DTYPES = tuple(np.dtype(d) for d in (
    "bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
    "<f2", "<f4", "<f8"))
ALLOWED_DTYPES = frozenset(d.str for d in _DTYPES)
_NAMES = {d: d.str for d in _DTYPES}  # dtype -> its string, without dtype.str's cost.


class ProtocolError(ValueError):
  """A message is not valid msgpack or breaks the wire format; the message says how."""


def _default(obj):
  if isinstance(obj, np.ndarray):
    arr = np.ascontiguousarray(obj)
    name = _NAMES.get(arr.dtype)
    if name is None:
      if arr.dtype.byteorder == ">":
        return _default(arr.astype(arr.dtype.newbyteorder("<")))
      raise TypeError(f"cannot send arrays of dtype {arr.dtype}")
    return {_ND: [name, list(arr.shape), arr.tobytes()]}
  if isinstance(obj, np.generic):
    return obj.item()
  raise TypeError(f"cannot encode {type(obj).__name__}")


def _hook(d: dict):
  if _ND not in d:
    return d
  try:
    dtype, shape, data = d[_ND]
    if (not isinstance(dtype, str) or not isinstance(data, bytes)
        or not isinstance(shape, (list, tuple))
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
        or len(shape) > 8):
      raise ValueError
  except (ValueError, TypeError):
    raise ProtocolError("malformed array: expected [dtype, shape, bytes]") from None
  if dtype not in ALLOWED_DTYPES:
    raise ProtocolError(f"array dtype {dtype!r} not allowed (numeric little-endian only)")
  dt = np.dtype(dtype)
  want = math.prod(shape) * dt.itemsize  # Python ints: no overflow for forged shapes.
  if want != len(data):
    raise ProtocolError(f"array of shape {tuple(shape)} and dtype {dt} needs {want} bytes, "
                        f"got {len(data)}")
  return np.frombuffer(data, dt).reshape(shape)


def pack(message: dict) -> bytes:
  """msgpack bytes of a message (a map of msgpack values and numpy arrays)."""
  return msgpack.packb(message, default=_default, use_bin_type=True)


def unpack(data: bytes) -> dict:
  """The message map in `data`; raises ProtocolError for anything else."""
  if not isinstance(data, (bytes, bytearray, memoryview)):
    raise ProtocolError("expected a binary frame holding msgpack, got text")
  try:
    msg = msgpack.unpackb(data, object_hook=_hook, raw=False, strict_map_key=True,
                          use_list=True)
  except ProtocolError:
    raise
  except Exception as e:  # msgpack raises several types for bad input.
    raise ProtocolError(f"not valid msgpack: {type(e).__name__}: {e}") from None
  if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
    raise ProtocolError("expected a msgpack map with a string 'type'")
  return msg
