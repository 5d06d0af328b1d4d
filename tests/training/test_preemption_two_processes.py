"""SIGTERM to one of two processes joined by jax.distributed (gloo, as a
pod's hosts): both stop at the same step, save it once and exit with
preemption.EXIT_CODE; rerun, they end identical to two processes never
interrupted."""
import os
import signal
import subprocess
import sys

from moe_jax import preemption
from tests.inprocess import SMALL_TRAIN, final_state
from tests.training.test_preemption import REPO, _losses, _same
def _free_port():
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _two_processes(run, steps, *, signal_at=None, linger1=0):
  """Both processes of a two-host run; with `signal_at`, SIGTERM goes to
  process 1 only when process 0 (the lead, which prints progress) logs that
  step; process 1 exits `linger1` seconds after it finished. Returns
  [(exit code, stderr)] per process."""
  script = os.path.join(REPO, "tests", "multidevice", "two_process_trainer.py")
  port = str(_free_port())
  flags = [*SMALL_TRAIN, f"--gin.TRAIN_STEPS={steps}", "--gin.CHECKPOINT_PERIOD=1000", "--gin.LOG_PERIOD=1",
           f"--gin.MODEL_DIR={run}"]
  err1 = open(run.parent / f"{run.name}.stderr1", "w+")
  procs = [subprocess.Popen([sys.executable, script, port, str(i), *flags], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE if i == 0 else err1, text=True,
                            env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO,
                                     LINGER_SECONDS=str(linger1 if i == 1 else 0))) for i in range(2)]
  lines = []
  try:
    for line in procs[0].stderr:
      lines.append(line)
      if signal_at is not None and line.startswith(f"step {signal_at}/{steps} "):
        procs[1].send_signal(signal.SIGTERM)
        signal_at = None
    for p in procs:
      p.wait(timeout=300)  # neither may wait forever for the other
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  err1.seek(0)
  return [(procs[0].returncode, "".join(lines)), (procs[1].returncode, err1.read())]


def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_saved_step(tmp_path):
  steps, k = 12, 4
  ref = tmp_path / "reference"
  # Process 1 ends 3 s after process 0, whose exit must wait for it: the
  # coordination service lives in process 0 (else SIGABRT in process 1).
  assert [c for c, _ in _two_processes(ref, steps, linger1=3)] == [0, 0]
  run = tmp_path / "run"
  (c0, e0), (c1, e1) = _two_processes(run, steps, signal_at=k)
  assert (c0, c1) == (preemption.EXIT_CODE, preemption.EXIT_CODE), (e0[-2000:], e1[-2000:])
  saved = [int(s) for s in os.listdir(run / "checkpoints") if s.isdigit()]
  assert len(saved) == 1 and k <= saved[0] <= k + 2, saved
  for err in (e0, e1):  # both name the signal process 1 received and the one step saved
    assert f"stopped by SIGTERM at step {saved[0]}: saved checkpoint step {saved[0]}" in err
  position = run / "checkpoints" / str(saved[0]) / "input_position"
  assert sorted(p.name for p in position.glob("*.json")) == ["process_0-of-2.json", "process_1-of-2.json"]
  rerun = _two_processes(run, steps)
  assert [c for c, _ in rerun] == [0, 0]
  for _, err in rerun:  # each process continues its own half of the batches from where it stood
    assert f"input position: restored after {saved[0]} batches" in err
  _same(final_state(run), final_state(ref))
  assert _losses(run) == _losses(ref)

