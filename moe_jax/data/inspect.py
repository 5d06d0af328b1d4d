"""python -m moe_jax.data.inspect --mixture=t0_train   (or --task=NAME) [--module=my_tasks ...]

A table of the mixture's (or task's) datasets: templates (tasks), the rate of
each task, and whether the current data source (MOE_JAX_DATA_SOURCE) can
provide it, checked cheaply (files exist; hf: the builder resolves); then, as
the last line, one JSON object: {"datasets", "tasks", "available", "missing"}
(counts of datasets, tasks and available datasets; the missing datasets' names).
`--module` (repeatable) imports a module that registers tasks first, as
MIXTURE_OR_TASK_MODULE does for the gin entry points; a task registered
outside moe-jax's datasets is listed under its own name, its availability
checked by reading its first example.
"""
from __future__ import annotations

import json
import sys

from moe_jax.data import sources, user_tasks
from moe_jax.utils import cli


def _entries(mixture: str | None, task: str | None):
  """(spec, task names, rate per task, split) per dataset."""
  # seqio and TensorFlow load only when this runs
  import seqio
  from moe_jax.data import registry
  from tasks import registration
  registry.ensure(mixture or task)  # T0+ / T0++: registered when named
  if mixture in registration.MIXTURES:
    split = "validation" if mixture.endswith("score_eval") else "train"
    return [(e.spec, e.tasks, e.rate, split) for e in registration.MIXTURES[mixture]]
  name = mixture or task
  found = registry.get_task_or_mixture(name)  # KeyError with close matches
  by_name = {t.name: t for ts in registration.REGISTERED.values() for t in ts}
  by_name.update({t.score_eval: t for ts in registration.REGISTERED.values() for t in ts if t.score_eval})
  tasks_ = found.tasks if isinstance(found, seqio.Mixture) else [found]
  out = {}
  for t in tasks_:
    if t.name not in by_name:  # a task registered by the user's module
      out[t.name] = (_ForeignTask(t), [t.name], found.get_rate(t) if isinstance(found, seqio.Mixture) else 1.0,
                     "train" if "train" in t.splits else t.splits[0])
      continue
    spec = by_name[t.name].spec
    rate = found.get_rate(t) if isinstance(found, seqio.Mixture) else 1.0
    split = "validation" if t.name.endswith("_score_eval") else "train"
    if split not in dict(spec.splits):
      split = spec.splits[0][0]
    out.setdefault(spec.key, (spec, [], rate, split))[1].append(t.name)
  return list(out.values())


class _ForeignTask:
  """A seqio Task moe-jax did not build, shown like a dataset spec."""

  def __init__(self, task):
    self.task, self.key, self.kit = task, task.name, ()

  def missing(self, split, names=()):
    del names
    try:
      next(iter(self.task.get_dataset(split=split, shuffle=False, sequence_length=None)))
    except Exception as e:  # pylint: disable=broad-except  whatever the user's source raises
      return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def main(argv=None) -> int:
  parser = cli.parser(__doc__)
  group = parser.add_mutually_exclusive_group(required=True)
  group.add_argument("--mixture", help="a seqio mixture, e.g. t0_train")
  group.add_argument("--task", help="one seqio task")
  parser.add_argument("--module", action="append", default=[],
                      help="a module registering seqio tasks, imported first (MIXTURE_OR_TASK_MODULE)")
  args = parser.parse_args(argv)
  try:
    user_tasks.register_tasks(modules=args.module)  # registers (no data read)
    summary = report(args.mixture, args.task)
  except KeyError as e:
    print(f"error: {e.args[0]}", file=sys.stderr)
    return 2
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(summary))
  return 0


def report(mixture: str | None, task: str | None = None) -> dict:
  """Prints the table; returns the summary. KeyError for an unknown name."""
  entries = _entries(mixture, task)
  source = sources.current()
  rows, missing, n_tasks = [], [], 0
  for spec, names, rate, split in entries:
    why = spec.missing(split, names)
    if why:
      missing.append(spec.key)
    n_tasks += len(names)
    status = f"no: {why}" if why else "yes"
    if not why and source.kind == "jsonl" and split in dict(spec.kit) and dict(spec.kit)[split] != split:
      status = f"yes (kit: {dict(spec.kit)[split]} stands in)"
    rows.append((spec.key, len(names), f"{rate:,.1f}", split, status))
  print(f"source: {source} ({sources.SOURCE_ENV}); "
        f"{'SKIP_UNAVAILABLE on' if sources.skip_unavailable() else 'SKIP_UNAVAILABLE off'}")
  print("| dataset | templates | rate per task | split | available |")
  print("|---|---:|---:|---|---|")
  for r in rows:
    print("| " + " | ".join(str(x) for x in r) + " |")
  return {"datasets": len(rows), "tasks": n_tasks, "available": len(rows) - len(missing), "missing": missing}


if __name__ == "__main__":
  sys.exit(main())
