"""Analytic training FLOPs per step, for MFU.

Counted (multiply-add = 2 FLOPs; backward = 2x forward):
- the LLM: 6 x (matmul parameters, lm_head included, embedding lookup excluded) per token, plus
  attention scores and values 6 x 2 x L^2 x hidden per layer and row (the full square, as
  computed);
- the vision tower per image: forward only (2x) when it is frozen, 6x when trained — ViT
  matmuls over the patch tokens + attention; the resampler (trained in BiRD) and `proj` counted
  6x when trained.

Inference (forward, and generation's prefill and decode steps) counts the same terms at 2x;
a decode step attends over the whole KV cache, as computed (`bird_jax/generate.py` sizes the
cache to prompt width + max_new_tokens). `decode_step_bytes` is what one decode step must read
from memory (every LLM matmul weight once, plus the KV cache), for a bandwidth roofline.
"""

from __future__ import annotations

import dataclasses

from bird_jax.config import QwenVLConfig


@dataclasses.dataclass(frozen=True)
class StepFlops:
  llm: float
  vision: float

  @property
  def total(self) -> float:
    return self.llm + self.vision


def llm_matmul_params(cfg: QwenVLConfig) -> int:
  m = cfg.llm
  per_layer = m.hidden * 3 * m.hidden + m.hidden * m.hidden + 3 * m.hidden * m.mlp_dim
  return m.layers * per_layer + m.hidden * m.vocab_size


def vision_forward_flops(cfg: QwenVLConfig) -> tuple[float, float]:
  """(ViT, resampler + proj) forward FLOPs for one image."""
  v = cfg.vision
  p, q, w, e = v.num_patches, v.n_queries, v.width, v.output_dim
  vit_layer = 2 * p * (w * 3 * w + w * w + 2 * w * v.mlp_dim) + 2 * 2 * p * p * w
  vit = v.layers * vit_layer + 2 * p * 3 * v.patch_size ** 2 * w
  kv = 2 * p * w * e if v.has_kv_proj else 0
  resampler = kv + 2 * q * e * e + 2 * 2 * p * e * e + 2 * 2 * q * p * e + 2 * q * e * e
  return float(vit), float(resampler + 2 * q * e * e)


def step_flops(cfg: QwenVLConfig, *, rows: int, length: int, images: int,
               vit_trained: bool = False, resampler_trained: bool = True) -> StepFlops:
  """Training FLOPs of one optimizer step over `rows` x `length` tokens and `images` images."""
  m = cfg.llm
  llm = 6.0 * llm_matmul_params(cfg) * rows * length
  llm += 6.0 * 2 * m.layers * rows * length * length * m.hidden
  vit, resampler = vision_forward_flops(cfg)
  vision = images * (vit * (3 if vit_trained else 1) + resampler * (3 if resampler_trained else 1))
  return StepFlops(llm=llm, vision=vision)


def mfu(flops_per_step: float, step_seconds: float, n_devices: int, peak_flops: float) -> float:
  """Model FLOPs utilisation (0..1) against `peak_flops` per device."""
  return flops_per_step / (step_seconds * n_devices * peak_flops)


def forward_flops(cfg: QwenVLConfig, *, rows: int, length: int, images: int) -> float:
  """One forward pass over `rows` x `length` tokens and `images` images (logits included)."""
  m = cfg.llm
  llm = 2.0 * llm_matmul_params(cfg) * rows * length + 2.0 * 2 * m.layers * rows * length ** 2 * m.hidden
  vit, resampler = vision_forward_flops(cfg)
  return llm + images * (vit + resampler)


def prefill_flops(cfg: QwenVLConfig, *, rows: int, length: int, images: int = 0) -> float:
  """A generation prefill: the forward pass, logits of the last position only."""
  m = cfg.llm
  return (forward_flops(cfg, rows=rows, length=length, images=images)
          - 2.0 * rows * (length - 1) * m.hidden * m.vocab_size)


def decode_step_flops(cfg: QwenVLConfig, *, rows: int, cache_length: int) -> float:
  """One generated token per row, attending over `cache_length` cached positions."""
  m = cfg.llm
  return 2.0 * llm_matmul_params(cfg) * rows + 2.0 * 2 * m.layers * rows * cache_length * m.hidden


def decode_step_bytes(cfg: QwenVLConfig, *, rows: int, cache_length: int, weight_bytes: int,
                      cache_bytes: int) -> float:
  """Bytes one decode step reads at least: the LLM's matmul weights and the whole KV cache."""
  m = cfg.llm
  kv = 2.0 * m.layers * rows * cache_length * m.heads * m.head_dim
  return llm_matmul_params(cfg) * weight_bytes + kv * cache_bytes
