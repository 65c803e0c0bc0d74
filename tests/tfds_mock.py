"""A public TFDS dataset's mock examples (`tfds.testing.mock_data`, nothing downloaded)
written to disk as that dataset, prepared: its own feature spec and file layout under
DATA_DIR/NAME/CONFIG/VERSION, so `tfds.builder(NAME, data_dir=DATA_DIR)` finds it."""

import os

from replay import rlds_io

import tensorflow_datasets as tfds


def write_mock_dataset(name: str, data_dir: str, num_examples: int = 6,
                       num_sub_examples: int = 4, max_value: int | None = None,
                       per_shard: int = 3) -> str:
  from tensorflow_datasets.core import sequential_writer
  with tfds.testing.mock_data(num_examples=num_examples, num_sub_examples=num_sub_examples,
                              max_value=max_value):
    examples = list(rlds_io.examples(tfds.load(name, split="train")))
  builder = tfds.builder(name, data_dir=data_dir)
  os.makedirs(os.fspath(builder.data_dir), exist_ok=True)
  writer = sequential_writer.SequentialWriter(builder.info, per_shard, overwrite=True)
  writer.initialize_splits(["train"])
  writer.add_examples({"train": examples})
  writer.close_all()
  path = os.fspath(builder.data_dir)
  assert os.path.exists(os.path.join(path, "dataset_info.json")), path
  return path
