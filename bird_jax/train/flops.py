"""Analytic training FLOPs per step, for MFU.

Counted (multiply-add = 2 FLOPs), block by block in the order the data flows: the ViT (patch
embedding and blocks), the resampler (`visual.attn_pool`), the projection (`visual.ln_post`,
`visual.proj`), the LLM (embedding, layers, lm_head):
- forward: every matmul that runs, over its tokens (the LLM's per text token, lm_head
  included, the embedding lookup excluded; the vision tower's per image), LoRA adapters
  included, plus attention scores and values (2 x 2 x L^2 x width per layer and row, the full
  square, as computed);
- backward, from which parameters are trained (`step_flops(trained=..., frozen=...)`):
  activation gradients (as many FLOPs as the block's forward matmuls, twice its attention
  scores) through every block that holds a trained parameter or comes after one, and weight
  gradients (as many FLOPs as that weight's forward) for trained weights only. A frozen ViT
  before a trained resampler costs its forward alone; a LoRA run pays forward + activation
  gradients for the frozen base (4 FLOPs per parameter per token, not 6) and 6 for the
  adapters.
  Within a block a weight's share of the block's matmul FLOPs is taken as its share of the
  block's matmul parameters: exact for the ViT, the projection and the LLM (each of their
  matmuls sees every token of the block), approximate for the resampler (its queries and
  patches differ in number). A block differentiated through counts its first matmul's input
  gradient too (needed unless nothing before it is trained).

Inference (forward, and generation's prefill and decode steps) counts the same terms at 2x;
a decode step attends over the whole KV cache, as computed (`bird_jax/generate.py` sizes the
cache to prompt width + max_new_tokens). `decode_step_bytes` is what one decode step must read
from memory (every LLM matmul weight once, plus the KV cache), for a bandwidth roofline.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from bird_jax.config import QwenVLConfig

BLOCKS = ("vit", "resampler", "proj", "llm")  # in the order the data flows
_ADAPTERS = (".lora_a", ".lora_b")


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


def block_of(path: str) -> str:
  """The block (BLOCKS) a dotted parameter path belongs to."""
  if path.startswith("visual.attn_pool."):
    return "resampler"
  if path.startswith(("visual.ln_post.", "visual.proj")):
    return "proj"
  return "vit" if path.startswith("visual.") else "llm"


def is_matmul_weight(path: str) -> bool:
  """A base weight some matmul multiplies by (kernels, the patch embedding, proj, lm_head;
  not biases, norms, embeddings or queries)."""
  return path.endswith(".kernel") or path in ("visual.conv1", "visual.proj", "llm.lm_head")


@dataclasses.dataclass(frozen=True)
class BlockTraining:
  """What of one block is trained. weights: the trained share (0..1) of its matmul weights
  (by parameter count); adapters: its LoRA adapter parameters per matmul weight parameter;
  other: some parameter that is no matmul weight (a norm, bias, embedding, query) trained."""

  weights: float = 0.0
  adapters: float = 0.0
  other: bool = False

  @property
  def any(self) -> bool:
    return self.weights > 0 or self.adapters > 0 or self.other


FULL = BlockTraining(weights=1.0, other=True)


def block_training(trained: Mapping[str, Any], frozen: Mapping[str, Any]
                   ) -> dict[str, BlockTraining]:
  """{block: BlockTraining} from the run's {dotted path: shape} of trained and frozen
  parameters (frozen buffers without a shape are ignored)."""
  def size(shape) -> int:
    return math.prod(getattr(shape, "shape", shape))

  base = {b: 0 for b in BLOCKS}
  done = {b: 0 for b in BLOCKS}
  adapters = {b: 0 for b in BLOCKS}
  other = {b: False for b in BLOCKS}
  for path, shape in {**frozen, **trained}.items():
    b, on = block_of(path), path in trained
    if path.endswith(_ADAPTERS):
      adapters[b] += size(shape) if on else 0
    elif is_matmul_weight(path):
      base[b] += size(shape)
      done[b] += size(shape) if on else 0
    elif on:
      other[b] = True
  return {b: BlockTraining(weights=done[b] / base[b] if base[b] else 0.0,
                           adapters=adapters[b] / base[b] if base[b] else 0.0, other=other[b])
          for b in BLOCKS}


def block_forward(cfg: QwenVLConfig, *, rows: int, length: int, images: int
                  ) -> dict[str, tuple[float, float]]:
  """{block: (forward matmul FLOPs of its base weights, forward attention FLOPs)} of one
  step."""
  m, v = cfg.llm, cfg.vision
  p, q, w, e = v.num_patches, v.n_queries, v.width, v.output_dim
  vit_attn = v.layers * 2 * 2 * p * p * w
  vit, resampler_and_proj = vision_forward_flops(cfg)
  proj = 2 * q * e * e
  resampler_attn = 2 * 2 * q * p * e
  return {
      "vit": (images * (vit - vit_attn), images * vit_attn),
      "resampler": (images * (resampler_and_proj - proj - resampler_attn),
                    images * resampler_attn),
      "proj": (images * proj, 0.0),
      "llm": (2.0 * llm_matmul_params(cfg) * rows * length,
              2.0 * 2 * m.layers * rows * length * length * m.hidden)}


def step_flops(cfg: QwenVLConfig, *, rows: int, length: int, images: int,
               trained: Mapping[str, Any] | None = None, frozen: Mapping[str, Any] | None = None
               ) -> StepFlops:
  """Training FLOPs of one optimizer step over `rows` x `length` tokens and `images` images.

  trained / frozen: {dotted parameter path: shape} of the run's trained and frozen
  parameters (the Layout's trees, flattened); the module docstring says how they shape the
  count. Without them: BiRD's recipe (train/optimizer.py BIRD_FREEZE: the resampler and the
  LLM trained, the rest of the vision tower frozen).
  """
  if trained is None:
    training = {"vit": BlockTraining(), "resampler": FULL, "proj": BlockTraining(), "llm": FULL}
  else:
    training = block_training(trained, frozen or {})
  out = {"vision": 0.0, "llm": 0.0}
  upstream = False  # a trained parameter in this block or an earlier one
  for b, (matmul, attention) in block_forward(cfg, rows=rows, length=length,
                                              images=images).items():
    t = training[b]
    upstream = upstream or t.any
    adapters = matmul * t.adapters  # the adapters' forward (their share of the parameters)
    flops = matmul + adapters + attention  # forward
    if upstream:
      flops += matmul + adapters + 2 * attention  # activation gradients
    flops += matmul * t.weights + adapters  # weight gradients (adapters are always trained)
    out["llm" if b == "llm" else "vision"] += flops
  return StepFlops(llm=out["llm"], vision=out["vision"])


def run_flops(c: Any, model_cfg: QwenVLConfig, layout: Any) -> StepFlops:
  """Analytic FLOPs of one optimizer step of the run config `c`, from the parameters its
  layout (bird_jax/train/state.py) trains and freezes."""
  from bird_jax.train import config as C

  data_cfg = C.data_config(c, validate=False)
  rows = data_cfg.batch_size * int(c.optim.grad_accum)
  return step_flops(model_cfg, rows=rows, length=data_cfg.max_len,
                    images=rows * data_cfg.max_images_per_row,
                    trained=param_shapes(layout.abstract_params),
                    frozen=param_shapes(layout.abstract_frozen))


def param_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """{dotted path: shape} of a parameter tree's array leaves (nnx.State or nested dicts)."""
  from bird_jax.tree_paths import flatten

  return {k: tuple(v.shape) for k, v in flatten(tree).items() if hasattr(v, "shape")}


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
