"""The device suite's CPU smoke run: every section runs, the JSON holds each one's figures."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parents[1] / "bench" / "device_suite.py"


@pytest.mark.e2e
def test_cpu_smoke_runs_every_section(tmp_path):
  out = tmp_path / "suite.json"
  proc = subprocess.run([sys.executable, str(SUITE), "--cpu-smoke", "--out", str(out)],
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  r = json.loads(out.read_text())["results"]
  assert not [name for name, sec in r.items() if "error" in sec or "skipped" in sec]
  train = r["train"]
  assert train["step_s"] > 0 and 0 < train["mfu"] < 2
  assert train["planner"]["total_gib"] > 0 and train["compiled_estimate_gib"] > 0
  assert r["peak"]["tflops"] > 0 and r["bandwidth"]["gb_per_s"] > 0
  agree = r["forward"]["bf16_vs_fp32"]
  assert agree["top1_agreement"] > 0.5 and agree["max_abs"] < agree["fp32_logit_std"]
  gen = r["generate"]["batch_2"]
  # a tiny model's decode step is within a loaded machine's noise: a figure, not its sign
  assert math.isfinite(gen["decode_step_ms"]) and gen["prefill_fraction_of_peak"] > 0
  assert "| generate | batch_2.tokens_per_s |" in proc.stdout


@pytest.mark.e2e
def test_budget_skips_the_remaining_sections(tmp_path):
  out = tmp_path / "suite.json"
  proc = subprocess.run([sys.executable, str(SUITE), "--cpu-smoke", "--out", str(out),
                         "--budget-s", "0", "--only", "peak", "bandwidth"],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  r = json.loads(out.read_text())["results"]
  assert r["peak"]["skipped"] == "budget" and r["bandwidth"]["skipped"] == "budget"
