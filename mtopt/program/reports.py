"""What a run reports: results.json, the success plot and the per-task success table."""

from __future__ import annotations

import json
import os

import numpy as np


def write_results(run_dir: str, step: int, rates: dict, evaluations: list[dict]) -> dict:
  """RUN/results.json and RUN/success.png; returns the results. `success` is as the run's
  labeller judged it; `true_success` the simulator's, for the tasks it defines."""
  true = evaluations[-1].get("true", {}) if evaluations else {}
  results = {"step": step, "success": rates,
             "mean_success": float(np.mean(list(rates.values()))) if rates else float("nan"),
             "true_success": true,
             "mean_true_success": float(np.mean(list(true.values()))) if true else None,
             "evaluations": evaluations}
  with open(os.path.join(run_dir, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  plot_success(evaluations, os.path.join(run_dir, "success.png"))
  return results


def plot_success(evaluations: list[dict], path: str) -> None:
  """Success over training steps, one line per task, and the mean in black."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  if not evaluations:
    return
  steps = [e["step"] for e in evaluations]
  tasks = list(evaluations[-1]["success"])
  fig, ax = plt.subplots(figsize=(7, 4))
  for task in tasks:
    ax.plot(steps, [e["success"].get(task, np.nan) for e in evaluations], label=task, lw=1)
  ax.plot(steps, [np.mean(list(e["success"].values())) for e in evaluations], "k", lw=2.5,
          label="mean")
  ax.set(xlabel="learner step", ylabel="success rate", ylim=(-0.02, 1.02),
         title="per-task success over training")
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def success_table(results: dict, title: str = "per-task success"):
  from rich.table import Table
  table = Table(title=f"{title} (step {results['step']})")
  true = results.get("true_success") or {}
  table.add_column("task")
  table.add_column("success (judged)" if true else "success", justify="right")
  if true:
    table.add_column("true (simulator)", justify="right")
  for task, r in results["success"].items():
    table.add_row(task, f"{r:.2f}", *([f"{true[task]:.2f}" if task in true else "-"]
                                      if true else []))
  mean_true = [f"[bold]{np.mean(list(true.values())):.2f}"] if true else []
  table.add_row("[bold]mean", f"[bold]{results['mean_success']:.2f}", *mean_true)
  return table


def goal_table(results: dict):
  """Goal-reaching success by goal kind (`train.mode=goals`)."""
  from rich.table import Table
  table = Table(title=f"goal reaching (step {results['step']})")
  for name in ("goal kind", "reached", "goals"):
    table.add_column(name, justify="left" if name == "goal kind" else "right")
  for kind, r in results["per_kind"].items():
    table.add_row(kind, f"{r['rate']:.2f}", str(r["goals"]))
  table.add_row("[bold]mean", f"[bold]{results['mean']:.2f}", "")
  return table
