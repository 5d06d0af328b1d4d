"""`make device-check`: what one accelerator says about this code, in one run.

    python -m bench.device_check --out_dir=device_check_results [--size=base|tiny]

Written for the day a machine with one GPU is lent (a few minutes there at
--size=base: T5 v1.1 base, bf16 activations, float32 weights):
1. the device (kind, platform) and jax's version;
2. memory of a MoV-10 train step: the planner's estimate (`python -m
   moe_jax.plan --devices=1`, compiled for a simulated XLA:CPU device, in a
   subprocess beside the rest) against the device's measured peak;
3. the train step of IA3, MoV-10, LoRA-r4, MoLoRA-10 and full fine-tuning
   (bench/train_step.py, round-robin medians): time, and the share of the
   device's peak FLOP/s its FLOPs (counted on the jaxpr, moe_jax/tools/flops.py) take;
4. MoV-10's greedy decoding tokens/s (bench/decode.py);
5. the losses of MoV-10's first steps on the device (the step timed in 3)
   against the same steps (initial state, batch, key) on the CPU;
6. cuDNN against XLA attention (MOE_JAX_ATTENTION_IMPL): the logits of one batch.
Writes OUT_DIR/device_check.json and OUT_DIR/device_check.md, rewritten after
each section (a run cut short leaves what it measured); a section that fails
is recorded and the rest still run; the exit status is 1 when anything needs
a look ("Problems" in the report). On a host without an accelerator
everything runs on the CPU (no memory statistics, a trivial loss comparison,
no cuDNN); `--size=tiny` (1+1 layers of t5_1_1_tiny, batch 2) is the smoke
test tests/test_device_check.py runs.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

import jax
import jax.numpy as jnp

from bench import decode, timing, train_step
from bench.run import write_text

GIB = 2.0 ** 30
DTYPE = "bfloat16"  # activations (weights stay float32): what accelerator runs use
METHODS = {"ia3": "IA3", "mov_10": "MoV-10", "lora_r4": "LoRA-r4", "molora_10": "MoLoRA-10",
           "full": "full fine-tuning"}
MEMORY_METHOD = LOSS_METHOD = DECODE_VARIANT = "mov_10"  # the method of gin_configs/demo.gin
LOSS_STEPS = 3
# bf16 keeps 8 significant bits and two devices sum in different orders: a
# few 1e-3 of a ~10 loss is expected, a wrong kernel is off by far more.
LOSS_RTOL = 2e-2
PLANNER_TIMEOUT_S = 120  # more, once the device work is done (it started with it)
ATTENTION_ENV = "MOE_JAX_ATTENTION_IMPL"

# Dense bf16 tensor-core peaks (FLOP/s) from NVIDIA's datasheets for each part;
# their headline figures assume 2:4 sparsity and are twice these. The first
# pattern that matches device_kind wins, so PCIe/NVL parts precede the SXM name.
GPU_BF16_PEAKS = (
    ("H100 PCIe", r"H100 PCIe", 756e12),  # H100 datasheet, PCIe column (1,513 sparse)
    ("H100 NVL", r"H100 NVL", 835e12),  # H100 datasheet, NVL column (1,671 sparse)
    ("H100 SXM", r"H100", 989e12),  # H100 datasheet, SXM column (1,979 sparse); kind "NVIDIA H100 80GB HBM3"
    ("H200 NVL", r"H200 NVL", 835e12),  # H200 datasheet, NVL column (1,671 sparse)
    ("H200 SXM", r"H200", 989e12),  # H200 datasheet, SXM column (1,979 sparse)
    ("A100", r"A100", 312e12),  # A100 datasheet (624 sparse), SXM and PCIe alike
    ("L40S", r"L40S", 362e12),  # L40S datasheet (733 sparse)
    ("L4", r"\bL4\b", 121e12),  # L4 datasheet (242 sparse)
)


@dataclasses.dataclass(frozen=True)
class Size:
  preset: str
  layers: int  # per stack; 0: the preset's
  batch_size: int
  lengths: tuple[int, int]  # train inputs, targets
  decode: tuple[int, int, int]  # batch, input tokens, new tokens
  rounds: int  # timed rounds after a warm-up


SIZES = {
    # ~20 GiB by the planner at batch 16 (40 at 32): room on any 40 GB+ GPU;
    # a MoV-10 step is ~5 TFLOP, seconds on the host's CPU for the loss check.
    "base": Size("t5_1_1_base", 0, 16, (512, 128), (8, 128, 32), rounds=5),
    # One layer per stack: every compile here is on a CPU (the test's budget).
    "tiny": Size("t5_1_1_tiny", 1, 2, (16, 8), (2, 8, 4), rounds=2),
}


def log(message: str) -> None:
  print(f"device_check: {message}", file=sys.stderr, flush=True)


def _first_line(e: BaseException) -> str:
  return (str(e).strip().splitlines() or [""])[0]


def section(report: dict, name: str, fn, *args):
  """fn(*args), timed into report["phase_s"] (the first GPU run shows where
  its minutes go). An exception becomes {"error": ...} and the check goes
  on: on a lent machine one failing part should not cost the others."""
  log(f"{name} ...")
  t0 = time.perf_counter()
  try:
    return fn(*args)
  except Exception as e:  # pylint: disable=broad-except
    traceback.print_exc()
    return {"error": f"{type(e).__name__}: {_first_line(e)}"}
  finally:
    report["phase_s"][name] = round(time.perf_counter() - t0, 1)


def device_info(device) -> dict:
  info = {"kind": device.device_kind, "platform": device.platform, "count": jax.device_count(),
          "jax": jax.__version__, "attention_impl_env": os.environ.get(ATTENTION_ENV)}
  if device.platform == "cpu" and (shutil.which("nvidia-smi") or os.path.exists("/dev/nvidiactl")):
    # The runtime install brings a CPU jaxlib: a GPU host needs the gpu extra (make device-check installs it).
    info["note"] = (f"an NVIDIA GPU is present but jax sees only the CPU: install jax's CUDA plugin "
                    f"(pip install 'jax[cuda12]=={jax.__version__}', or cuda13 for a CUDA 13 driver) and rerun")
  return info


def peak_flops(device) -> dict:
  """The FLOP/s steps are measured against: the CPU's measured matmul rate,
  a GPU's published dense bf16 peak, or None for a device not in the table."""
  if device.platform == "cpu":
    return {"flops_per_s": timing.matmul_peak_flops(),
            "source": "measured here: a jitted float32 1024x1024 matmul (bench/timing.py)"}
  for name, pattern, peak in GPU_BF16_PEAKS:
    if re.search(pattern, device.device_kind, re.IGNORECASE):
      return {"flops_per_s": peak, "source": f"published dense bf16 peak of the {name} (NVIDIA datasheet)"}
  return {"flops_per_s": None, "source": f"no published peak for {device.device_kind!r} in bench/device_check.py"}


