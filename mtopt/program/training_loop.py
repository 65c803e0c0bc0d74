"""The driver's training loop over built nodes (`build.Run`): learner chunks up to the next
save point, evaluations every `train.eval_every` steps (they steer the robots' tasks),
save points that keep the learner and progress.json at the same step, and the report."""

from __future__ import annotations

import numpy as np

from mtopt.config import ConfigDict
from mtopt.program import budget as budget_lib
from mtopt.program import new_tasks, reports
from mtopt.program.run_dir import save_progress

RESTART = "restart"  # `run`'s answer when the run's tasks or detector changed under it.


def steps_to_save_point(step: int, periods: list[int], total: int) -> int:
  return min([p - step % p for p in periods if p > 0] + [total - step])


def run(config: ConfigDict, built, registry, run_dir: str, progress: dict, log=print):
  """Trains to `learner.num_steps`; returns the results (`reports.write_results`) or RESTART."""
  from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
  tasks, collector, evaluation, learner = (built.tasks, built.collector, built.evaluation,
                                           built.learner)
  attempts_before = dict(progress.get("attempts", {}))
  review_before = dict(progress.get("review", {}))

  def save_point(checkpoint_replays: bool):
    """Learner and progress at the same step; the replays' logs hold every episode, a
    checkpoint only compacts them (at evaluations: it copies the whole replay)."""
    saved = learner.save()  # The step it saved: a restart may follow at once.
    for r in built.replays if checkpoint_replays else ():
      r.checkpoint()
    progress["step"] = saved
    if collector is not None:
      progress["collected_episodes"] = collector.collected
      progress["attempts"] = {t: attempts_before.get(t, 0) + collector.attempts[registry.slot(t)]
                              for t in tasks}  # Episodes collected per task, over the run.
      if collector.reviewer is not None:  # Labels near the detector's cut, and the queue.
        r = collector.reviewer
        progress["review"] = {"flagged": review_before.get("flagged", 0) + r.flagged,
                              "labelled": review_before.get("labelled", 0) + r.seen,
                              "queued": len(r.queue.pending())}
    save_progress(run_dir, progress)

  total, every = int(built.lcfg.num_steps), int(config.train.eval_every)
  evals = progress["evaluations"]
  last_rates = evals[-1]["success"] if evals else {}
  watch = new_tasks.Watch(run_dir)
  if learner.steps and learner.steps < total:
    # A save point writes the learner's checkpoint first: a kill before progress.json
    # followed leaves it one save point behind (that point's evaluation is then missing).
    behind = (f" (progress.json was saved at step {progress['step']})"
              if learner.steps > progress["step"] else "")
    log(f"resuming from step {learner.steps}{behind}")
  joined = new_tasks.added(tasks, progress)
  if joined:
    last_rates = new_tasks.zero_shot(evaluation, learner, progress, joined, log)
    save_point(checkpoint_replays=False)

  def steer(rates):
    if collector is not None and rates:  # Underperforming and new tasks get more attempts.
      collector.set_success_estimates(rates)
      collector.focus(new_tasks.focused(progress, rates), float(config.actors.new_task_share))
  steer(last_rates)
  with Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                transient=False) as bar:
    job = bar.add_task("train", total=total, completed=learner.steps, info="")
    periods = [every, int(built.lcfg.checkpoint_every)]
    budget = built.budget
    if budget is not None:  # Checked at every publication: collection follows the policy.
      budget.start(collector.collected, learner.steps)
    while learner.steps < total:
      metrics = budget_lib.run_learner(
          learner, steps_to_save_point(learner.steps, periods, total), budget,
          check=collector.check if collector is not None else lambda: None,
          steps_per_check=int(built.lcfg.publish_every))
      if collector is not None:
        collector.check()
      built.supervise()
      # A learner node may be restarted from its checkpoint between any two calls (its
      # steps then fall back): the step is read once, and params count only if it held.
      step = learner.steps
      evaluate_now = step % every == 0 or step == total
      if evaluate_now:
        params = learner.get_params()
        if learner.steps != step:
          continue  # Restarted: the learner trains back to this evaluation.
        # A learner restarted before the last evaluation comes to its step again: the new
        # evaluation replaces the old one.
        evals[:] = [e for e in evals if e["step"] < step]
        last_rates = evaluation(params, step, progress)
        steer(last_rates)
      save_point(checkpoint_replays=evaluate_now)
      if watch.changed():
        return RESTART
      episodes = progress["imported_episodes"] + (collector.collected if collector else 0)
      info = (f"loss {float(metrics.get('loss', np.nan)):.3f}  success "
              f"{np.mean(list(last_rates.values()) or [np.nan]):.2f}  episodes {episodes}")
      bar.update(job, completed=learner.steps, info=info)
  if not evals or evals[-1]["step"] != learner.steps:
    last_rates = evaluation(learner.get_params(), learner.steps, progress)
    save_point(checkpoint_replays=True)
  if progress.get("review"):
    r = progress["review"]
    log(f"detector loop: {r['flagged']} of {r['labelled']} collected episodes were labelled "
        f"near the cut; {r['queued']} wait for review (`mtopt tasks review`)")
  return reports.write_results(run_dir, learner.steps, last_rates, progress["evaluations"])
