"""`python -m bird_jax.audit`: an untouched run passes; a tampered data shard, a changed
checkpoint file, an edited report figure and a changed package version are each caught and
named; a training run replays bit for bit; manifests that cannot be audited and a run still
being written are refused in one line."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from bird_jax import manifest as M
from bird_jax.audit import audit
from bird_jax.audit.__main__ import PROG, main
from bird_jax.exit_codes import BadInput
from bird_jax_testing.tools import exit_code

ROOT = Path(__file__).resolve().parents[1]


def run_audit(capfd, *argv) -> tuple[int, str, str]:
  capfd.readouterr()
  code = exit_code(main, [str(a) for a in argv], PROG)
  out, err = capfd.readouterr()
  return code, out, err


@contextlib.contextmanager
def tampered(path: Path):
  """One byte of `path` changed for the block, then restored."""
  original = path.read_bytes()
  changed = bytearray(original)
  changed[len(changed) // 2] ^= 0xFF
  path.write_bytes(bytes(changed))
  try:
    yield path
  finally:
    path.write_bytes(original)


def edit_json(path: Path, edit) -> None:
  data = json.loads(path.read_text())
  edit(data)
  path.write_text(json.dumps(data))


# ---- eval: figures scored again ----------------------------------------------------------------

@pytest.fixture(scope="module")
def eval_out(tmp_path_factory) -> Path:
  """eval.py's audit mode (in this process) on VG and ROC prediction files."""
  from bird_jax.evaluation import cli
  from bird_jax.evaluation.config import default_config
  from bird_jax.evaluation.predictions import Prediction, write_predictions

  d = tmp_path_factory.mktemp("eval_audit")
  box = "<ref>liver</ref><box>(10,10),(400,400)</box>"
  write_predictions(d / "vg.jsonl", [
      Prediction(f"v{i}", f"{m}_{i}.png", "Where is the liver?", box,
                 f"<box>(12,10),({400 - 150 * i},390)</box>")
      for i, m in enumerate(("ct", "mr", "ct", "x_ray"))])
  write_predictions(d / "roc.jsonl", [
      Prediction(f"r{i}", f"{m}_{i}.png", "What is at <box>(1,2),(300,400)</box>?", "liver",
                 answer) for i, (m, answer) in enumerate((("ct", "liver"), ("mr", "kidney")))])
  c = default_config()
  c.gallery = 0
  cli.run(c, predictions=[str(d / "vg.jsonl"), str(d / "roc.jsonl")], task=["vg", "roc"],
          out=str(d / "out"))
  return d / "out"


def test_an_untouched_eval_passes_and_an_edited_figure_is_named(eval_out, tmp_path, capfd):
  data = M.read(eval_out)
  assert data["predictions"] == {"vg": str(eval_out.parent / "vg.jsonl"),
                                 "roc": str(eval_out.parent / "roc.jsonl")}
  assert set(data["outputs"]) == {"report", "plots"} and "report.json" in data["outputs"]["report"]
  code, out, err = run_audit(capfd, eval_out)
  assert code == 0 and not err, err
  assert "note: report.json: 2 task(s) scored again" in out
  assert out.strip().splitlines()[-1].endswith("everything matches (exit 0)")

  copy = tmp_path / "out"
  shutil.copytree(eval_out, copy)
  recorded = json.loads((copy / "report.json").read_text())["tasks"]["vg"]["bird"]["ct"]
  edit_json(copy / "report.json", lambda r: r["tasks"]["vg"]["bird"].update(ct=recorded + 1))
  found = audit(copy)
  assert found.exit_code == 8
  assert f"report.json tasks.vg.bird.ct: recorded {recorded + 1!r}, rescored {recorded!r}" \
      in found.mismatches
  assert [m for m in found.mismatches if "content changed" in m] == [
      m for m in found.mismatches if m.startswith("output report.json: content changed")]
  assert len(found.mismatches) == 2


def test_a_changed_package_version_is_named_and_only_the_environment_differs(eval_out, tmp_path,
                                                                             capfd):
  copy = tmp_path / "out"
  shutil.copytree(eval_out, copy)
  edit_json(copy / M.MANIFEST, lambda m: m["segments"][-1]["environment"]["packages"].update(
      numpy="1.0.0"))
  code, out, _ = run_audit(capfd, copy)
  assert code == 9
  assert f"environment: packages.numpy: '1.0.0' -> '{np.__version__}'" in out.splitlines()
  assert not [line for line in out.splitlines() if line.startswith("mismatch")]


# ---- datagen: every output hashed again --------------------------------------------------------

def test_a_datagen_rerun_appends_a_segment_and_changed_outputs_are_named(tmp_path):
  from datagen.config import GenConfig
  from datagen.run import generate

  out = tmp_path / "data"
  cfg = GenConfig(out=str(out), source="phantom", num_images=8, image_size=32, chunk_size=4,
                  workers=1, progress=False)
  generate(cfg)
  generate(cfg)  # a rerun: nothing left to generate
  data = M.read(out)
  assert [s["chunks_generated"] for s in data["segments"]] == [{"meta": 2, "text": 2},
                                                                {"meta": 0, "text": 0}]
  assert [s["outcome"] for s in data["segments"]] == ["done", "done"]
  assert set(data["outputs"]) == {"train", "test", "medgrit", "images", "summary"}
  assert data["segments"][-1]["environment"]["devices"] is None  # datagen does not use JAX
  assert audit(out).exit_code == 0
  shard = sorted((out / "train").glob("*.array_record"))[0]
  (out / "medgrit" / "train.json").unlink()
  with tampered(shard):
    found = audit(out)
  assert found.exit_code == 8 and len(found.mismatches) == 2
  assert "output medgrit/train.json: missing" in found.mismatches
  assert any(m.startswith(f"output train/{shard.name}: content changed (sha256 ")
             for m in found.mismatches)


