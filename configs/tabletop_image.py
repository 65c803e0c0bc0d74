"""Tabletop from 64x64 camera images (plus proprioception), sized to finish on a laptop CPU.

    mtopt train --config configs/tabletop_image.py

The default experiment's tasks and learner (configs/tabletop_state.py), with image
observations everywhere: the success detector learns from simulated image examples, labels
every episode and every sampled state from pixels, and the Q-function reads the image
through a small conv torso. Image updates cost ~10x state ones on CPU (benchmarks.learner),
so the budget is smaller: batch 64, fewer detector examples and steps, and collection
paced to the learner (`train.episodes_per_step`) so that robots and labelling leave it
the cores. Measured on this repository's 2-core machine: see README, "Images end to end".
"""

from configs import tabletop_state


def get_config():
  c = tabletop_state.get_config()
  c.run_dir = "runs/tabletop_image"
  c.env.observation = "image"
  c.train.detector_episodes_per_task = 60
  c.detector.train_steps = 2000
  c.detector.batch_size = 64
  c.learner.batch_size = 64
  c.learner.num_steps = 6000
  c.train.eval_every = 3000
  c.train.episodes_per_step = 0.1  # 600 on-policy episodes over the run.
  c.cem.switch_margin = 1.0  # Off: measured on state observations only.
  return c
