"""Faults injected into real training runs (train.py in a child process, tiny model): a fresh
run on a workdir holding one, NaN gradients, a truncated checkpoint, a checkpoint that cannot
be read (an I/O error), no usable checkpoint, a full disk, SIGTERM, a second trainer, the end
of the data, bad data paths, kill -9. Each checks the exit code, the one-line message, that no
checkpoint left behind is poisoned and that no step (hence no record) is lost or repeated
against an uninterrupted run of the same config."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bird_jax.train.checkpointing import DATA, TMP_SUFFIX, TrainCheckpointer
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
# train.py with every read of one checkpoint array failing with an OS error (errno, array):
# what a flaky or unmounted network filesystem, or a lost permission, does to a resume.
FAILING_READS = textwrap.dedent("""
    import errno, os, runpy, sys
    from bird_jax.checkpoint import orbax
    code, failing = int(sys.argv[1]), sys.argv[2]
    read = orbax.ParamReader.read

    def read_or_fail(self, path, layer=None):
      if path == failing:
        where = os.path.join(str(self.arrays[path].directory), "d")
        raise OSError(code, os.strerror(code), where)
      return read(self, path, layer)

    orbax.ParamReader.read = read_or_fail
    sys.argv = sys.argv[3:]
    runpy.run_path(sys.argv[0], run_name="__main__")
