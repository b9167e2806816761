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


def test_demo_quick_runs_from_a_non_editable_install_anywhere(tmp_path):
  """The package as `pip install .` (not editable) installs it, run from another folder: the
  demo needs no file of the repository."""
  site = tmp_path / "site"
  build = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                          "--no-build-isolation", "--target", str(site), str(ROOT)],
                         capture_output=True, text=True, timeout=600)
  assert build.returncode == 0, build.stderr[-3000:]
  assert (site / "bird_jax_demo" / "config.py").exists() and not (site / "configs").exists()
  assert not (site / "bird_jax_testing").exists()  # test-only code is not shipped
  out_dir, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
  elsewhere.mkdir()
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
         "PYTHONPATH": str(site)}
  proc = subprocess.run([sys.executable, "-m", "bird_jax_demo", "--quick", "--out", str(out_dir)],
                        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  out = proc.stdout
  assert "BiRD-compatible" in out and "Constant-answer baselines" in out and "wall time" in out
  rows = read_metrics(str(out_dir / "train"))
  assert rows[-1]["loss"] < rows[0]["loss"] - 0.5
  report = json.loads((out_dir / "eval" / "report.json").read_text())
  assert set(report["tasks"]) >= {"vg", "roc"}
  for path in ("train/training_curve.png", "eval/gallery/index.html", "eval/report.md"):
    assert (out_dir / path).exists(), path
  assert list((out_dir / "eval" / "plots").glob("*.png"))
  assert not list(elsewhere.iterdir())  # nothing written beside the run's --out


def test_demo_configs_load_with_known_settings():
  from bird_jax.train.config import load_config_file, model_config
  from bird_jax_demo.config import get_config
  from bird_jax_demo.run import demo_settings

  default = demo_settings(get_config())
  for name in ("demo.py", "demo_long.py"):
    c = load_config_file(ROOT / "configs" / name)
    model_config(c)  # the preset and overrides are valid
    settings = demo_settings(c)
    for stage, values in settings.items():
      assert set(values) == set(default[stage]), (name, stage)
  assert load_config_file(ROOT / "configs" / "demo.py") == get_config()
  quick = load_config_file(ROOT / "configs" / "demo.py", "quick")
  assert quick.train.steps < 50 and quick.demo.datagen.num_images < 100
  assert quick.model == get_config().model  # the same model: only the sizes of the run shrink
