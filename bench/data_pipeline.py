"""`make bench-data`: the trainer's input pipeline on one host core, JSON + markdown.

    python -m bench.data_pipeline [--out_dir=bench_results] [--sources=jsonl,hf,p3]
        [--rows=3000] [--resume_steps=10,10000] [--resume_batch=8] [--p3_rows=2000]

For `t0_train` over the data kit (SKIP_UNAVAILABLE: the kit's datasets),
lengths 1024/256, the trainer's own pipeline (`training_input.build`), each
measurement in a fresh process pinned to one core:
- start-up: seconds from building the pipeline (the task registry already
  imported) to its 1st, 100th and 500th row, in batches of one row;
- steady: rows/s and examples/s (a packed row holds several) over `--rows`
  rows after the first 500;
- resume (jsonl, unpacked): seconds from building the pipeline to its first
  batch after restoring the position saved at each of `--resume_steps`
  (batches of `--resume_batch` rows), and the same without a saved position
  (replaying), at the smallest step only when the largest would take long.
Sources: `jsonl` (the kit), `hf` (the kit's files as Arrow-backed
`datasets.Dataset` objects behind the hf source's loader, its random-access
path), `p3` (the kit's t0_train tasks rendered once into the P3 release
layout, `--p3_rows` rows per dataset, cached in OUT_DIR/p3_standin).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

LENGTHS = {"inputs": 1024, "targets": 256}
MIXTURE = "t0_train"
HOST_ROWS = 32


def _setup(source: str, p3_dir: str) -> None:
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ["MOE_JAX_SKIP_UNAVAILABLE"] = "1"
  os.environ["MOE_JAX_DATA_SOURCE"] = f"p3:{p3_dir}" if source == "p3" else source
  if source == "hf":
    import datasets
    from moe_jax.data import sources

    def from_kit(spec, split):  # what load_dataset returns, read from the kit's JSONL
      path = spec.file(dict((h, s) for s, h in spec.splits).get(split, "train"))
      return datasets.Dataset.from_json(path)
    kit_missing = sources.Source.missing

    def missing(self, spec, seqio_split, task_names=()):  # what the kit has, as for jsonl
      return kit_missing(sources.Source("jsonl") if self.kind == "hf" else self, spec, seqio_split, task_names)
    sources._hf_split = from_kit  # pylint: disable=protected-access
    sources.Source.missing = missing


def _input(pack: bool, host_rows: int):
  import seqio
  import tasks  # noqa: F401
  from moe_jax.data import training_input
  return training_input.build(seqio.get_mixture_or_task(MIXTURE), LENGTHS, first_row=0, host_rows=host_rows,
                              batch_size=host_rows, shuffle_seed=0, pack=pack, family="encoder_decoder")


def _examples(batch) -> int:
  seg = batch.get("encoder_segment_ids")
  if seg is None:
    return len(batch["encoder_input_tokens"])
  return int(sum(len(set(r[r > 0].tolist())) for r in seg))


def one_run(source: str, pack: bool, rows: int, p3_dir: str) -> dict:
  """Start-up and steady rate of a fresh pipeline (batches of 1 row, so each row is timed)."""
  _setup(source, p3_dir)
  import tasks  # noqa: F401  the registry's import is not the pipeline's start-up
  start = time.perf_counter()
  it = _input(pack, 1)
  marks, out, examples = {1: "first_row_s", 100: "row_100_s", 500: "row_500_s"}, {}, 0
  for n in range(1, 501):
    next(it)
    if n in marks:
      out[marks[n]] = round(time.perf_counter() - start, 2)
  t0 = time.perf_counter()
  for _ in range(rows):
    examples += _examples(next(it))
  spent = time.perf_counter() - t0
  out.update(steady_rows_per_s=round(rows / spent, 1), steady_examples_per_s=round(examples / spent, 1))
  return out


def save_positions(steps: list[int], batch: int, out_dir: str) -> dict:
  """Runs one stream to each of `steps`, saving its position there."""
  _setup("jsonl", "")
  it = _input(False, batch)
  start, done, spent = time.perf_counter(), 0, {}
  for step in sorted(steps):
    for _ in range(step - done):
      next(it)
    done = step
    it.save(os.path.join(out_dir, "positions", str(step)), step)
    spent[str(step)] = round(time.perf_counter() - start, 1)
  saved = os.path.join(out_dir, "positions", str(max(steps)), "input_position")
  size = sum(os.path.getsize(os.path.join(saved, f)) for f in os.listdir(saved))
  return {"stream_s_to_step": spent, "position_bytes": size}


def resume_run(step: int, batch: int, out_dir: str, replay: bool) -> dict:
  _setup("jsonl", "")
  import tasks  # noqa: F401
  start = time.perf_counter()
  it = _input(False, batch)
  step_dir = os.path.join(out_dir, "positions", str(step))
  restored = it.resume(os.path.join(out_dir, "empty") if replay else step_dir, step,
                       os.path.join(out_dir, "damaged"))
  next(it)
  return {"first_batch_s": round(time.perf_counter() - start, 2), "restored": restored}


def _child(args: list[str]) -> dict:
  cmd = [sys.executable, "-m", "bench.data_pipeline", "--child", json.dumps(args)]
  pin = ["taskset", "-c", os.environ.get("BENCH_CPU", "0")] if os.path.exists("/usr/bin/taskset") else []
  proc = subprocess.run(pin + cmd, capture_output=True, text=True, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode or not lines:
    raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
  return json.loads(lines[-1])


def build_p3_standin(root: str, rows_per_dataset: int) -> None:
  """t0_train's tasks rendered from the kit into the P3 release layout."""
  if os.path.exists(os.path.join(root, "DONE")):
    return
  os.environ["MOE_JAX_SKIP_UNAVAILABLE"] = "1"  # before the mixtures are registered
  import seqio
  import tensorflow as tf
  import tasks  # noqa: F401
  from moe_jax.data import p3, vocab
  v = vocab.t5_vocabulary()
  feature = lambda ids: tf.train.Feature(int64_list=tf.train.Int64List(value=ids))
  text = lambda s: tf.train.Feature(bytes_list=tf.train.BytesList(value=[s.encode()]))
  for task in seqio.get_mixture_or_task(MIXTURE).tasks:
    spec, template = p3._TEMPLATES[task.name]  # pylint: disable=protected-access
    d = os.path.join(root, task.name)
    os.makedirs(d, exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(d, "train.tfrecord-00000-of-00001")) as w:
      for ex in p3._examples(spec, template, False, "train"):  # pylint: disable=protected-access
        if ex["idx"] >= rows_per_dataset:
          break
        f = {"inputs": feature(v.encode(ex["inputs"])), "targets": feature(v.encode(ex["targets"]) + [1]),
             "inputs_pretokenized": text(ex["inputs"]), "targets_pretokenized": text(ex["targets"])}
        w.write(tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString())
    info = {"features": {k: {"dtype": "int32", "shape": [None]} for k in ("inputs", "targets")} |
            {k: {"dtype": "string", "shape": []} for k in ("inputs_pretokenized", "targets_pretokenized")}}
    with open(os.path.join(d, "info.train.json"), "w") as f:
      json.dump(info, f)
  open(os.path.join(root, "DONE"), "w").close()


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--out_dir", default="bench_results")
  ap.add_argument("--sources", default="jsonl,hf,p3")
  ap.add_argument("--rows", type=int, default=3000)
  ap.add_argument("--resume_steps", default="10,10000")
  ap.add_argument("--resume_batch", type=int, default=8)
  ap.add_argument("--p3_rows", type=int, default=2000)
  ap.add_argument("--child", help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.child:
    kind, *rest = json.loads(args.child)
    fn = {"one": one_run, "save": save_positions, "resume": resume_run, "p3": build_p3_standin}[kind]
    print(json.dumps(fn(*rest) or {}))
    os._exit(0)  # tf.data's Python threads can hang interpreter teardown
  out_dir = os.path.abspath(args.out_dir)
  os.makedirs(out_dir, exist_ok=True)
  p3_dir = os.path.join(out_dir, "p3_standin")
  result = {"mixture": MIXTURE, "lengths": LENGTHS, "one_core": True, "pipelines": [], "resume": {}}
  for source in args.sources.split(","):
    if source == "p3":
      _child(["p3", p3_dir, args.p3_rows])
    for pack in (False, True):
      row = {"source": source, "pack": pack, **_child(["one", source, pack, args.rows, p3_dir])}
      print(json.dumps(row), flush=True)
      result["pipelines"].append(row)
  steps = [int(s) for s in args.resume_steps.split(",")]
  result["resume"]["batch_rows"] = args.resume_batch
  result["resume"].update(_child(["save", steps, args.resume_batch, out_dir]))
  for step in steps:
    result["resume"][f"restored_step_{step}"] = _child(["resume", step, args.resume_batch, out_dir, False])
  result["resume"][f"replayed_step_{min(steps)}"] = _child(["resume", min(steps), args.resume_batch, out_dir, True])
  first = [result["resume"][f"restored_step_{s}"]["first_batch_s"] for s in steps]
  result["resume"]["largest_over_smallest"] = round(max(first) / min(first), 3)
  print(json.dumps(result["resume"]), flush=True)
  with open(os.path.join(out_dir, "bench_data.json"), "w") as f:
    json.dump(result, f, indent=1)
  lines = ["| source | packed | 1st row s | 100th s | 500th s | rows/s | examples/s |", "|---|---|---|---|---|---|---|"]
  for r in result["pipelines"]:
    lines.append(f"| {r['source']} | {r['pack']} | {r['first_row_s']} | {r['row_100_s']} | {r['row_500_s']} | "
                 f"{r['steady_rows_per_s']} | {r['steady_examples_per_s']} |")
  res = result["resume"]
  lines.append("")
  lines.append(f"Resume (jsonl, unpacked, batches of {res['batch_rows']} rows): first batch "
               + ", ".join(f"{res[f'restored_step_{s}']['first_batch_s']} s restored at step {s}" for s in steps)
               + f" (largest/smallest {res['largest_over_smallest']}); replayed at step {min(steps)}: "
               f"{res[f'replayed_step_{min(steps)}']['first_batch_s']} s")
  with open(os.path.join(out_dir, "bench_data.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
