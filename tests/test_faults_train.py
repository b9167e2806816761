"""Faults injected into real training runs (train.py in a child process, tiny model): a fresh
run on a workdir holding one, NaN gradients, a truncated checkpoint, a full disk, SIGTERM, a
second trainer, the end of the data, bad data paths, kill -9. Each checks the exit code, the
one-line message, that no checkpoint left behind is poisoned and that no step (hence no
record) is lost or repeated against an uninterrupted run of the same config."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bird_jax.train.checkpointing import DATA, TrainCheckpointer
from bird_jax.train.logger import read_metrics

pytestmark = [pytest.mark.faults, pytest.mark.e2e]
ROOT = Path(__file__).resolve().parents[1]
# The runs share one persistent compilation cache: the same step program is compiled once
# (a run takes ~7 s instead of ~20 s on 2 cores).
COMPILE_CACHE = {"JAX_COMPILATION_CACHE_DIR": os.path.join(
    os.environ.get("TMPDIR", "/tmp"), f"bird_jax_fault_tests_{os.getuid()}"),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
RUN = {"data.batch_size": 4, "data.max_len": 192, "optim.warmup_steps": 2, "train.steps": 10,
       "train.ckpt_every": 2, "train.keep": 3, "train.log_every": 1}


def launch(workdir: Path, shards: str, file_limit_kb: int | None = None, **over
           ) -> subprocess.Popen:
  """train.py --config configs/demo.py with RUN and `over` (dots as __) as overrides."""
  settings = {**RUN, "data.shards": shards, "train.workdir": str(workdir),
              **{k.replace("__", "."): v for k, v in over.items()}}
  cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs" / "demo.py"),
         *(f"--config.{k}={v}" for k, v in settings.items())]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", **COMPILE_CACHE}
  if file_limit_kb:  # a full disk, as a file-size limit: writes past it fail with EFBIG
    cmd = ["bash", "-c", f'ulimit -f {file_limit_kb} && exec "$0" "$@"', *cmd]
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def train(workdir: Path, shards: str, **over) -> tuple[int, str, str]:
  proc = launch(workdir, shards, **over)
  out, err = proc.communicate(timeout=600)
  return proc.returncode, out, err


def losses(workdir: Path) -> dict[int, float]:
  rows = read_metrics(str(workdir))
  steps = [r["step"] for r in rows]
  assert len(steps) == len(set(steps)), f"repeated metric rows: {steps}"
  return {r["step"]: r["loss"] for r in rows}


def poisoned(workdir: Path) -> int:
  """Checkpoint steps a resume would find unreadable or non-finite."""
  if not (workdir / "checkpoints").is_dir():
    return 0
  c = TrainCheckpointer(str(workdir), keep=100)
  bad = sum(bool(c.why_unusable(s)) for s in c.manager.all_steps())
  c.close()
  return bad


def samples_read(workdir: Path) -> int:
  """Samples the data iterator had produced at the newest checkpoint."""
  c = TrainCheckpointer(str(workdir), keep=100)
  step = c.latest_step()
  import orbax.checkpoint as ocp
  state = c.manager.restore(step, args=ocp.args.Composite(**{DATA: ocp.args.JsonRestore()}))[DATA]
  c.close()
  return sum(int(s["stats"]["samples"]) for s in state["streams"].values())


def compare(workdir: Path, ref: dict) -> tuple[int, int]:
  """(records lost, records duplicated) against the uninterrupted run: every step once with
  the reference's loss (the same batches), and the same samples read in total."""
  got = losses(workdir)
  assert got == ref["losses"], (got, ref["losses"])
  diff = samples_read(workdir) - ref["samples"]
  assert diff == 0, f"{diff:+d} samples against the uninterrupted run"
  return max(0, -diff), max(0, diff)


def error_lines(err: str) -> list[str]:
  return [line for line in err.splitlines() if line.strip() and not line.startswith("train:")
          and "\r" not in line]


@pytest.fixture(scope="module")
def ref(shards, tmp_path_factory):
  """The uninterrupted run: 10 steps, checkpoints at 2, 4, ..., 10 (3 kept)."""
  workdir = tmp_path_factory.mktemp("ref") / "run"
  code, out, err = train(workdir, shards)
  assert code == 0, err[-3000:]
  return {"dir": workdir, "losses": losses(workdir), "samples": samples_read(workdir)}


