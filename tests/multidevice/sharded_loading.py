"""Run with 8 simulated CPU devices: initial checkpoints (T5X, HF, moe-jax)
load straight into a (4, 2)-sharded, scanned model. Prints JSON: per source,
whether every leaf kept the target's sharding, how many leaves are split
across devices, the largest difference to an unsharded load, and how the
moe-jax checkpoint was read."""
import json
import os
import sys
import tempfile

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import traverse_util  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from moe_jax import checkpoints, frozen_source, partitioning, weights  # noqa: E402
from moe_jax.models import build_model, layer_layout, save_hf_checkpoint, t5x  # noqa: E402
from moe_jax.models.configs import T5Config  # noqa: E402
from moe_jax.peft import MoV  # noqa: E402
from tests.models.t5x import common  # noqa: E402

# The T5X fixture's shapes (t5_1_1 tiny with d_model 8), scanned.
cfg = T5Config(vocab_size=32128, d_model=8, d_kv=3, d_ff=16, num_heads=4, num_encoder_layers=2,
               num_decoder_layers=2, scan_layers=True)
model = build_model(cfg, MoV(num_experts=4))
mesh = partitioning.make_mesh(4, 2)
partitioner = partitioning.Partitioner(mesh, partitioning.rules("fsdp"))
axes = model.param_logical_axes(model._dummy_batch())
with partitioner.context():
  target = frozen_source.init_params(model, 0, partitioner.param_shardings(axes))
flat_target = traverse_util.flatten_dict(target)


def report(loaded, reference):
  flat, ref = traverse_util.flatten_dict(loaded), traverse_util.flatten_dict(reference)
  same = all(flat[k].sharding == flat_target[k].sharding for k in flat_target)
  split = sum(1 for k in flat if not flat[k].sharding.is_fully_replicated)
  diff = max(float(np.max(np.abs(np.asarray(flat[k], np.float32) - np.asarray(ref[k], np.float32))))
             for k in ref)
  return {"same_shardings": same, "split_leaves": split, "max_diff": diff, "compared": len(ref)}


# How many converted T5X parameters the host holds at once while loading.
from moe_jax.models.t5x import loader  # noqa: E402
live, peak = set(), [0]
_get, _release = loader.LazyParam.__getitem__, loader.LazyParam.release


def _tracked_get(self, idx):
  value = _get(self, idx)
  (live.add if self._cached is not None else live.discard)(id(self))
  peak[0] = max(peak[0], len(live))
  return value


def _tracked_release(self):
  _release(self)
  live.discard(id(self))


loader.LazyParam.__getitem__, loader.LazyParam.release = _tracked_get, _tracked_release

out = {"devices": jax.device_count()}
# T5X: lazily read, one parameter at a time, into the shards.
_, eager = t5x.load_t5x_checkpoint(common.TINY_T5, config=cfg)
loaded, fresh, _ = weights.load_initial(model, target, common.TINY_T5)
out["t5x"] = report(loaded, eager)
out["t5x_peak_params_on_host"], out["t5x_params"] = peak[0], len(traverse_util.flatten_dict(
    layer_layout.unstack_layers(eager)))
# HF safetensors written from the same weights (unrolled), into the scanned shards.
tmp = tempfile.mkdtemp()
plain = build_model(T5Config(**{**cfg.__dict__, "scan_layers": False}))
save_hf_checkpoint(plain, layer_layout.unstack_layers(jax.device_get(eager)), os.path.join(tmp, "hf"))
loaded_hf, _, _ = weights.load_initial(model, target, os.path.join(tmp, "hf"))
out["hf"] = report(loaded_hf, eager)
# A moe-jax checkpoint (full, as SAVE_FROZEN=True writes) of the loaded model.
trainable = {k: v for k, v in traverse_util.flatten_dict(loaded).items() if any(p.endswith("_adapter") for p in k)}
frozen = {k: v for k, v in traverse_util.flatten_dict(loaded).items() if k not in trainable}
ckpt = checkpoints.Checkpoints(os.path.join(tmp, "run", "checkpoints"))
ckpt.save(5, {"trainable": traverse_util.unflatten_dict(trainable), "frozen": traverse_util.unflatten_dict(frozen),
              "opt_state": {}, "step": np.int64(5), "batches_seen": np.int64(5)}, force=True)
ckpt.close()
out["moe_jax_read_sharded"] = checkpoints.restore_params_like(os.path.join(tmp, "run", "checkpoints"), target) is not None
loaded_run, _, step = weights.load_initial(model, target, os.path.join(tmp, "run", "checkpoints"))
out["moe_jax"] = report(loaded_run, jax.device_get(loaded))
out["moe_jax_step"] = step
print(json.dumps(out))
