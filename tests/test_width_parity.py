"""bench/width_parity.py: its config keeps the release's widths, the PyTorch reference holds
float32 weights without copies, and its whole run (weights shared with the reference, handed over
to the JAX model, the three checks) holds at a tiny width."""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
from pathlib import Path

import numpy as np
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
def test_the_reference_shares_float32_weights_and_copies_others():
  import torch

  from bird_jax_testing.reference import QwenVLReference, random_hf_weights

  cfg = width_parity.width_config(1, 1, hidden=256, vocab=1024, vit_width=104, image_size=112)
  weights = random_hf_weights(cfg)
  ref = width_parity.torch_reference(cfg, weights)  # raises on a copied parameter
  assert not width_parity.copied_parameters(ref, weights)
  assert not any(t.is_meta for t in itertools.chain(ref.parameters(), ref.buffers()))
  half = {k: v.astype(np.float16) for k, v in weights.items()}
  ref16 = QwenVLReference(cfg, half)
  assert {p.dtype for p in ref16.parameters()} == {torch.float32}
  assert len(width_parity.copied_parameters(ref16, half)) == len(list(ref16.parameters()))
  assert torch.equal(ref16.llm.lm_head.weight, torch.from_numpy(
      half["lm_head.weight"].astype(np.float32)))
  with pytest.raises(RuntimeError, match="the reference copied"):
    width_parity.torch_reference(cfg, half)


@pytest.mark.heavy
def test_parity_at_a_tiny_width():
  cfg = width_parity.width_config(1, 1, hidden=256, vocab=1024, vit_width=104, image_size=112)
  r = width_parity.run_parity(cfg, new_tokens=4, log=lambda line: None)
  assert r["bound"] == MODEL_PARITY
  assert r["logits"] <= MODEL_PARITY and r["features"] <= MODEL_PARITY
  assert r["tokens_equal"] and len(r["tokens"]) == 4
  assert width_parity.passed(r)