# ---- manifests that cannot be audited ----------------------------------------------------------

def test_manifests_that_cannot_be_audited_are_refused_in_one_line(tmp_path, capfd):
  run = tmp_path / "run"
  run.mkdir()
  good = {"format": M.FORMAT, "version": M.VERSION, "kind": "eval", "inputs": {},
          "outputs": {}, "segments": []}
  cases = [(None, "manifest.json: no manifest"),
           (json.dumps(good)[:40], "not valid JSON (line 1, column"),
           (json.dumps({**good, "format": "other-tool"}), "not a bird_jax manifest (format "
                                                         "'other-tool'"),
           (json.dumps({**good, "version": M.VERSION + 1}), f"manifest version {M.VERSION + 1} "
                                                           "is newer than this bird_jax reads"),
           (json.dumps({**good, "kind": "plan"}), "kind 'plan' is not one of")]
  for text, said in cases:
    if text is not None:
      (run / M.MANIFEST).write_text(text)
    code, _, err = run_audit(capfd, run)
    assert code == 2, (said, err)
    assert err.count("\n") == 1 and err.startswith(f"{PROG}: error: {run / M.MANIFEST}: "), err
    assert said in err, (said, err)


# ---- train: hashes, a replay, the lock ---------------------------------------------------------

CHILD = textwrap.dedent("""
    import json, sys
    from bird_jax.audit.__main__ import main
    from bird_jax.train.config import load_config_file
    from bird_jax.train.loop import train

    c = load_config_file("configs/demo.py")
    c.update_from_flattened_dict(json.loads(sys.argv[1]))
    print("trained to", train(c).step, flush=True)
    sys.exit(main([c.train.workdir, "--replay", "2", "--replay-dir", sys.argv[2]]))
""")


@pytest.mark.e2e
def test_a_training_run_replays_bitwise_and_changed_inputs_and_checkpoints_are_named(
    shards, tmp_path, capfd):
  """Trains in a child process (one device, the fault suite's compilation cache) to step 4 and
  there audits the run with --replay 2 (a resumed copy: its manifest gains a segment); then
  audits the run from here."""
  from bird_jax.train.workdir import WorkdirLock
  from test_faults_train import COMPILE_CACHE, RUN

  data = tmp_path / "shards"
  shutil.copytree(shards, data)  # the session's shards stay untouched
  workdir = tmp_path / "run"
  settings = {**RUN, "data.shards": str(data), "train.workdir": str(workdir),
              "train.tensorboard": False, "train.stop_step": 4}  # the schedule of RUN's 10
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", **COMPILE_CACHE}
  proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(settings), tmp_path / "replay"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "note: replay: steps 2 -> 4, metrics of 2 logged step(s) compared" in proc.stdout
  assert "parameter(s) at step 4 compared, all bitwise equal" in proc.stdout
  assert proc.stdout.strip().splitlines()[-1].endswith("everything matches (exit 0)")

  recorded, replayed = M.read(workdir), M.read(tmp_path / "replay")
  assert [(s["steps"], s["outcome"]) for s in recorded["segments"]] == [([0, 4], "stop_step")]
  assert [s["steps"] for s in replayed["segments"]] == [[0, 4], [2, 4]]  # resumed from 2
  assert replayed["segments"][1]["samples"][1] == recorded["segments"][0]["samples"][1] > 0
  assert set(recorded["outputs"]) == {"checkpoints/2", "checkpoints/4", "run"}
  assert sorted(recorded["inputs"]["data"]) == sorted(str(p) for p in data.glob("*"))

  found = audit(workdir)  # here: 8 devices, other XLA_FLAGS
  assert found.exit_code == 9 and not found.mismatches
  assert "devices.count: 1 -> 8" in found.environment
  shard = sorted(data.glob("*.array_record"))[0]
  with tampered(shard):
    found = audit(workdir)
  assert found.exit_code == 8 and len(found.mismatches) == 1
  assert found.mismatches[0].startswith(f"input {shard}: content changed")
  params = max((workdir / "checkpoints" / "4" / "params").rglob("*"),
               key=lambda p: p.stat().st_size)  # the parameters' data file
  with tampered(params):
    found = audit(workdir)
  key = params.relative_to(workdir).as_posix()
  assert [m.split(":")[0] for m in found.mismatches] == [f"output {key}"]

  with pytest.raises(BadInput, match=r"--replay 3: no two recorded checkpoints .* \(steps "
                                     r"\[2, 4\]\); K can be one of \[2\]"):
    audit(workdir, replay=3)
  with WorkdirLock(workdir):  # a trainer holds it
    code, _, err = run_audit(capfd, workdir)
  assert code == 2 and "a training run is writing it (pid" in err and err.count("\n") == 1
