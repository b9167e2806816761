"""bench/first_gpu.py: every step bounded and recorded, a failed or cut step never stops the
next one, and the tiny run leaves the suite's figures, the probe curve and an exported base in
one folder of seven small files."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "first_gpu.py"


def load_script():
  spec = importlib.util.spec_from_file_location("first_gpu", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  sys.modules["first_gpu"] = module  # its dataclass looks itself up there
  spec.loader.exec_module(module)
  return module


def test_failed_and_cut_steps_are_recorded_and_the_next_steps_run(tmp_path):
  fg = load_script()
  r = fg.Runner(fg.MODES["tiny"], tmp_path, tmp_path / "work", deadline_s=60)
  py = sys.executable
  r.run("fails", [py, "-c", "print('half done'); raise SystemExit(3)"], 30)
  r.run("too_long", [py, "-c", "import time; print('started', flush=True); time.sleep(60)"], 1,
        min_s=0.5)
  r.run("works", [py, "-c", "print('{\"x\": 1}')"], 30)
  r.deadline_s = r.elapsed() + 20  # no time left for another step (grace 20 s)
  r.run("late", [py, "-c", "pass"], 30)
  steps = json.loads((tmp_path / "results.json").read_text())["steps"]
  assert [steps[k]["status"] for k in ("fails", "too_long", "works", "late")] == [
      "failed", "timeout", "ok", "skipped"]
  assert steps["fails"]["rc"] == 3 and steps["too_long"]["bound_s"] == 1
  logs = (tmp_path / "logs.txt").read_text()
  assert "half done" in logs and "started" in logs  # a cut step's output is kept
  summary = (tmp_path / "summary.md").read_text()
  assert "| too_long | timeout |" in summary and "| late | skipped |" in summary


def test_last_json_reads_a_report_after_other_output():
  fg = load_script()
  assert fg.last_json('warning\n{"ok": true}\nTraceback {oops\n') == {"ok": True}
  assert fg.last_json("nothing here") is None


def test_minutes_fit_the_time_left():
  fg = load_script()
  gpu = fg.MODES["gpu"]
  assert fg.fit_minutes(10_000, gpu, (1.0, 1.5)) == (1.0, 1.5)
  m1, m2 = fg.fit_minutes(300, gpu, (1.0, 1.5))
  spare = 300 - 2 * gpu.overhead_s - gpu.final_probe_s - 15
  assert m1 < 1.0 and m2 < 1.5 and abs(60 * (m1 + m2) - spare) < 2
  assert fg.fit_minutes(60, gpu, (1.0, 1.5)) == (0.0, 0.0)


def test_missing_wheels_are_recorded_not_raised(tmp_path, monkeypatch):
  fg = load_script()
  monkeypatch.setattr(fg, "WHEELS", tmp_path / "wheels")
  r = fg.Runner(fg.MODES["tiny"], tmp_path, tmp_path / "work", deadline_s=60)
  assert fg.install(r, "env_install", ["grain"], "missing", 30) is None
  assert r.results["steps"]["env_install"]["status"] == "skipped"
  assert r.results["env"]["missing_lacking"] == ["grain"]


@pytest.mark.e2e
@pytest.mark.slow  # 3-4 minutes on 2 cores: `pytest --slow tests/test_first_gpu.py`
def test_tiny_run_leaves_figures_probe_curve_and_base(tmp_path):
  out, work = tmp_path / "out", tmp_path / "work"
  proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--out", str(out), "--work",
                         str(work)], cwd=ROOT, capture_output=True, text=True, timeout=1800)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  files = sorted(p.name for p in out.iterdir())
  assert files == ["base.tar.gz", "device_suite.json", "logs.txt", "metrics.jsonl",
                   "probe_curve.png", "results.json", "summary.md"]
  res = json.loads((out / "results.json").read_text())
  assert {k: s["status"] for k, s in res["steps"].items() if s["status"] != "ok"} == {}
  assert res["env"]["checks"]["machine"]["ok"]
  suite = json.loads((out / "device_suite.json").read_text())["results"]
  assert suite["train"]["mfu"] > 0 and suite["train"]["planner"]["total_gib"] > 0
  assert suite["forward"]["bf16_vs_fp32"]["top1_agreement"] > 0.5
  assert suite["generate"]["batch_2"]["decode_step_ms"] > 0
  rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
  probes = [x for x in rows if "probe_recall" in x]
  assert {x["phase"] for x in probes} == {1, 2}
  assert any(x.get("final_probe") for x in probes if x["phase"] == 2)  # cut by max_minutes
  assert res["phases"]["phase2"]["last_checkpoint"] >= 1 and res["base"]["phase"] == 2
  with tarfile.open(out / "base.tar.gz") as tar:
    names = set(tar.getnames())
  assert {"base_phase2/model.safetensors", "base_phase2/metrics.jsonl"} <= names
  assert (out / "probe_curve.png").read_bytes()[:4] == b"\x89PNG"
  assert "## Device suite" in (out / "summary.md").read_text()


def test_a_fault_of_the_driver_is_recorded_and_the_run_goes_on(tmp_path):
  fg = load_script()
  r = fg.Runner(fg.MODES["tiny"], tmp_path, tmp_path / "work", deadline_s=60)
  r.log("")
  assert fg.guarded(r, "phase1", lambda: 1 / 0) is None
  assert fg.guarded(r, "phase2", lambda: 2) == 2
  steps = json.loads((tmp_path / "results.json").read_text())["steps"]
  assert steps == {"phase1 (driver)": {"status": "error",
                                       "note": "ZeroDivisionError: division by zero"}}