""")


def launch(workdir: Path, shards: str, file_limit_kb: int | None = None,
           failing_read: tuple[int, str] | None = None, **over) -> subprocess.Popen:
  """train.py --config configs/demo.py with RUN and `over` (dots as __) as overrides."""
  settings = {**RUN, "data.shards": shards, "train.workdir": str(workdir),
              **{k.replace("__", "."): v for k, v in over.items()}}
  cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs" / "demo.py"),
         *(f"--config.{k}={v}" for k, v in settings.items())]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", **COMPILE_CACHE}
  if failing_read:
    cmd = [sys.executable, "-c", FAILING_READS, str(failing_read[0]), failing_read[1], *cmd[1:]]
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
  code, _, err = train(w, shards, train__resume="false", train__overwrite="true")  # a requeue
  assert code == 2 and "would start from step 0, but 3 later checkpoint step(s)" in err
  assert [p.name for p in (w / "previous").iterdir()] == [previous.name]  # nothing moved
  bad = poisoned(w)
  assert bad == 0
  fault_log(what="resume=false on a workdir with checkpoints", recovered=True, poisoned=bad,
            lost=lost, duplicated=dup)


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
  bad = poisoned(w)
  assert bad == 0
  fault_log(what="NaN twice, then a new run with a sane lr", recovered=True, poisoned=bad)


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
  bad = poisoned(w)
  assert bad == 0
  fault_log(what="truncated data file in the newest step", recovered=True, poisoned=bad,
            lost=lost, duplicated=dup)


def test_a_checkpoint_that_cannot_be_read_is_kept_and_the_rerun_resumes(ref, shards, tmp_path,
                                                                        fault_log):
  """An I/O error is no evidence against a checkpoint: train refuses to start (exit 2, the file
  and the error named) and moves nothing; once reads work again the run resumes from its
  newest step, its metrics kept."""
  w = copy_of(ref, tmp_path)
  metrics = (w / "metrics.jsonl").read_text()
  failing = "llm.h.mlp.w2.kernel"  # in every kept step
  code, out, err = train(w, shards, failing_read=(errno.EIO, failing))
  assert code == 2, err[-3000:]
  (line,) = [x for x in error_lines(err) if x.startswith("train.py: error:")]
  assert f"checkpoint step 10 in {w}/checkpoints could not be read: params {failing}: " in line
  assert "/checkpoints/10/params/" in line and "[Errno 5] Input/output error" in line
  assert "nothing was moved aside" in line and "resume:" not in out
  assert sorted(p.name for p in (w / "checkpoints").iterdir()) == ["10", "6", "8"]
  assert not (w / "rejected").exists() and (w / "metrics.jsonl").read_text() == metrics
  code, out, err = train(w, shards)  # reads work again
  assert code == 0 and "stopped at step 10 (done" in out, err[-3000:]
  assert (w / "metrics.jsonl").read_text() == metrics  # resumed from step 10, nothing redone
  assert sorted(p.name for p in (w / "checkpoints").iterdir()) == ["10", "6", "8"]
  bad = poisoned(w)
  assert bad == 0
  fault_log(what="I/O error reading every kept step", recovered=True, poisoned=bad)


def test_no_usable_checkpoint_is_no_silent_restart(ref, shards, tmp_path, fault_log):
  """Every kept step damaged: they are moved to rejected/ (exit 2), and a rerun, which would
  start from step 0, is refused until train.allow_rollback=true asks for it."""
  w = copy_of(ref, tmp_path)
  for step in ("6", "8", "10"):
    data = sorted((w / "checkpoints" / step / "params").rglob("d/*"), key=lambda p: p.stat().st_size)
    os.truncate(data[-1], 1000)
  code, out, err = train(w, shards)
  assert code == 2 and "no usable checkpoint (steps [6, 8, 10] moved to" in err, err[-3000:]
  assert "refused unless --config.train.allow_rollback=true" in err
  assert sorted(p.name.split("-")[1] for p in (w / "rejected").iterdir()) == ["10", "6", "8"]
  code, _, err = train(w, shards)
  (line,) = [x for x in error_lines(err) if x.startswith("train.py: error:")]
  assert code == 2 and "this run would start from step 0, but 3 later checkpoint step(s) were " \
      "set aside, up to step 10" in line and "allow_rollback=true" in line
  assert (w / "metrics.jsonl").read_text().count("\n") == 10  # nothing trimmed
  code, out, err = train(w, shards, train__allow_rollback="true")
  assert code == 0, err[-3000:]
  lost, dup = compare(w, ref)  # a new run from step 0, the same as the first
  bad = poisoned(w)
  assert bad == 0
  fault_log(what="every kept step damaged", recovered=True, poisoned=bad, lost=lost,
            duplicated=dup)


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
  bad = poisoned(w)
  assert bad == 0
  fault_log(what="resume_step picks an older step", recovered=True, poisoned=bad, lost=lost,
            duplicated=dup)


def test_a_full_disk_stops_the_run_at_the_failing_save(ref, shards, tmp_path, fault_log):
  w = tmp_path / "run"
  code, _, err = train(w, shards, file_limit_kb=3000)
  assert code == 5, err[-3000:]
  assert error_lines(err) == [
      f"train.py: error: checkpoint step 2 could not be written to {w}/checkpoints/2: "
      "[Errno 27] File too large (out of disk space, quota or file-size limit)"]
  assert not list((w / "checkpoints").glob(f"*{TMP_SUFFIX}*"))  # the failed save removed
  code, _, err = train(w, shards)  # space again: the rerun completes the same run
  assert code == 0, err[-3000:]
  lost, dup = compare(w, ref)
  bad = poisoned(w)
  assert bad == 0
  fault_log(what="disk full at the first save", recovered=True, poisoned=bad, lost=lost,
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
  bad = poisoned(w)
  assert bad == 0
  fault_log(what="SIGTERM, a second trainer on the workdir", recovered=True, poisoned=bad)


def test_running_out_of_data_exits_3_with_the_state_saved(shards, tmp_path, fault_log):
  w = tmp_path / "run"
  code, out, err = train(w, shards, data__num_epochs=1, train__steps=100)
  assert code == 3 and "(data: stopped early: out of data (state saved))" in out, err[-3000:]
  last = max(losses(w))
  assert (w / "checkpoints" / str(last)).is_dir()
  bad = poisoned(w)
  assert bad == 0
  fault_log(what="data ends before train.steps", poisoned=bad)


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
  bad = poisoned(w)
  assert bad == 0
  fault_log(what=f"kill -9 after step {kill_after}", recovered=True, poisoned=bad, lost=lost,
            duplicated=dup)


def test_the_fault_summary_is_printed_under_xdist(tmp_path):
  """`pytest -n 2` (the suite's usual command): the workers' fault rows reach the controller,
  which prints the summary."""
  (tmp_path / "conftest.py").write_text(textwrap.dedent(f"""
      import importlib.util
      spec = importlib.util.spec_from_file_location("suite_conftest", {str(ROOT / "tests" / "conftest.py")!r})
      suite = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(suite)
      globals().update({{k: getattr(suite, k) for k in dir(suite) if k.startswith("pytest_")}})
      fault_log = suite.fault_log
  """))
  (tmp_path / "test_rows.py").write_text(textwrap.dedent("""
      import pytest

      @pytest.mark.parametrize("i", range(4))
      def test_row(i, fault_log):
        fault_log(what=f"fault {i}", recovered=bool(i % 2) or None)
  """))
  proc = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "-p", "no:cacheprovider",
                         "-o", "addopts=", "-c", os.devnull, "--rootdir", str(tmp_path),
                         str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"})
  out = proc.stdout
  assert proc.returncode == 0 and "4 passed" in out, out[-3000:] + proc.stderr[-3000:]
  assert "fault injection" in out, out[-3000:]
  assert sorted(line.split(" ->")[0] for line in out.splitlines() if " -> " in line) == [
      f"fault {i}" for i in range(4)]
  assert "faults injected 4, runs recovered 2/2, checkpoints poisoned 0" in out
