"""RoboNet (TFDS `robonet/robonet_64`: 64 x 64 video, 5-d states and actions), offline,
streamed from disk. Every episode is one task (`push`, a placeholder: RoboNet records
random interaction); RoboNet has no reward, so labels come from a success detector.
Prepared on disk first (`tfds build robonet/robonet_64`); mtopt never downloads.

    mtopt train --config configs/robonet.py --config.dataset.labels.detector_dir=DIR
"""

import ml_collections

from configs import mt_opt_rlds


def get_config():
  c = mt_opt_rlds.get_config()
  c.run_dir = "runs/robonet"
  c.dataset.tfds_name = "robonet/robonet_64"
  c.dataset.max_episode_steps = 40
  c.dataset.mapping.observation = ml_collections.ConfigDict({"image": "video",
                                                             "state": "states"})
  c.dataset.mapping.action = ["actions"]
  c.dataset.mapping.task = ""  # One task for every episode: dataset.tasks names it.
  c.dataset.mapping.episode_id = ""
  c.dataset.mapping.terminal = ""
  c.dataset.mapping.terminated = False  # Cut by time, never terminated.
  c.dataset.mapping.trim = True  # Its video, states and actions differ in length.
  c.dataset.tasks = ml_collections.ConfigDict({"0": "push"})
  c.learner.batch_size = 64
  c.cem.discrete_dims = ()
  return c
