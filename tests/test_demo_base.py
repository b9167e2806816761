"""The demo base's pre-training command (quick variant) generates its data, probes after every
checkpoint and exports a folder the conversion reads; the probe asks about one object among
several."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bird_jax.train.logger import read_metrics

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
def test_base_pretraining_quick_probes_every_checkpoint_and_exports(tmp_path):
  from bird_jax.convert import hf_to_jax

  out, export = tmp_path / "run", tmp_path / "export"
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  cmd = [sys.executable, "-m", "bird_jax_demo.base", "--quick", "--out", str(out),
         "--export", str(export)]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  probes = [r for r in read_metrics(str(out / "train")) if "probe_recall" in r]
  assert [r["step"] for r in probes] == [3, 6]
  assert all(0 <= r["probe_centre_error"] <= 1415 for r in probes)
  assert "probe at step 6: R@0.5" in proc.stdout
  for name in ("model.safetensors", "config.json", "run_config.json", "metrics.jsonl",
               "probe_curve.png"):
    assert (export / name).exists(), name
  assert json.loads((export / "run_config.json").read_text())["model"]["preset"] == "demo"
  hf_to_jax(export, tmp_path / "ckpt")  # the export reads as an HF folder


def test_probe_questions_name_one_object_among_several(tmp_path):
  from bird_jax.boxes import bird_extract_boxes
  from bird_jax_demo.base import datagen, probe_samples
  from bird_jax_demo.base_config import get_config

  b = get_config("quick").base
  datagen(b, "probe", tmp_path / "probe")
  picked = probe_samples(tmp_path / "probe", questions=8, min_objects=3)
  assert len(picked) == 8
  for sample, target in picked:
    assert bird_extract_boxes(sample.annotation, fallback=False) == [target]
    assert "<img>" in sample.question
  with pytest.raises(ValueError, match="probe questions, 10000 asked for"):
    probe_samples(tmp_path / "probe", questions=10000, min_objects=3)


def test_config_variants_validate():
  from bird_jax.train.config import data_config, model_config
  from bird_jax_demo.base_config import get_config

  for name in (None, "quick", "gpu"):
    c = get_config(name)
    c.data.shards = "runs/x/data/train_*/train/*.array_record"  # what base.py sets
    data_config(c)
    assert model_config(c).vision.n_queries == 64
  assert get_config("gpu").data.batch_size == 16 * get_config().data.batch_size
  with pytest.raises(ValueError, match="unknown variant 'tpu'"):
    get_config("tpu")
