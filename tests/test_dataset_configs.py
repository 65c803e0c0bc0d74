"""The shipped dataset configs against TFDS's own feature specs (no download), and the
`dataset` section's checks."""

import os

import numpy as np
import pytest

from mtopt.config import ConfigError, load_config
from mtopt.program import dataset_source
from tests.conftest import ROOT

import tensorflow_datasets as tfds

MT_OPT = os.path.join(ROOT, "configs", "mt_opt_rlds.py")
ROBONET = os.path.join(ROOT, "configs", "robonet.py")


def test_mt_opt_config_fits_the_tfds_feature_spec():
  config = load_config(MT_OPT)
  features = tfds.builder(config.dataset.tfds_name).info.features
  mapping, spec, names, values = dataset_source.build_mapping(config, features)
  assert spec.observation["image"].shape == (512, 640, 3)
  assert spec.observation["state"].shape == (7,) and spec.action.shape == (10,)
  assert names[0] == "skill_0" and mapping.task_slots["3"] == 3
  assert mapping.terminal == "steps/is_terminal"
  assert max(config.cem.discrete_dims) < spec.action.shape[0]


def test_robonet_config_fits_the_tfds_feature_spec():
  config = load_config(ROBONET)
  features = tfds.builder(config.dataset.tfds_name).info.features
  mapping, spec, names, values = dataset_source.build_mapping(config, features)
  assert spec.observation["image"].shape == (64, 64, 3) and spec.action.shape == (5,)
  assert names == ("push",) and mapping.trim and not mapping.terminated


@pytest.mark.parametrize("override,needle", [
    ("dataset.mapping.action=['steps/action/nope']", "steps/action/nope"),
    ("dataset.labels.source=oracle", "dataset.labels.source"),
    ("dataset.labels.source=field", "dataset.labels.field"),
    ("dataset.unmapped_tasks=maybe", "dataset.unmapped_tasks"),
])
def test_bad_dataset_values_are_named(override, needle):
  config = load_config(MT_OPT, [override])
  features = tfds.builder(config.dataset.tfds_name).info.features
  with pytest.raises(ConfigError, match=needle):
    dataset_source.build_mapping(config, features)


def test_a_dataset_not_on_disk_is_refused_without_downloading(tmp_path):
  config = load_config(MT_OPT, [f"dataset.data_dir={tmp_path}"])
  with pytest.raises(ConfigError, match="no prepared dataset.*never downloads"):
    dataset_source.from_config(config)
  assert not os.listdir(tmp_path)
  config = load_config(MT_OPT, [f"dataset.dir={tmp_path}"])
  with pytest.raises(ConfigError, match="exactly one of dataset.dir"):
    dataset_source.from_config(config)
