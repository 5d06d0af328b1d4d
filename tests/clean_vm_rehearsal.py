"""A pod run that has nothing but the repository and a bucket, rehearsed on
TensorFlow's in-memory `ram://` filesystem (the tf.io.gfile code path gs://
takes, without a network).

    python tests/clean_vm_rehearsal.py KIT_DIR CACHE_DIR

Run by tests/test_clean_vm.py from a fresh copy of the repository with no
`../shared` beside it, in an empty working directory and HOME. First it
uploads what a user would put in a bucket (a kit subset, the vocabulary, an
HF export of the tiny model, a gin file, two prompts); then, with a Python
audit hook recording every local file opened or created (installed
before anything is imported), it trains 3 steps
of MoV, evaluates zero-shot on super_glue_cb and decodes the prompts, all
from ram:// with MODEL_DIR there. It prints one JSON line: the local paths
the run touched outside the allowed places, and what it produced.

Orbax's checkpoints folder is the one part kept local (under CACHE_DIR):
orbax writes arrays with TensorStore, which reaches gs:// itself and has no
ram:// driver.
"""
from __future__ import annotations

import json
import os
import sys

KIT, CACHE = sys.argv[1], sys.argv[2]
BUCKET = "ram://bucket"
RUN = f"{BUCKET}/runs/mov"
ORBAX = os.path.join(CACHE, "orbax")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# From here on (imports included) every local file opened or created is
# checked: reads from the checkout, Python and system files; the kit only
# while staging the bucket; writes only under the cache.
ALLOWED = [REPO, CACHE, "/proc", "/sys", "/dev", "/etc", "/usr", sys.prefix, sys.base_prefix, sys.exec_prefix,
           *(os.path.realpath(p) for p in sys.path if p and os.path.isdir(p) and "site-packages" in p)]
touched = []
staging = True


def audit(event, args):
  if event not in ("open", "os.mkdir", "os.rename", "os.remove", "os.rmdir"):
    return
  path = args[0]
  if isinstance(path, bytes):
    path = path.decode(errors="replace")
  if not isinstance(path, str):
    return  # a file descriptor
  full = os.path.realpath(os.path.abspath(path))
  mode, flags = (list(args[1:3]) + [None, None])[:2]
  writing = (event != "open" or (isinstance(mode, str) and any(c in mode for c in "wax+"))
             or (isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)))
  allowed = [CACHE, "/dev", "/proc"] if writing else ALLOWED + ([KIT] if staging else [])
  allowed = [os.path.realpath(a) for a in allowed]  # `full` is resolved too (../shared may be a link)
  if not any(full == a or full.startswith(a.rstrip("/") + "/") for a in allowed):
    touched.append(f"{event}{' (write)' if writing else ''} {full}")


sys.addaudithook(audit)

from moe_jax import checkpoints, fs, frozen_source, gin_utils  # noqa: E402
from moe_jax.models import build_model, get_preset, hf  # noqa: E402


def upload(rel: str, url: str) -> None:
  with open(os.path.join(KIT, rel), "rb") as f:
    data = f.read()
  fs.makedirs(fs.dirname(url))
  fs.write_bytes(url, data)


for rel in ("rotten_tomatoes/_/train.jsonl", "super_glue/cb/validation.jsonl"):
  upload(rel, f"{BUCKET}/kit/{rel}")
upload("t5_vocab/spiece.model", f"{BUCKET}/assets/spiece.model")
tiny = build_model(get_preset("t5_1_1_tiny"))
hf.save_hf_checkpoint(tiny, frozen_source.init_params(tiny, 11), f"{BUCKET}/ckpt/t5_tiny")
fs.write_text(f"{BUCKET}/configs/rehearsal.gin", f"""
include 'demo.gin'  # gin_configs/ of the checkout, on the search path
MIXTURE_OR_TASK_NAME = 'rotten_tomatoes_Movie_Expressed_Sentiment'
DATA_DIR = '{BUCKET}/kit'
VOCABULARY = '{BUCKET}/assets/spiece.model'
INITIAL_CHECKPOINT_PATH = '{BUCKET}/ckpt/t5_tiny'
TASK_FEATURE_LENGTHS = {{'inputs': 32, 'targets': 8}}
BATCH_SIZE = 4
TRAIN_STEPS = 3
CHECKPOINT_PERIOD = 3
LOG_PERIOD = 1
EVALUATOR = None
""")
fs.write_text(f"{BUCKET}/inputs/prompts.jsonl",
              '{"inputs": "Review: a gripping, beautiful film. Is this review positive or negative?"}\n'
              '{"inputs": "Review: dull and far too long. Is this review positive or negative?"}\n')

# Orbax's folder: local, under the cache; the rest of the run directory stays on ram://.
checkpoints.directory_of = lambda model_dir: os.path.join(ORBAX, model_dir.split("://", 1)[1], "checkpoints")
_run_dir_of = frozen_source.run_dir_of
frozen_source.run_dir_of = lambda path: RUN if fs.normalize(path).startswith(ORBAX) else _run_dir_of(path)

staging = False
COMMON = ["--gin_search_paths=" + f"{BUCKET}/configs", "--gin_file=rehearsal.gin", f"--gin.MODEL_DIR={RUN}"]
codes = {"train": gin_utils.run(__import__("moe_jax.train", fromlist=["main"]).main, COMMON)}
step_dir = os.path.join(checkpoints.directory_of(RUN), "3")
MODEL = ["--gin_file=models/t5_1_1_tiny.gin", "--gin_file=methods/mov.gin",
         f"--gin.DATA_DIR={BUCKET}/kit", f"--gin.VOCABULARY={BUCKET}/assets/spiece.model"]
codes["eval"] = gin_utils.run(__import__("moe_jax.eval", fromlist=["main"]).main, [
    "--gin_file=runs/eval.gin", *MODEL, f"--gin.CHECKPOINT_PATH={step_dir}", f"--gin.MODEL_DIR={RUN}",
    "--gin.EVAL_DATASETS=['super_glue_cb']", "--gin.EVAL_MAX_EXAMPLES_PER_TEMPLATE=2", "--gin.EVAL_BATCH_SIZE=8",
    "--gin.EVAL_FEATURE_LENGTHS={'inputs': 128, 'targets': 8}"])
codes["infer"] = gin_utils.run(__import__("moe_jax.infer", fromlist=["main"]).main, [
    "--gin_file=runs/infer.gin", *MODEL, f"--gin.CHECKPOINT_PATH={step_dir}", f"--gin.MODEL_DIR={RUN}",
    f"--gin.INFER_INPUTS={BUCKET}/inputs/prompts.jsonl", "--gin.MAX_DECODE_LENGTH=4"])
sys.stdout.flush()


def tree(url):
  out = []
  for root, _, files in fs.gfile().walk(url):
    out += [fs.join(root, f)[len(url) + 1:] for f in files]
  return sorted(out)


print(json.dumps({"codes": codes, "touched": sorted(set(touched)), "run": tree(RUN),
                  "orbax_steps": sorted(os.listdir(checkpoints.directory_of(RUN))),
                  "moe_jax": os.path.dirname(os.path.dirname(sys.modules["moe_jax"].__file__))}))
