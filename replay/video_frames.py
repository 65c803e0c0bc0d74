"""MP4 video frames in and out, through PyAV (FFmpeg): LeRobot v3's video features.

The one place that touches a video codec. A LeRobot v3 video file holds the frames of
consecutive episodes of one camera; an episode's frame i is at time
`from_timestamp + timestamp[i]` in its file. `FrameReader` decodes a file forward and
keeps its place, so reading the episodes in file order decodes each frame once, and seeks
back only when asked for an earlier time. `FrameWriter` encodes RGB frames as LeRobot
does (AV1 through SVT-AV1, yuv420p, a key frame every 2 frames so that any frame decodes
from a near one); "h264" (libx264) is the widely decodable alternative. Both are lossy.
"""

from __future__ import annotations

import os

import numpy as np

from mtopt.dataset_errors import DatasetError

# info.json's "video.codec" -> the FFmpeg encoder that writes it and its options.
CODECS = {"av1": ("libsvtav1", {"g": "2", "crf": "30", "preset": "8"}),
          "h264": ("libx264", {"g": "2", "crf": "23", "preset": "fast"})}
os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole configuration otherwise.


class VideoError(DatasetError):
  """A video file cannot be read or written as asked; the message names the file."""


class FrameReader:
  """Frames of one camera at given times, file by file (a file is decoded forward once
  when asked in time order)."""

  def __init__(self, fps: float):
    self.tolerance = 0.25 / float(fps)  # A quarter frame: pts rounding, not a neighbour.
    self._path = self._container = self._frames = None
    self._last = None  # (time, rgb) of the last frame decoded.

  def _open(self, path: str, start: float, where: str):
    import av
    self.close()
    if not os.path.isfile(path):
      raise VideoError(f"{where}: {path}: no such video file")
    try:
      self._container = av.open(path)
      stream = self._container.streams.video[0]
      if start > 0:
        self._container.seek(int(start / stream.time_base), stream=stream, backward=True)
    except (av.FFmpegError, IndexError) as e:
      self.close()
      raise VideoError(f"{where}: {path}: cannot be read as video: {e}") from None
    self._path, self._frames, self._last = path, self._container.decode(stream), None

  def _next(self, where: str):
    import av
    try:
      frame = next(self._frames)
    except StopIteration:
      return None
    except av.FFmpegError as e:
      raise VideoError(f"{where}: {self._path}: cannot be decoded: {e}") from None
    if frame.time is None:
      raise VideoError(f"{where}: {self._path}: a frame without a timestamp")
    return float(frame.time), frame.to_ndarray(format="rgb24")

  def read(self, path: str, times, where: str) -> np.ndarray:
    """uint8 [len(times), H, W, 3]: the frame at each time (seconds, increasing)."""
    times = np.asarray(times, np.float64).ravel()
    if not len(times):
      return np.zeros((0, 0, 0, 3), np.uint8)
    if path != self._path or self._last is None or times[0] < self._last[0] - self.tolerance:
      self._open(path, float(times[0]), where)
    out = []
    for t in times:
      while self._last is None or self._last[0] < t - self.tolerance:
        self._last = self._next(where)
        if self._last is None:
          raise VideoError(f"{where}: {path} ends before {t:.4f} s")
      if abs(self._last[0] - t) > self.tolerance:
        raise VideoError(f"{where}: {path} has no frame at {t:.4f} s (the nearest after it "
                         f"is at {self._last[0]:.4f} s)")
      out.append(self._last[1])
    return np.stack(out)

  def close(self):
    if self._container is not None:
      self._container.close()
    self._path = self._container = self._frames = self._last = None


class FrameWriter:
  """One MP4 file of RGB frames at a fixed rate."""

  def __init__(self, path: str, fps: int, height: int, width: int, codec: str = "av1"):
    import av
    if codec not in CODECS:
      raise VideoError(f"video codec {codec!r}: expected one of {sorted(CODECS)}")
    if height % 2 or width % 2:
      raise VideoError(f"{path}: frames of {height}x{width}: yuv420p video needs even sizes")
    encoder, options = CODECS[codec]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    self.path, self.frames = path, 0
    self._container = av.open(path, "w")
    self._stream = self._container.add_stream(encoder, rate=int(fps))
    self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
    self._stream.options = dict(options)

  def write(self, frames: np.ndarray):
    import av
    for rgb in frames:
      for packet in self._stream.encode(av.VideoFrame.from_ndarray(
          np.ascontiguousarray(rgb), format="rgb24")):
        self._container.mux(packet)
      self.frames += 1

  def close(self):
    for packet in self._stream.encode():  # Flush the encoder's delayed frames.
      self._container.mux(packet)
    self._container.close()
