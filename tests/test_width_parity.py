"""bench/width_parity.py: its config keeps the release's widths, and its whole run (weights shared
with the PyTorch reference, handed over to the JAX model, the three checks) holds at a tiny
width."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest

from bird_jax.config import get_preset
from bird_jax_testing.bounds import MODEL_PARITY

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("width_parity", ROOT / "bench" / "width_parity.py")
width_parity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(width_parity)


def test_config_is_the_release_with_fewer_layers():
  full = get_preset("qwen_vl_7b")
  cfg = width_parity.width_config()
  assert cfg.llm == dataclasses.replace(full.llm, layers=2)
  assert cfg.vision == dataclasses.replace(full.vision, layers=2)
  assert cfg.dtype == cfg.param_dtype == "float32"
  small = width_parity.width_config(**width_parity.SMALL)
  assert (small.llm.heads, small.llm.mlp_dim, small.vision.heads, small.vision.mlp_dim) == (
      8, 2752, 4, 2048)
  with pytest.raises(ValueError, match="not a positive multiple of the head size 128"):
    width_parity.width_config(hidden=1000)


@pytest.mark.heavy
def test_parity_at_a_tiny_width():
  cfg = width_parity.width_config(1, 1, hidden=256, vocab=1024, vit_width=104, image_size=112)
  r = width_parity.run_parity(cfg, new_tokens=4, log=lambda line: None)
  assert r["bound"] == MODEL_PARITY
  assert r["logits"] <= MODEL_PARITY and r["features"] <= MODEL_PARITY
  assert r["tokens_equal"] and len(r["tokens"]) == 4
  assert width_parity.passed(r)