def planner_args(size: Size) -> list[str]:
  """The planner's flags for the step measured here: demo.gin's MoV-10 and
  macros with this size's backbone, batch and lengths, bf16 activations."""
  inputs, targets = size.lengths
  args = ["--gin_file=gin_configs/demo.gin", f"--gin_file=gin_configs/models/{size.preset}.gin",
          f"--gin.BATCH_SIZE={size.batch_size}",
          f"--gin.TASK_FEATURE_LENGTHS={{'inputs': {inputs}, 'targets': {targets}}}",
          f"--gin.ACTIVATION_DTYPE={DTYPE}", "--gin.DROPOUT_RATE=0.0", "--devices=1"]
  if size.layers:
    args.append(f"--gin.model.config_overrides={{'num_encoder_layers': {size.layers}, "
                f"'num_decoder_layers': {size.layers}}}")
  return args


def _shell_word(arg: str) -> str:
  """`arg` as a shell reads it, in double quotes where gin's single quotes are (readable, unlike shlex's)."""
  if re.fullmatch(r"[\w@%+=:,./-]+", arg):
    return arg
  return f'"{arg}"' if not re.search(r'["$`\\!]', arg) else shlex.quote(arg)


class Planner:
  """`python -m moe_jax.plan` in a subprocess, started first and read last:
  its XLA:CPU compilation runs while the device works."""

  def __init__(self, args: list[str], platform: str):
    from moe_jax.utils import paths
    from moe_jax.kernels import hand_gradients
    self.command = ["python", "-m", "moe_jax.plan", *args]
    self.command_text = " ".join(map(_shell_word, self.command))
    # CPU only: it must not take the GPU (or its memory) from the measurements.
    env = dict(os.environ, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    # It traces for its simulated CPU, where the hand-written gradients are on
    # by default; plan the program `platform` runs instead (unless set for both).
    if "MOE_JAX_HAND_GRADIENTS" not in os.environ:
      env["MOE_JAX_HAND_GRADIENTS"] = "on" if platform in hand_gradients.PLATFORMS else "off"
      self.command_text = f"MOE_JAX_HAND_GRADIENTS={env['MOE_JAX_HAND_GRADIENTS']} {self.command_text}"
    self._out, self._err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    self._proc = subprocess.Popen([sys.executable, *self.command[1:]], cwd=paths.REPO_ROOT, env=env,
                                  stdout=self._out, stderr=self._err, text=True)

  def stop(self) -> None:
    if self._proc.poll() is None:
      self._proc.kill()
      self._proc.wait()

  def result(self, timeout: float) -> dict:
    """steps.train of the planner's last (JSON) line, or {"error": why not}."""
    out = {"command": self.command_text}
    try:
      self._proc.wait(timeout)
    except subprocess.TimeoutExpired:
      self.stop()
      return dict(out, error=f"the planner gave no answer within {timeout:.0f} s more")
    self._out.seek(0)
    self._err.seek(0)
    stdout, stderr = self._out.read(), self._err.read()
    if self._proc.returncode != 0:
      last = [l for l in stderr.splitlines() if l.strip()][-1:] or ["(no stderr)"]
      return dict(out, error=f"the planner exited {self._proc.returncode}: {last[0]}")
    try:
      plan = json.loads(stdout.strip().splitlines()[-1])
      train = plan["steps"]["train"]
      return dict(out, per_chip_total_gib=train["per_chip_total_gib"],
                  per_chip_argument_gib=train.get("per_chip_argument_gib"),
                  per_chip_temp_gib=train.get("per_chip_temp_gib"),
                  per_device_temp_gib=plan.get("per_device_temp_gib"), compiler=plan.get("compiler"))
    except (ValueError, KeyError, IndexError, TypeError) as e:
      return dict(out, error=f"no steps.train.per_chip_total_gib in the planner's last line ({e!r})")


def measured_memory(device) -> dict:
  """The device allocator's peak so far (GiB), or why there is none."""
  stats = device.memory_stats()
  if not stats or "peak_bytes_in_use" not in stats:
    return {"peak_gib": None, "reason": f"{device.platform}: memory_stats() is {stats!r}; "
                                        "XLA:CPU keeps no allocator statistics"}
  limit = stats.get("bytes_limit")
  return {"peak_gib": stats["peak_bytes_in_use"] / GIB, "in_use_gib": stats.get("bytes_in_use", 0) / GIB,
          "limit_gib": limit / GIB if limit else None}


def compiled_memory(facts: dict) -> dict:
  """The device compiler's own estimate for the step (XLA's memory_analysis, via bench.train_step.cost)."""
  return {k.replace("_mb", "_gib"): facts[k] / 1024 for k in ("argument_mb", "temp_mb", "output_mb") if k in facts}


def memory_section(planned: dict, compiled: dict, measured: dict) -> dict:
  total, peak = planned.get("per_chip_total_gib"), measured.get("peak_gib")
  return {"method": MEMORY_METHOD, "planner": planned, "compiled": compiled, "measured": measured,
          "measured_over_planned": peak / total if total and peak is not None else None}


def train_check(moe_jax, config, size: Size, peak: float | None) -> dict:
  """{"methods": per method the step's time, FLOPs and share of `peak`,
  "memory": the device's memory measured after MoV-10's first step and its
  compiler's estimate, "losses": MoV-10's first LOSS_STEPS losses}."""
  device = jax.devices()[0]
  batch = jax.device_put(train_step.make_batch(size.batch_size, *size.lengths, config.vocab_size), device)
  runs, facts = {}, {}

  def prepare(name):
    runs[name], facts[name] = train_step.prepare(moe_jax, config, name, batch)
    log(f"  {name}: compiled and stepped in {facts[name]['compile_and_first_step_s']:.1f} s")
  # MoV-10 first, while nothing else is on the device: the allocator's peak
  # (which never resets) is then this step's.
  prepare(MEMORY_METHOD)
  memory = {"measured": measured_memory(device), "compiled": compiled_memory(facts[MEMORY_METHOD])}
  losses = [facts[LOSS_METHOD]["first_step_loss"]] + [float(runs[LOSS_METHOD]()["loss"])
                                                      for _ in range(LOSS_STEPS - 1)]
  for name in METHODS:
    if name not in runs:
      prepare(name)
  timed = train_step.summarise(timing.round_robin(runs, size.rounds), facts, batch)
  results = {}
  for name, label in METHODS.items():
    r = dict(timed[name], label=label)
    r["achieved_flops_per_s"] = r["jaxpr_flops"] / (r["step_ms"] / 1e3)
    r["percent_of_peak"] = 100.0 * r["achieved_flops_per_s"] / peak if peak else None
    results[name] = r
  return {"methods": results, "memory": memory, "losses": losses}


def decode_check(moe_jax, config, size: Size) -> dict:
  b, n_in, n_new = size.decode
  run, facts = decode.prepare(moe_jax, config, DECODE_VARIANT, b, n_in, n_new)
  return decode.summarise(timing.round_robin({DECODE_VARIANT: run}, size.rounds), {DECODE_VARIANT: facts})


def loss_check(moe_jax, config, size: Size, on_device: list[float]) -> dict:
  """`on_device`, the device's MoV-10 losses from train_check, against the
  same steps (initial state, batch, key) on the CPU."""
  device = jax.devices()[0]
  try:
    cpu = jax.devices("cpu")[0]
  except RuntimeError as e:  # JAX_PLATFORMS left the CPU out
    return {"error": f"no CPU backend to compare with: {e}"}
  batch = jax.device_put(train_step.make_batch(size.batch_size, *size.lengths, config.vocab_size), cpu)
  run, facts = train_step.prepare(moe_jax, config, LOSS_METHOD, batch, devices=[cpu])
  on_cpu = [facts["first_step_loss"]] + [float(run()["loss"]) for _ in on_device[1:]]
  finite = all(math.isfinite(x) for x in on_device + on_cpu)
  rel = max(abs(a - c) / abs(c) for a, c in zip(on_device, on_cpu)) if finite else None
  out = {"method": LOSS_METHOD, "activation_dtype": DTYPE, "batch": [size.batch_size, *size.lengths],
         "steps": len(on_device), "device_losses": on_device, "cpu_losses": on_cpu, "max_rel_diff": rel,
         "tolerance": LOSS_RTOL, "passed": finite and rel <= LOSS_RTOL}
  if device.platform == "cpu":
    out["note"] = "trivial here: the device is the CPU, so both runs are on the CPU"
  return out


@contextlib.contextmanager
def _attention_impl(impl: str):
  old = os.environ.get(ATTENTION_ENV)
  os.environ[ATTENTION_ENV] = impl
  try:
    yield
  finally:
    if old is None:
      del os.environ[ATTENTION_ENV]
    else:
      os.environ[ATTENTION_ENV] = old


def attention_check(moe_jax, config, size: Size) -> dict:
  """Max |logits(cudnn) - logits(xla)| of the plain backbone on one batch."""
  device = jax.devices()[0]
  if device.platform != "gpu":
    return {"skipped": f"cudnn needs a GPU (this device: {device.platform})"}
  from moe_jax.models import build_model
  model = build_model(config)
  params = model.init(jax.random.key(0))
  batch = jax.device_put(train_step.make_batch(size.batch_size, *size.lengths, config.vocab_size), device)
  logits = {}
  for impl in ("xla", "cudnn"):
    with _attention_impl(impl):
      try:
        # Attention reads the variable when the model is traced: a new function, a new trace.
        logits[impl] = jax.block_until_ready(jax.jit(lambda p, b: model._logits(p, b))(params, batch))
      except Exception as e:  # cuDNN refuses some shapes and dtypes: that is the finding
        return {"error": f"{impl}: {type(e).__name__}: {_first_line(e)}"}
  return {"batch": [size.batch_size, *size.lengths], "activation_dtype": DTYPE,
          "max_abs_diff": float(jnp.max(jnp.abs(logits["cudnn"] - logits["xla"]))),
          "max_abs_logit": float(jnp.max(jnp.abs(logits["xla"])))}


def _num(v, fmt="{:.2f}") -> str:
  return "-" if v is None else fmt.format(v)


def _rate(flops_per_s) -> str:
  if flops_per_s is None:
    return "-"
  for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
    if flops_per_s >= scale:
      return f"{flops_per_s / scale:.3g} {unit}FLOP/s"
  return f"{flops_per_s:.3g} FLOP/s"


def _memory_lines(m: dict) -> list[str]:
  plan, comp, meas = m["planner"], m["compiled"], m["measured"]
  g = lambda v: _num(v, "{:.3f}")  # noqa: E731
  lines = ["", f"## Memory: {METHODS[m['method']]} train step", "",
           "| GiB | arguments | temporaries | total / peak |", "|---|---:|---:|---:|",
           f"| planner (XLA:CPU, simulated device) | {g(plan.get('per_chip_argument_gib'))} | "
           f"{g(plan.get('per_chip_temp_gib'))} | {g(plan.get('per_chip_total_gib'))} |",
           f"| this device's compiler (memory_analysis) | {g(comp.get('argument_gib'))} | "
           f"{g(comp.get('temp_gib'))} | - |",
           f"| measured (peak_bytes_in_use) | - | - | {g(meas.get('peak_gib'))} |", ""]
  if "error" in plan:
    lines.append(f"Planner: {plan['error']}.")
  if "command" in plan:
    lines.append(f"Planner command: `{plan['command']}`.")
  if meas.get("peak_gib") is None:
    lines.append(f"Measured: none ({meas['reason']}).")
  else:
    lines.append(f"Measured / planned: {_num(m['measured_over_planned'], '{:.3f}')} (the device's peak over "
                 f"the process so far: MoV-10's initialisation, compilation and first step).")
  return lines


def _train_lines(train: dict, peak: dict) -> list[str]:
  lines = ["", "## Train step", ""]
  if "error" in train:
    return lines + [f"Error: {train['error']}."]
  lines += [f"Peak: {_rate(peak.get('flops_per_s'))}, {peak.get('source', peak.get('error'))}. "
            "FLOPs counted on the jaxpr (moe_jax/tools/flops.py).", "",
            "| method | ms | FLOPs / step | achieved | % of peak | tokens/s | compile s |",
            "|---|---:|---:|---:|---:|---:|---:|"]
  for name, r in train.items():
    lines.append(f"| {r['label']} (`{name}`) | {r['step_ms']:.1f} | {r['jaxpr_flops']:.3g} | "
                 f"{_rate(r['achieved_flops_per_s'])} | {_num(r['percent_of_peak'], '{:.1f}')} | "
                 f"{r['tokens_per_sec']:,.0f} | {r['compile_and_first_step_s']:.1f} |")
  return lines


def _decode_lines(dec: dict) -> list[str]:
  lines = ["", "## Greedy decoding", ""]
  if "error" in dec:
    return lines + [f"Error: {dec['error']}."]
  lines += ["| variant | batch | input / new tokens | tokens/s | ms | compile s |", "|---|---:|---:|---:|---:|---:|"]
  for name, r in dec.items():
    lines.append(f"| {METHODS.get(name, name)} (`{name}`) | {r['batch_size']} | {r['input_len']} / "
                 f"{r['new_tokens']} | {r['tokens_per_sec']:,.1f} | {r['decode_ms']:.1f} | "
                 f"{r['compile_and_first_decode_s']:.1f} |")
  return lines


def _loss_lines(loss: dict) -> list[str]:
  lines = ["", "## Loss: device vs CPU", ""]
  if "error" in loss:
    return lines + [f"Error: {loss['error']}."]
  b, li, lt = loss["batch"]
  lines += [f"{METHODS[loss['method']]}'s first {loss['steps']} steps, {loss['activation_dtype']} activations on "
            f"both, batch {b}, lengths {li}/{lt}, the same initial state, batch and key.", "",
            "| step | device | CPU | relative difference |", "|---:|---:|---:|---:|"]
  for i, (a, c) in enumerate(zip(loss["device_losses"], loss["cpu_losses"]), 1):
    lines.append(f"| {i} | {a:.6f} | {c:.6f} | {abs(a - c) / abs(c):.2e} |")
  verdict = "PASS" if loss["passed"] else "FAIL"
  lines += ["", f"Max relative difference {_num(loss['max_rel_diff'], '{:.2e}')}, tolerance "
            f"{loss['tolerance']:g}: **{verdict}**." + (f" ({loss['note']}.)" if "note" in loss else "")]
  return lines


def _attention_lines(att: dict) -> list[str]:
  lines = ["", "## Attention: cuDNN vs XLA", ""]
  if "skipped" in att:
    return lines + [f"Skipped: {att['skipped']}."]
  if "error" in att:
    return lines + [f"Error: {att['error']}."]
  b, li, lt = att["batch"]
  return lines + [f"Plain backbone, {att['activation_dtype']} activations, batch {b}, lengths {li}/{lt}: "
                  f"max |logits(cudnn) - logits(xla)| = {att['max_abs_diff']:.3g} "
                  f"(largest |logit| {att['max_abs_logit']:.3g})."]


def problems(report: dict) -> list[str]:
  """What needs a look: the exit status is 1 when there is any."""
  out = [f"{k}: {report[k]['error']}" for k in ("peak", "train", "decode", "loss", "attention")
         if "error" in report.get(k, {})]
  if "error" in report.get("memory", {}).get("planner", {}):
    out.append(f"planner: {report['memory']['planner']['error']}")
  if report.get("loss", {}).get("passed") is False:
    out.append(f"loss: the device and the CPU differ by {_num(report['loss']['max_rel_diff'], '{:.2e}')} "
               f"(tolerance {LOSS_RTOL:g})")
  if "note" in report["device"]:
    out.append(f"device: {report['device']['note']}")
  return out


def markdown(report: dict) -> str:
  """The sections present so far (the file is rewritten after each)."""
  s, d = report["settings"], report["device"]
  done = "problems" in report  # set once every section has run
  lines = [f"# Device check (`--size={report['size']}`)", "",
           f"{d['kind']} ({d['platform']}, {d['count']} device(s)), jax {d['jax']}. Backbone `{s['preset']}` "
           f"({s['layers']}), {s['activation_dtype']} activations, float32 weights; train batch {s['batch_size']}, "
           f"lengths {s['lengths'][0]}/{s['lengths'][1]}, median of {s['rounds']} rounds after a warm-up. "
           f"{report['total_s']:.0f} s {'in all' if done else 'so far'}."]
  if done:
    lines += ["", "Problems: " + ("; ".join(report["problems"]) if report["problems"] else "none") + "."]
  for key, render in (("memory", _memory_lines), ("train", lambda t: _train_lines(t, report["peak"])),
                      ("decode", _decode_lines), ("loss", _loss_lines), ("attention", _attention_lines)):
    if key in report:
      lines += render(report[key])
  return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out_dir", default="device_check_results")
  p.add_argument("--size", default="base", choices=sorted(SIZES))
  args = p.parse_args(argv)
  t_start = time.perf_counter()
  import moe_jax
  size = SIZES[args.size]
  config = train_step.backbone(moe_jax, size.preset, size.layers, dtype=DTYPE)
  device = jax.devices()[0]
  report = {"check": "device_check", "size": args.size, "device": device_info(device), "phase_s": {},
            "settings": {"preset": size.preset, "layers": f"{config.num_encoder_layers}+{config.num_decoder_layers} "
                         "layers", "activation_dtype": DTYPE, "batch_size": size.batch_size,
                         "lengths": list(size.lengths), "rounds": size.rounds}}
  os.makedirs(args.out_dir, exist_ok=True)

  def save() -> str:
    """Both files after every section: a run cut short still leaves what it measured."""
    report["total_s"] = time.perf_counter() - t_start
    write_text(os.path.join(args.out_dir, "device_check.json"), json.dumps(report, indent=1))
    text = markdown(report)
    write_text(os.path.join(args.out_dir, "device_check.md"), text)
    return text

  # On a CPU the peak is measured, before the planner shares the cores.
  report["peak"] = section(report, "peak", peak_flops, device)
  planner = Planner(planner_args(size), device.platform)
  try:
    trained = section(report, "train", train_check, moe_jax, config, size, report["peak"].get("flops_per_s"))
    report["train"] = trained.get("methods", trained)
    waiting = dict(command=planner.command_text, error="no answer yet (the check stopped before the planner's)")
    memory = trained.get("memory", {"compiled": {}, "measured": {"peak_gib": None, "reason": "the train step failed"}})
    report["memory"] = memory_section(waiting, **memory)
    save()
    report["decode"] = section(report, "decode", decode_check, moe_jax, config, size)
    save()
    report["loss"] = (section(report, "loss", loss_check, moe_jax, config, size, trained["losses"])
                      if "losses" in trained else {"error": "no device losses (the train step failed)"})
    save()
    report["attention"] = section(report, "attention", attention_check, moe_jax, config, size)
    save()
    report["memory"] = memory_section(section(report, "planner (waiting)", planner.result, PLANNER_TIMEOUT_S),
                                      **memory)
  finally:
    planner.stop()
  report["problems"] = problems(report)
  print(save())
  return report


if __name__ == "__main__":
  sys.exit(1 if main()["problems"] else 0)
