"""Behaviour modes in mixed mode: the default `mtopt train` run with
`learner.network.behaviour_modes` 1 and 4, each final policy on 50 fixed start states per
task (evaluation seed 20261203), true success by the simulator.

    python -m experiments.mixed_modes [--seeds 4 5] [--work-dir DIR]

The rule, fixed before the runs (86b22c3): fresh seeds 4 and 5; adopt 4 for mixed and
online runs if its mean over both seeds is >= 1's + 0.05. Offline, on the tuning data, 4
was worse (results/offline_tabletop_dev_modes4.md), so offline configs keep 1.

Results: results/behaviour_modes_mixed_seeds45.{json,md}, measured at 74018db by this
script's code before it was a module (the same runs, evaluation and JSON).
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from experiments import new_task, protocol
from mtopt import cli


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--seeds", type=int, nargs="+", default=[4, 5])
  p.add_argument("--work-dir", default="/tmp/mtopt_mixed_modes")
  args = p.parse_args(argv)
  out = {"meta": protocol.commit(), "runs": {}}
  for seed in args.seeds:
    for modes in (1, 4):
      run = os.path.join(args.work_dir, f"m{modes}_s{seed}")
      if not os.path.exists(os.path.join(run, "results.json")):
        assert cli.main(["train", "--config", new_task.CONFIG, f"--config.run_dir={run}",
                         f"--config.seed={seed}",
                         f"--config.learner.network.behaviour_modes={modes}"]) == 0
      r = new_task.evaluate_run(run, new_task.PER_TASK, new_task.EVAL_SEED)
      out["runs"][f"m{modes}_s{seed}"] = {t: float(np.mean(v["true"])) for t, v in r.items()
                                          if t != "step"}
      print(modes, seed, out["runs"][f"m{modes}_s{seed}"], flush=True)
  for modes in (1, 4):
    means = [np.mean(list(out["runs"][f"m{modes}_s{s}"].values())) for s in args.seeds]
    out[f"mean_m{modes}"] = float(np.mean(means))
    print(f"modes {modes}: seed means {np.round(means, 3).tolist()}, mean {np.mean(means):.3f}")
  print(json.dumps(out))


if __name__ == "__main__":
  main()