def copy_of(ref: dict, tmp_path: Path) -> Path:
  dest = tmp_path / "run"
  shutil.copytree(ref["dir"], dest)
  return dest


def test_a_fresh_run_refuses_a_workdir_holding_a_run_until_told(ref, shards, tmp_path, fault_log):
  w = copy_of(ref, tmp_path)
  code, _, err = train(w, shards, train__resume="false")
  assert code == 2 and "holds an earlier run" in err and "train.overwrite=true" in err
  assert sorted(p.name for p in (w / "checkpoints").iterdir()) == ["10", "6", "8"]
  code, out, err = train(w, shards, train__resume="false", train__overwrite="true")
  assert code == 0, err[-3000:]
  (previous,) = (w / "previous").iterdir()
  assert sorted(p.name for p in (previous / "checkpoints").iterdir()) == ["10", "6", "8"]
  assert losses(previous) == ref["losses"]  # the earlier run, whole, beside the new one
  lost, dup = compare(w, ref)
  fault_log(what="resume=false on a workdir with checkpoints", recovered=True,
            poisoned=poisoned(w), lost=lost, duplicated=dup)


def test_non_finite_gradients_stop_before_anything_is_saved(shards, tmp_path, fault_log):
  w = tmp_path / "run"
  code, _, err = train(w, shards, optim__lr=1e4)
  assert code == 4, err[-3000:]
  (line,) = [x for x in error_lines(err) if x.startswith("train.py: error:")]
  assert "grad norm nan" in line and "non-finite: grad_norm" in line
  last = int(line.split("the last good checkpoint is step ")[1].split()[0])
  assert "(verified: its parameters and optimizer state read back, all finite)" in line
  assert max(int(p.name) for p in (w / "checkpoints").iterdir()) == last
  bad = poisoned(w)
  assert bad == 0
  fault_log(what="lr 1e4: NaN gradients and parameters", poisoned=bad)


@pytest.mark.slow
def test_a_diverged_run_stays_diverged_until_the_config_changes(shards, tmp_path, fault_log):
  w = tmp_path / "run"
  code, _, err = train(w, shards, optim__lr=1e4)
  assert code == 4
  saved = sorted(int(p.name) for p in (w / "checkpoints").iterdir())
  code, _, err = train(w, shards, optim__lr=1e4)  # the same again: same step, nothing saved
  assert code == 4 and f"step {saved[-1] + 1}: loss is" in err
  assert sorted(int(p.name) for p in (w / "checkpoints").iterdir()) == saved
  code, out, err = train(w, shards, optim__lr=1e-3, train__resume="false",
                         train__overwrite="true")  # the fix: a new run, the failed one kept
  assert code == 0 and "stopped at step 10 (done" in out, err[-3000:]
  assert (next((w / "previous").iterdir()) / "checkpoints" / str(saved[-1])).is_dir()
  fault_log(what="NaN twice, then a new run with a sane lr", recovered=True, poisoned=poisoned(w))


def test_resume_falls_back_from_a_truncated_checkpoint(ref, shards, tmp_path, fault_log):
  w = copy_of(ref, tmp_path)
  data = sorted((w / "checkpoints" / "10" / "params").rglob("d/*"), key=lambda p: p.stat().st_size)
  os.truncate(data[-1], 1000)
  code, out, err = train(w, shards)
  assert code == 0, err[-3000:]
  assert "resume: checkpoint step 10 is not usable (params: " in out and "OUT_OF_RANGE" in out
  assert "resume: continuing from step 8, the newest usable checkpoint" in out
  assert [p.name.split("-")[1] for p in (w / "rejected").iterdir()] == ["10"]
  lost, dup = compare(w, ref)
  fault_log(what="truncated data file in the newest step", recovered=True, poisoned=poisoned(w),
            lost=lost, duplicated=dup)


@pytest.mark.slow
def test_resume_from_a_chosen_step(ref, shards, tmp_path, fault_log):
  w = copy_of(ref, tmp_path)
  code, out, err = train(w, shards, train__resume_step=6)
  assert code == 0, err[-3000:]
  assert "resume: step 8 is newer than train.resume_step=6" in out
  assert sorted(p.name.split("-")[1] for p in (w / "rejected").iterdir()) == ["10", "8"]
  lost, dup = compare(w, ref)
  code, _, err = train(w, shards, train__resume_step=3)
  assert code == 2 and "no checkpoint step 3 (steps: [6, 8, 10])" in err
  fault_log(what="resume_step picks an older step", recovered=True, poisoned=poisoned(w),
            lost=lost, duplicated=dup)


