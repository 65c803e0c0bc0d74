"""The dataset error type, kept free of TensorFlow so that the CLI can catch it cheaply."""


class DatasetError(ValueError):
  """A dataset directory is missing, malformed or not what the caller expects; the message
  names the directory or file (and the episode, for a bad shard)."""
