"""Zero-shot evaluation during and after training: report, table and router plot."""
from __future__ import annotations

import sys
import time
from typing import Callable, Optional

import gin
import jax

from moe_jax.data import user_tasks
from moe_jax.evaluation import plots
from moe_jax.models.configured import model as configured_model
from moe_jax.training import frozen_source, preemption, routing_embeddings, weights
from moe_jax.utils import fs, validation


class EvalProgress:
  """Console progress of a zero-shot evaluation, as training has: datasets and
  templates done, elapsed time and ETA. A line when a dataset starts and at
  most every `every` seconds within one (a suite has ~100 templates)."""

  def __init__(self, suite, every: float = 10.0, out=None, clock: Callable[[], float] = time.time):
    self.dataset_of = {t: d.key for d in suite if d.present for t in d.score_tasks}
    self.datasets = [d.key for d in suite if d.present]
    self.total = len(self.dataset_of)
    self.every, self.out, self.clock = every, out, clock
    self.start = self.last = clock()
    self.finished, self.current = 0, None

  def __call__(self, template: str) -> None:
    """Called before `template` is scored (so every earlier one is done), on
    every process in the same order: where a training run's stop signal
    (preemption.py) ends the evaluation."""
    stop = preemption.active()
    if stop is not None:
      signame = stop.agreed()
      if signame:
        raise preemption.Stopped(signame)
    key = self.dataset_of.get(template)
    now = self.clock()
    if key != self.current or now - self.last >= self.every:
      elapsed = now - self.start
      eta = f"{elapsed / self.finished * (self.total - self.finished):.0f}s" if self.finished else "-"
      datasets_done = self.datasets.index(key) if key in self.datasets else 0
      self._print(f"eval: {datasets_done}/{len(self.datasets)} datasets, {self.finished}/{self.total} "
                  f"templates done | {elapsed:.0f}s | ETA {eta} | scoring {key}")
      self.last = now
    self.current = key
    self.finished += 1

  def finish(self) -> None:
    self._print(f"eval: {len(self.datasets)}/{len(self.datasets)} datasets, {self.total}/{self.total} "
                f"templates done in {self.clock() - self.start:.0f}s")

  def _print(self, line: str) -> None:
    print(line, file=self.out or sys.stderr, flush=True)


@gin.configurable
class ZeroShotEvaluator:
  """Runs the held-out suite; writes MODEL_DIR/eval/zero_shot.{json,md} (+ expert_probs.png)."""

  def __init__(self, model_dir: str = gin.REQUIRED, suite: str = "t0_eval",
               feature_lengths: dict = gin.REQUIRED, max_examples_per_template: Optional[int] = None,
               batch_size: int = 32, datasets: Optional[list] = None, plot: bool = True):
    s = lambda p: validation.setting("ZeroShotEvaluator", p)  # noqa: E731
    validation.output_dir(s("model_dir"), model_dir)
    validation.feature_lengths(s("feature_lengths"), feature_lengths)
    validation.positive_int(s("max_examples_per_template"), max_examples_per_template, allow_none=True)
    validation.positive_int(s("batch_size"), batch_size)
    from tasks import registration  # pylint: disable=import-outside-toplevel  (registers every task)
    suites = registration.suite_names()  # the user's tasks can add suites (custom_tasks.py)
    if suite not in suites:
      raise ValueError(f"{s('suite')}: unknown eval suite {suite!r}{validation.close_matches(suite, suites)} "
                       f"(known: {', '.join(suites)})")
    if datasets is not None:
      # seqio and TensorFlow load only when this runs
      import tasks
      full = tasks.eval_suite(suite)
      validation.names_in(s("datasets"), datasets, [d.key for d in full], f"{suite} dataset")
      if not any(d.present for d in full if d.key in datasets):
        raise ValueError(f"{s('datasets')}: the data source has none of {list(datasets)} (the report would "
                         f"average nothing); available: {', '.join(d.key for d in full if d.present)}")
    self.model_dir, self.suite_name, self.lengths = model_dir, suite, dict(feature_lengths)
    self.max_examples, self.batch_size, self.datasets, self.plot = (
        max_examples_per_template, batch_size, datasets, plot)

  def suite(self):
    # seqio and TensorFlow load only when this runs
    import tasks
    suite = tasks.eval_suite(self.suite_name)
    return [d for d in suite if not self.datasets or d.key in self.datasets]

  def __call__(self, model, params, step: Optional[int] = None) -> dict:
    # seqio and TensorFlow load only when this runs
    from moe_jax.data import rank_eval
    score = model.score_batch
    suite = self.suite()
    table = routing_embeddings.for_run(model, params, self.model_dir) if routing_embeddings.needed(
        model.adapters) else None
    domains = model.adapters.batch_preparer()  # e.g. MoA: data domain ids -> the model's domain indices
    with_context = ((lambda b: domains(routing_embeddings.attach(b, table))) if table is not None
                    else domains)
    progress = EvalProgress(suite)
    report = rank_eval.evaluate(lambda b: score(params, with_context(b)), suite, self.lengths,
                                batch_size=self.batch_size,
                                max_examples_per_template=self.max_examples,
                                decoder_only=model.config.family == "decoder", progress=progress)
    progress.finish()
    report["step"] = step
    out_dir = fs.join(self.model_dir, "eval")
    lead = jax.process_index() == 0  # every process scores; the first one writes
    if lead:
      rank_eval.write_report(report, out_dir)
      print(f"\nzero-shot evaluation at step {step}:\n" + rank_eval.markdown(report), flush=True)
    if self.plot:
      self._plot(model, params, suite, out_dir, step, with_context)
    return report

  def _plot(self, model, params, suite, out_dir, step, with_context):
    # seqio and TensorFlow load only when this runs
    import seqio
    from moe_jax.data import converters
    per_task = {}
    for d in suite:
      if not d.present or not d.score_tasks:
        continue
      task = seqio.get_mixture_or_task(d.score_tasks[0])
      ds = task.get_dataset(sequence_length=self.lengths, split=d.split, shuffle=False, use_cached=False)
      ds = ds.map(lambda ex: {k: ex[k] for k in ("inputs", "targets", "task_id", "domain_id", "template_id")})
      if model.config.family == "decoder":
        ds = converters.prefix_lm(ds, self.lengths["inputs"] + self.lengths["targets"])
      else:
        ds = converters.encdec(ds, self.lengths)
      batch = with_context(next(converters.batches(ds.take(16), 16)))
      per_task[d.key] = plots.router_probabilities(model, params, batch)
    if any(per_task.values()) and jax.process_index() == 0:
      path = plots.expert_heatmaps(per_task, fs.join(out_dir, "expert_probs.png"),
                                   f"mean expert probability per task and layer (step {step})")
      print(f"wrote {path}")


@gin.configurable
def evaluate(checkpoint_path: str = gin.REQUIRED, evaluator=gin.REQUIRED) -> dict:
  """Loads a checkpoint (moe-jax run or HF directory) into the configured model and evaluates it."""
  user_tasks.register_tasks()
  validation.existing_path(validation.setting("evaluate", "checkpoint_path"), checkpoint_path)
  model = configured_model()
  params = frozen_source.init_params(model, 0)  # the trainer's init program
  params, fresh, step = weights.load_initial(model, params, checkpoint_path)
  print(f"loaded {checkpoint_path}" + (f" at step {step}" if step is not None else ""))
  if fresh:
    print(f"note: {len(fresh)} parameters are not in {checkpoint_path} and keep their initialisation")
  return evaluator(model, params, step=step)
