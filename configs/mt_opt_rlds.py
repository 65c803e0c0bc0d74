"""MT-Opt's own robot data (TFDS `mt_opt/rlds`), offline, streamed from disk.

    mtopt train --config configs/mt_opt_rlds.py \
        --config.dataset.data_dir=~/tensorflow_datasets \
        --config.dataset.labels.detector_dir=runs/mt_opt_detector/detector

The dataset must be prepared on disk already (`tfds build mt_opt/rlds`, or a copy of its
directory under `dataset.data_dir`); mtopt never downloads. There is no simulator
(`env.name = "none"`): the observation and action specs come from the field mapping,
checked against TFDS's own feature spec, and nothing is evaluated in simulation. The
dataset carries no reward or success field, so labels come from a success detector trained
for its observations (`mtopt tasks train`; MT-Opt trained its own on `mt_opt/sd`).
"""

import ml_collections

from configs import tabletop_state


def get_config():
  c = tabletop_state.get_config()
  c.run_dir = "runs/mt_opt_rlds"
  c.env = ml_collections.ConfigDict()
  c.env.name = "none"  # A dataset only: no simulator.
  c.env.tasks = []

  c.dataset = ml_collections.ConfigDict()
  c.dataset.dir = ""  # A dataset directory (holds dataset_info.json)...
  c.dataset.tfds_name = "mt_opt/rlds"  # ...or a TFDS name prepared under data_dir.
  c.dataset.data_dir = ""  # TFDS data dir; empty: TFDS's default (~/tensorflow_datasets).
  c.dataset.split = "train"
  c.dataset.max_episode_steps = 100  # Longer episodes are bad episodes (named or skipped).
  c.dataset.mapping = ml_collections.ConfigDict()
  c.dataset.mapping.observation = ml_collections.ConfigDict({
      "image": "steps/observation/image",  # 512 x 640 x 3, JPEG in the shards.
      "state": "steps/observation/state_dense",
      "height": "steps/observation/height_to_bottom",
      "gripper_closed": "steps/observation/gripper_closed"})
  c.dataset.mapping.action = ["steps/action/target_pose", "steps/action/close_gripper",
                              "steps/action/open_gripper", "steps/action/terminate"]
  c.dataset.mapping.task = "skill"  # uint8 per episode, looked up in dataset.tasks.
  c.dataset.mapping.episode_id = "episode_id"  # A string: hashed to an int.
  c.dataset.mapping.terminal = "steps/is_terminal"
  c.dataset.mapping.terminated = True  # Used only without a terminal field.
  c.dataset.mapping.trim = False
  # The task table: dataset `skill` values -> mtopt task names (placeholders: name them
  # after MT-Opt's skills for real use). Other values: dataset.unmapped_tasks.
  c.dataset.tasks = ml_collections.ConfigDict({str(i): f"skill_{i}" for i in range(12)})
  c.dataset.unmapped_tasks = "skip"  # error | skip
  c.dataset.action_bounds = [-1.0, 1.0]  # CEM's search box over every action dimension.
  c.dataset.labels = ml_collections.ConfigDict()
  c.dataset.labels.source = "detector"  # field (the dataset's own) | detector
  c.dataset.labels.field = ""  # For source=field, e.g. steps/reward.
  c.dataset.labels.detector_dir = ""  # Required here: no simulator to train one from.
  c.dataset.stream = True  # Batches read from disk through an index and a bounded cache.
  c.dataset.cache_mb = 256.0  # Raw records kept in memory (least recently used out).

  c.train.mode = "offline"
  c.learner.network.behaviour_modes = 1  # Offline: as measured (configs/tabletop_state.py).
  c.train.labels = "learned"
  c.train.tasks = []
  c.eval.episodes_per_task = 0  # Nothing to evaluate in: no simulator.
  c.learner.batch_size = 32  # 512 x 640 images.
  c.learner.updates_per_call = 1
  c.learner.network.behaviour_sizes = (256, 256)
  c.learner.state_label_weight = 0.0  # Labelling every sampled 512x640 frame: unmeasured.
  c.learner.network.terminate_sizes = ()  # As measured (no state labels to train it).
  c.cem.score_terminate = False
  c.cem.switch_margin = 1.0  # Off: tabletop_state's 0.1 not tried here.
  c.cem.discrete_dims = (7, 8, 9)  # close_gripper, open_gripper, terminate.
  return c
