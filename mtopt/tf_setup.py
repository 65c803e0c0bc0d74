"""Imports TensorFlow for Reverb and TFDS without letting it take the GPU from JAX."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

try:
  tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # Already initialised by an earlier import; tensorflow-cpu sees no GPU anyway.
  pass

__all__ = ["tf"]
