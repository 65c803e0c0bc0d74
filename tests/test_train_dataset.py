"""`mtopt train` on public RLDS specs: mock data of TFDS `mt_opt/rlds` written to disk as
that dataset (its own feature spec and layout; nothing downloaded), streamed from disk."""

import json
import os

import pytest

from mtopt import cli
from mtopt.config import load_config
from mtopt.program import dataset_source
from tests.conftest import ROOT
from tests.tfds_mock import write_mock_dataset

MT_OPT = os.path.join(ROOT, "configs", "mt_opt_rlds.py")


def _detector(spec, path):
  """An (untrained) detector for the dataset's observations: the labels' source."""
  from success_detectors.detector import DetectorConfig, SuccessDetector
  SuccessDetector.create(spec, 16, DetectorConfig(conv_channels=(8, 8), torso=(32,),
                                                  head_hidden=8)).save(str(path))


@pytest.mark.slow
def test_train_mt_opt_rlds_config_on_its_mock_data(tmp_path, ray_session, capsys):
  data = tmp_path / "tfds"
  shard_dir = write_mock_dataset("mt_opt/rlds", str(data), num_examples=6,
                                 num_sub_examples=4, max_value=4)
  args = [f"--config.dataset.data_dir={data}"]
  config = load_config(MT_OPT, [a[len("--config."):] for a in args]
                       + ["dataset.labels.source=field", "dataset.labels.field=steps/is_last"])
  _detector(dataset_source.from_config(config).spec, tmp_path / "detector")
  run = tmp_path / "run"
  train = ["train", "--config", MT_OPT, f"--config.run_dir={run}", *args,
           f"--config.dataset.labels.detector_dir={tmp_path / 'detector'}",
           "--config.learner.num_steps=4", "--config.learner.batch_size=4",
           "--config.replay.min_size=1", "--config.train.eval_every=4",
           "--config.learner.checkpoint_every=0",
           "--config.learner.network.conv_channels=(8,8)"]
  assert cli.main(train) == 0
  results = json.load(open(run / "results.json"))
  assert results["step"] == 4
  assert os.path.exists(run / "dataset_index.npz")  # A resumed run reads it back...
  stamp = json.load(open(run / "dataset_index.json"))
  assert "detector_version" in stamp["labels"]  # ...if the same labeller made it.
  assert os.listdir(run / "checkpoints")
  # The learner as its own node streams the dataset itself (program.placement=actors).
  placed = tmp_path / "placed"
  assert cli.main(train[:3] + [f"--config.run_dir={placed}"] + train[4:]
                  + ["--config.program.placement=actors", "--config.learner.num_cpus=0.25",
                     "--config.labeller.num_cpus=0.25"]) == 0
  assert json.load(open(placed / "results.json"))["step"] == 4
  assert json.load(open(placed / "learner_node.json")) == [0]
  # A shard cut in half: the run is refused, naming the file; asked to, it skips it.
  shard = sorted(p for p in os.listdir(shard_dir) if "tfrecord" in p)[1]
  with open(os.path.join(shard_dir, shard), "r+b") as f:
    f.truncate(os.path.getsize(os.path.join(shard_dir, shard)) // 2 + 7)
  capsys.readouterr()
  assert cli.main(train[:3] + [f"--config.run_dir={tmp_path}/run2"] + train[4:]) == 2
  err = capsys.readouterr().err
  assert shard in err and "truncated record" in err and "episode" in err, err
  assert not os.path.exists(tmp_path / "run2")  # Refused before any work.
  assert cli.main(train[:3] + [f"--config.run_dir={tmp_path}/run3"] + train[4:]
                  + ["--config.train.skip_bad_episodes=true"]) == 0