def test_a_full_disk_stops_the_run_at_the_failing_save(ref, shards, tmp_path, fault_log):
  w = tmp_path / "run"
  code, _, err = train(w, shards, file_limit_kb=3000)
  assert code == 5, err[-3000:]
  assert error_lines(err) == [
      f"train.py: error: checkpoint step 2 could not be written to {w}/checkpoints/2: "
      "[Errno 27] File too large (out of disk space, quota or file-size limit)"]
  code, _, err = train(w, shards)  # space again: the rerun completes the same run
  assert code == 0, err[-3000:]
  lost, dup = compare(w, ref)
  fault_log(what="disk full at the first save", recovered=True, poisoned=poisoned(w), lost=lost,
            duplicated=dup)


def test_preemption_exits_75_and_a_second_trainer_is_locked_out(shards, tmp_path, fault_log):
  w = tmp_path / "run"
  first = launch(w, shards, train__steps=300)
  t0 = time.time()
  while not read_metrics(str(w)) and time.time() - t0 < 300 and first.poll() is None:
    time.sleep(0.2)
  code, _, err = train(w, shards, train__steps=300)
  assert code == 2 and f"{w} is in use by another training run (pid {first.pid} on " in err
  first.send_signal(signal.SIGTERM)
  out, err = first.communicate(timeout=120)
  assert first.returncode == 75 and "(signal: preempted" in out, err[-3000:]
  saved = max(int(p.name) for p in (w / "checkpoints").iterdir())
  code, out, err = train(w, shards, train__steps=saved + 2)  # resumes and finishes
  assert code == 0 and f"stopped at step {saved + 2} (done" in out, err[-3000:]
  assert sorted(losses(w)) == list(range(1, saved + 3))  # each step once, none missing
  fault_log(what="SIGTERM, a second trainer on the workdir", recovered=True,
            poisoned=poisoned(w))


def test_running_out_of_data_exits_3_with_the_state_saved(shards, tmp_path, fault_log):
  w = tmp_path / "run"
  code, out, err = train(w, shards, data__num_epochs=1, train__steps=100)
  assert code == 3 and "(data: stopped early: out of data (state saved))" in out, err[-3000:]
  last = max(losses(w))
  assert (w / "checkpoints" / str(last)).is_dir()
  fault_log(what="data ends before train.steps", poisoned=poisoned(w))


@pytest.mark.parametrize("kind", ["empty folder", "JSON file", "no shards", "garbage shard",
                                  "missing path"])
def test_bad_data_is_refused_before_the_model_is_built(tmp_path, kind, fault_log):
  target = {"empty folder": tmp_path / "empty", "JSON file": tmp_path / "train.json",
            "no shards": "", "garbage shard": tmp_path / "garbage",
            "missing path": tmp_path / "nowhere"}[kind]
  (tmp_path / "empty").mkdir()
  (tmp_path / "train.json").write_text("[]")
  (tmp_path / "garbage").mkdir()
  (tmp_path / "garbage" / "a.array_record").write_bytes(os.urandom(1000))
  w = tmp_path / "run"
  code, _, err = train(w, str(target))
  assert code == 2
  (line,) = error_lines(err)
  assert line.startswith("train.py: error:") and "shards" in line
  if kind == "garbage shard":
    assert str(target / "a.array_record") in line and "not a readable ArrayRecord shard" in line
  elif target:
    assert str(target) in line
  assert not (w / "config.json").exists()  # refused before the model and the run existed
  fault_log(what=f"data.shards: {kind}")


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [1, 3, 5, 7, 9])
def test_kill_9_at_any_step_resumes_to_the_uninterrupted_run(ref, shards, tmp_path, kill_after,
                                                             fault_log):
  w = tmp_path / "run"
  proc = launch(w, shards)
  t0 = time.time()
  while max(losses(w), default=0) < kill_after and proc.poll() is None and time.time() - t0 < 300:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  code, _, err = train(w, shards)
  assert code == 0, err[-3000:]
  lost, dup = compare(w, ref)
  fault_log(what=f"kill -9 after step {kill_after}", recovered=True, poisoned=poisoned(w),
            lost=lost, duplicated=dup)
