"""The main job (README command 1) end to end at CI size: datagen -> train -> eval -> table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bird_jax.train.logger import read_metrics

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]


def test_demo_quick_runs_end_to_end_and_the_loss_falls(tmp_path):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  proc = subprocess.run([sys.executable, "-m", "bird_jax.demo", "--quick", "--out", str(tmp_path)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  out = proc.stdout
  assert "BiRD-compatible" in out and "Constant-answer baselines" in out and "wall time" in out
  rows = read_metrics(str(tmp_path / "train"))
  assert rows[-1]["loss"] < rows[0]["loss"] - 0.5
  report = json.loads((tmp_path / "eval" / "report.json").read_text())
  assert set(report["tasks"]) >= {"vg", "roc"}
  for path in ("train/training_curve.png", "eval/gallery/index.html", "eval/report.md"):
    assert (tmp_path / path).exists(), path
  assert list((tmp_path / "eval" / "plots").glob("*.png"))


def test_demo_configs_load_with_known_settings():
  from bird_jax.demo import DEMO_DEFAULTS, demo_settings
  from bird_jax.train.config import load_config_file, model_config

  for name in ("demo.py", "demo_long.py"):
    c = load_config_file(ROOT / "configs" / name)
    model_config(c)  # the preset and overrides are valid
    settings = demo_settings(c, quick=False)
    for stage, values in settings.items():
      assert set(values) <= set(DEMO_DEFAULTS[stage]), (name, stage)
