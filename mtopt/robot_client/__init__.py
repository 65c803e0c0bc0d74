"""The robot side of fleet deployment: act through `mtopt serve` and upload episodes.

Imports numpy, msgpack and websockets only (no JAX, TensorFlow or Ray), so it runs on a
robot's own computer. See `client.py` for usage and `protocol.py` for the wire format.
"""

from mtopt.robot_client.client import EpisodeUploader, RobotClient, ServerError
from mtopt.robot_client.protocol import ProtocolError

__all__ = ["EpisodeUploader", "ProtocolError", "RobotClient", "ServerError"]
