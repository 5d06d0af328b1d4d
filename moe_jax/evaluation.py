"""Zero-shot evaluation during and after training: report, table and router plot."""
from __future__ import annotations

import os
from typing import Optional

import gin
import jax

from moe_jax import plots


@gin.configurable
class ZeroShotEvaluator:
  """Runs the held-out suite; writes MODEL_DIR/eval/zero_shot.{json,md} (+ expert_probs.png)."""

  def __init__(self, model_dir: str = gin.REQUIRED, suite: str = "t0_eval",
               feature_lengths: dict = gin.REQUIRED, max_examples_per_template: Optional[int] = None,
               batch_size: int = 32, datasets: Optional[list] = None, plot: bool = True):
    self.model_dir, self.suite_name, self.lengths = model_dir, suite, dict(feature_lengths)
    self.max_examples, self.batch_size, self.datasets, self.plot = (
        max_examples_per_template, batch_size, datasets, plot)

  def suite(self):
    import tasks
    suite = tasks.eval_suite(self.suite_name)
    return [d for d in suite if not self.datasets or d.key in self.datasets]

  def __call__(self, model, params, step: Optional[int] = None) -> dict:
    from moe_jax.data import rank_eval
    from moe_jax import routing_embeddings
    score = model.score_batch
    suite = self.suite()
    table = routing_embeddings.for_run(model, params, self.model_dir) if routing_embeddings.needed(
        model.adapters) else None
    with_context = (lambda b: routing_embeddings.attach(b, table)) if table is not None else (lambda b: b)
    report = rank_eval.evaluate(lambda b: score(params, with_context(b)), suite, self.lengths,
                                batch_size=self.batch_size,
                                max_examples_per_template=self.max_examples,
                                decoder_only=model.config.family == "decoder")
    report["step"] = step
    out_dir = os.path.join(self.model_dir, "eval")
    rank_eval.write_report(report, out_dir)
    print(f"\nzero-shot evaluation at step {step}:\n" + rank_eval.markdown(report), flush=True)
    if self.plot:
      self._plot(model, params, suite, out_dir, step, with_context)
    return report

  def _plot(self, model, params, suite, out_dir, step, with_context):
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
    if any(per_task.values()):
      path = plots.expert_heatmaps(per_task, os.path.join(out_dir, "expert_probs.png"),
                                   f"mean expert probability per task and layer (step {step})")
      print(f"wrote {path}")


@gin.configurable
def evaluate(checkpoint_path: str = gin.REQUIRED, evaluator=gin.REQUIRED) -> dict:
  """Loads a checkpoint (moe-jax run or HF directory) into the configured model and evaluates it."""
  from moe_jax import gin_utils, trainer
  import tasks  # noqa: F401  registers the seqio tasks
  model = gin_utils.model()
  params = model.init(jax.random.key(0))
  params, fresh, _ = trainer._load_initial(model, params, checkpoint_path)
  if fresh:
    print(f"note: {len(fresh)} parameters are not in {checkpoint_path} and keep their initialisation")
  return evaluator(model, params, step=None)
