"""Parity of the JAX model with independent PyTorch implementations (tiny config, fp32)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from conftest import build_from_hf, forward, image_row
from bird_jax.model import layers
from bird_jax_testing.bounds import BICUBIC_RESIZE, MODEL_PARITY
from bird_jax_testing.reference import QwenVLReference, Visual, mae_sincos


def max_diff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def test_llm_logits_match_transformers_qwen2(tiny_model, torch_reference):
  tokens = np.random.default_rng(1).integers(0, 256, (3, 33)).astype(np.int32)
  ours = forward(tiny_model, tokens)
  ref = torch_reference(tokens)
  assert ours.shape == ref.shape == (3, 33, tiny_model.cfg.llm.vocab_size)
  assert max_diff(ours, ref) <= MODEL_PARITY


@pytest.mark.parametrize("image_size", [56, 112])
def test_visual_features_match_reference(tiny_cfg, hf_weights, image_size):
  """56 px: ViT positions resized 16x16 -> 4x4, resampler grid 4x4 unchanged.
  112 px: ViT positions 16x16 -> 8x8 and resampler positions 4x4 -> 8x8."""
  cfg = tiny_cfg.replace(vision=dataclasses.replace(tiny_cfg.vision, image_size=image_size))
  model = build_from_hf(cfg, hf_weights)
  ref = Visual(cfg.vision)
  prefix = "transformer.visual."
  ref.load_state_dict({k[len(prefix):]: torch.from_numpy(v) for k, v in hf_weights.items()
                       if k.startswith(prefix)})
  pixels = np.random.default_rng(2).standard_normal((2, image_size, image_size, 3)).astype(np.float32)
  ours = nnx.jit(lambda m, x: m(x))(model.visual, pixels)
  with torch.no_grad():
    theirs = ref(torch.from_numpy(pixels).permute(0, 3, 1, 2)).numpy()
  assert ours.shape == (2, cfg.vision.n_queries, cfg.vision.output_dim)
  assert max_diff(ours, theirs) <= MODEL_PARITY


@pytest.mark.parametrize("src,dst", [(16, 32), (16, 4), (16, 8), (4, 8), (16, 7), (3, 16)])
def test_bicubic_resize_matches_torch_interpolate(src, dst):
  grid = np.random.default_rng(3).standard_normal((src * src, 24)).astype(np.float32)
  ours = layers.resize_grid(jnp.asarray(grid), dst)
  t = torch.from_numpy(grid).reshape(1, src, src, -1).permute(0, 3, 1, 2)
  theirs = F.interpolate(t, size=(dst, dst), mode="bicubic", align_corners=False)
  theirs = theirs.permute(0, 2, 3, 1).reshape(dst * dst, -1).numpy()
  assert max_diff(ours, theirs) <= BICUBIC_RESIZE


def test_sincos_matches_spec_formula():
  assert max_diff(layers.sincos_2d(32, 4), mae_sincos(32, 4)) <= 1e-6


def test_whole_model_with_images_matches_reference(tiny_cfg, tiny_model, torch_reference):
  """Images at different positions, two images in one row, a row without images."""
  tokens = np.stack([image_row(tiny_cfg, 64, [2, 30], seed=4), image_row(tiny_cfg, 64, [40], seed=5),
                     image_row(tiny_cfg, 64, [], seed=6)])
  images = np.random.default_rng(7).standard_normal((3, 2, 56, 56, 3)).astype(np.float32)
  ours = forward(tiny_model, tokens, images)
  assert max_diff(ours, torch_reference(tokens, images)) <= MODEL_PARITY


def test_dynamic_ntk_and_logn_match_reference(tiny_cfg, hf_weights):
  """Beyond seq_length (16 here), inference uses base * alpha^(d/(d-2)) with
  alpha = 2^ceil(log2(L/16) + 1) - 1 = 7 for L = 40, and q *= log_16(p) for p > 16."""
  cfg = tiny_cfg.replace(llm=dataclasses.replace(tiny_cfg.llm, seq_length=16))
  model = build_from_hf(cfg, hf_weights)
  tokens = np.random.default_rng(8).integers(0, 256, (2, 40)).astype(np.int32)
  ref = QwenVLReference(cfg, hf_weights, ntk_alpha=7.0, logn_seq_length=16)
  assert max_diff(forward(model, tokens), ref(tokens)) <= MODEL_PARITY
  # training never applies them: equal to the plain reference
  plain = QwenVLReference(cfg, hf_weights)
  assert max_diff(forward(model, tokens, train=True), plain(tokens)) <= MODEL_PARITY
