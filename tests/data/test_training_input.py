"""The training input's position: a stream resumed from a saved position
continues with the very batches the uninterrupted stream gives next (unpacked
and packed, rendered rows and the P3 release); a missing, damaged or foreign
position falls back to replaying the stream, with its line, and gives the same
batches too."""
import os

import numpy as np
import pytest
import seqio

import tasks
from moe_jax.data import sources, training_input
from tests.data.test_sources import p3_release, small_kit  # noqa: F401  fixtures

LENGTHS = {"inputs": 32, "targets": 8}
MIXTURE = "test_training_input_mixture"


def _mixture():
  """Three rotten_tomatoes templates at different rates: the sampler's state matters."""
  if MIXTURE not in seqio.MixtureRegistry.names():
    names = [t.name for t in tasks.REGISTERED["rotten_tomatoes"][:3]]
    seqio.MixtureRegistry.add(MIXTURE, list(zip(names, (1, 2, 3))))
  return seqio.get_mixture_or_task(MIXTURE)


def _input(pack=False, seed=0, first_row=0, host_rows=4, process_count=1):
  return training_input.build(_mixture(), LENGTHS, first_row=first_row, host_rows=host_rows, batch_size=4,
                              shuffle_seed=seed, pack=pack, family="encoder_decoder",
                              process_index=first_row // host_rows, process_count=process_count)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _saved_after(tmp_path, n, **kw):
  step_dir = tmp_path / "checkpoints" / str(n)
  it = _input(**kw)
  _take(it, n)
  it.save(str(step_dir), n)
  return step_dir


@pytest.mark.parametrize("pack", [False, True], ids=["unpacked", "packed"])
def test_a_restored_position_continues_with_the_same_batches(tmp_path, capsys, pack):
  # 40 batches after the restore: far past what the restored buffers hold, so
  # rows the saving process never rendered are rendered after the restore.
  straight = _take(_input(pack=pack), 43)
  assert len({x["encoder_input_tokens"].tobytes() for x in straight}) == 43
  step_dir = _saved_after(tmp_path, 3, pack=pack)
  resumed = _input(pack=pack)
  resumed.resume(str(step_dir), 3, str(tmp_path / "damaged"))
  assert f"input position: restored after 3 batches from {step_dir}/input_position" in capsys.readouterr().err
  _assert_same(_take(resumed, 40), straight[3:])
  assert sorted(os.listdir(step_dir / "input_position"))[-1] == "process_0-of-1.json"


def test_without_a_saved_position_the_stream_is_replayed(tmp_path, capsys):
  n = training_input.PROBE_BATCHES + 3  # replayed: the probe, then the rest
  straight = _take(_input(), n + 3)
  step_dir = tmp_path / "checkpoints" / str(n)
  step_dir.mkdir(parents=True)  # a checkpoint from before positions were saved
  resumed = _input()
  assert resumed.resume(str(step_dir), n, str(tmp_path / "damaged")) is False
  err = capsys.readouterr().err
  assert (f"input position: checkpoint {step_dir} holds no input position: replaying {4 * n} rows ({n} batches "
          f"of 4) to continue the same stream, about ") in err
  _assert_same(_take(resumed, 3), straight[n:])


def test_a_damaged_position_is_moved_aside_and_the_stream_replayed(tmp_path, capsys):
  straight = _take(_input(), 6)
  step_dir = _saved_after(tmp_path, 3)
  data = next(p for p in (step_dir / "input_position").iterdir() if ".data-" in p.name)
  data.write_bytes(data.read_bytes()[:40])  # a write cut short
  resumed = _input()
  resumed.resume(str(step_dir), 3, str(tmp_path / "damaged"))
  err = capsys.readouterr().err
  assert f"warning: input position {step_dir}/input_position/process_0-of-1: " in err
  assert f"moved it to {tmp_path}/damaged/3.input_position" in err
  assert "its saved position was damaged: replaying 12 rows (3 batches of 4)" in err
  assert not os.listdir(step_dir / "input_position")
  assert len(os.listdir(tmp_path / "damaged" / "3.input_position")) == 3
  _assert_same(_take(resumed, 3), straight[3:])


def test_a_position_saved_under_another_host_split_or_other_data_is_not_used(tmp_path, capsys):
  step_dir = _saved_after(tmp_path, 3)  # one process reading all 4 rows of each batch
  straight = _take(_input(host_rows=2, process_count=2), 6)  # process 0 of 2: rows 0-1
  resumed = _input(host_rows=2, process_count=2)
  resumed.resume(str(step_dir), 3, str(tmp_path / "damaged"))
  assert (f"input position: the position in {step_dir} was saved by process 0 of 1, rows 0-3 of 4; this run "
          "is process 0 of 2, rows 0-1 of 4: replaying 6 rows (3 batches of 2)") in capsys.readouterr().err
  _assert_same(_take(resumed, 3), straight[3:])
  other_seed = _input(seed=1)
  other_seed.resume(str(step_dir), 3, str(tmp_path / "damaged"))
  assert (f"the position in {step_dir} belongs to other data (shuffle_seed was 0, is 1): replaying"
          in capsys.readouterr().err)


def _restores_after_two(tmp_path, capsys, more):
  straight = _take(_input(), 2 + more)
  step_dir = _saved_after(tmp_path, 2)
  resumed = _input()
  assert resumed.resume(str(step_dir), 2, str(tmp_path / "damaged"))
  assert "input position: restored after 2 batches" in capsys.readouterr().err
  _assert_same(_take(resumed, more), straight[2:])


def test_the_hf_stream_restores_too(monkeypatch, tmp_path, capsys):
  """The hf source indexes Arrow-backed `datasets.Dataset` rows (here read from
  the kit's files, as load_dataset would return them)."""
  import datasets
  monkeypatch.setenv(sources.SOURCE_ENV, "hf")
  monkeypatch.setattr(sources, "_hf_split", lambda spec, split: datasets.Dataset.from_json(spec.file("train")))
  _restores_after_two(tmp_path, capsys, 20)


def test_the_p3_release_stream_restores_too(p3_release, monkeypatch, tmp_path, capsys):  # noqa: F811
  monkeypatch.setenv(sources.SOURCE_ENV, f"p3:{p3_release}")
  _restores_after_two(tmp_path, capsys, 4)
