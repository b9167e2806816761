"""Independent PyTorch reference for Qwen-VL, written from docs/model.md.

It consumes tensors with the HF checkpoint's names and layouts (per-head interleaved ViT
in_proj, blocked resampler in_proj_weight, OIHW conv, Linear [out, in], proj [in, out]).
The LLM is transformers' `Qwen2ForCausalLM` (Qwen v1 == Qwen2 with split q/k/v,
w2 = gate_proj, w1 = up_proj); the visual side uses `nn.MultiheadAttention` and
`F.interpolate(mode="bicubic")`.

The reference holds no copy of float32 weights: its modules are built on the meta device and
their parameters are then the given arrays, wrapped by `torch.from_numpy`.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def hf_shapes(cfg) -> dict[str, tuple[int, ...]]:
  """Every HF tensor name of a Qwen-VL checkpoint with its shape, from docs/model.md."""
  v, m = cfg.vision, cfg.llm
  w, e, d = v.width, v.output_dim, m.hidden
  out = {"transformer.wte.weight": (m.vocab_size, d), "transformer.ln_f.weight": (d,),
         "lm_head.weight": (m.vocab_size, d)}
  for i in range(m.layers):
    p = f"transformer.h.{i}."
    out.update({p + "ln_1.weight": (d,), p + "attn.c_attn.weight": (3 * d, d),
                p + "attn.c_attn.bias": (3 * d,), p + "attn.c_proj.weight": (d, d),
                p + "ln_2.weight": (d,), p + "mlp.w1.weight": (m.mlp_dim, d),
                p + "mlp.w2.weight": (m.mlp_dim, d), p + "mlp.c_proj.weight": (d, m.mlp_dim)})
  V = "transformer.visual."
  out.update({V + "conv1.weight": (w, 3, v.patch_size, v.patch_size),
              V + "positional_embedding": (256, w), V + "ln_pre.weight": (w,),
              V + "ln_pre.bias": (w,)})
  for j in range(v.layers):
    p = f"{V}transformer.resblocks.{j}."
    out.update({p + "ln_1.weight": (w,), p + "ln_1.bias": (w,), p + "ln_2.weight": (w,),
                p + "ln_2.bias": (w,), p + "attn.in_proj.weight": (3 * w, w),
                p + "attn.in_proj.bias": (3 * w,), p + "attn.out_proj.weight": (w, w),
                p + "attn.out_proj.bias": (w,), p + "mlp.c_fc.weight": (v.mlp_dim, w),
                p + "mlp.c_fc.bias": (v.mlp_dim,), p + "mlp.c_proj.weight": (w, v.mlp_dim),
                p + "mlp.c_proj.bias": (w,)})
  A = V + "attn_pool."
  out.update({A + "query": (v.n_queries, e), A + "pos_embed": (v.n_queries, e),
              A + "attn.in_proj_weight": (3 * e, e), A + "attn.in_proj_bias": (3 * e,),
              A + "attn.out_proj.weight": (e, e), A + "attn.out_proj.bias": (e,),
              A + "ln_q.weight": (e,), A + "ln_q.bias": (e,), A + "ln_kv.weight": (e,),
              A + "ln_kv.bias": (e,), V + "ln_post.weight": (e,), V + "ln_post.bias": (e,),
              V + "proj": (e, e)})
  if w != e:
    out[A + "kv_proj.weight"] = (e, w)
  return out


def mae_sincos(dim: int, grid: int) -> np.ndarray:
  """2D sin-cos written element by element from docs/model.md (first half: column index)."""
  out = np.zeros((grid * grid, dim), np.float64)
  quarter = dim // 4
  for r in range(grid):
    for c in range(grid):
      for half, p in ((0, c), (1, r)):
        for k in range(quarter):
          wk = 1.0 / 10000 ** (k / quarter)
          out[r * grid + c, half * dim // 2 + k] = math.sin(p * wk)
          out[r * grid + c, half * dim // 2 + quarter + k] = math.cos(p * wk)
  return out.astype(np.float32)


def random_hf_weights(cfg, seed: int = 0) -> dict[str, np.ndarray]:
  """Random fp32 tensors for every HF name; norms around 1 and non-zero biases so that every
  tensor matters."""
  rng = np.random.default_rng(seed)
  out = {}
  for name, shape in hf_shapes(cfg).items():
    if name.endswith("pos_embed"):
      out[name] = mae_sincos(shape[1], int(round(shape[0] ** 0.5)))
    elif ("ln" in name.split(".")[-2]) and name.endswith("weight"):
      out[name] = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    else:
      fan_in = shape[-1] if len(shape) == 2 else int(np.prod(shape[1:])) if len(shape) > 2 else 50
      scale = 0.5 / math.sqrt(fan_in) if len(shape) > 1 else 0.1
      out[name] = (scale * rng.standard_normal(shape)).astype(np.float32)
  return out


def as_tensor(w) -> torch.Tensor:
  """A float32 CPU tensor on `w`'s own memory when `w` is a native float32 array (or a view of
  one); another dtype (float16, bfloat16, float64, ...), byte order or negative strides give a
  float32 copy of that one tensor (the values a float32 parameter loaded from it would hold)."""
  a = np.asarray(w, np.float32)
  if any(s < 0 for s in a.strides):  # torch.from_numpy takes none
    a = a.copy()
  with warnings.catch_warnings():  # a read-only array stays read-only: nothing here writes it
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    return torch.from_numpy(a)


# ---- visual side -------------------------------------------------------------------------

def get_abs_pos(pos: torch.Tensor, tgt_len: int) -> torch.Tensor:
  src, tgt = int(math.sqrt(pos.shape[0])), int(math.sqrt(tgt_len))
  if src == tgt:
    return pos
  grid = pos.float().reshape(1, src, src, -1).permute(0, 3, 1, 2)
  grid = F.interpolate(grid, size=(tgt, tgt), mode="bicubic", align_corners=False)
  return grid.permute(0, 2, 3, 1).flatten(0, 2).to(pos.dtype)


class VisualAttention(nn.Module):
  def __init__(self, width: int, heads: int):
    super().__init__()
    self.heads, self.hd = heads, width // heads
    self.in_proj = nn.Linear(width, 3 * width)
    self.out_proj = nn.Linear(width, width)

  def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, W]
    b, n, _ = x.shape
    mixed = self.in_proj(x).view(b, n, self.heads, 3 * self.hd)  # per-head interleaved
    q, k, v = (t.permute(0, 2, 1, 3) for t in mixed.split(self.hd, dim=-1))
    probs = torch.softmax((q / math.sqrt(self.hd)) @ k.transpose(-1, -2), dim=-1)
    return self.out_proj((probs @ v).permute(0, 2, 1, 3).reshape(b, n, -1))


class Block(nn.Module):
  def __init__(self, width: int, heads: int, mlp: int):
    super().__init__()
    self.ln_1 = nn.LayerNorm(width, eps=1e-6)
    self.ln_2 = nn.LayerNorm(width, eps=1e-6)
    self.attn = VisualAttention(width, heads)
    self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(width, mlp), gelu=nn.GELU(),
                                         c_proj=nn.Linear(mlp, width)))

  def forward(self, x):
    x = x + self.attn(self.ln_1(x))
    return x + self.mlp(self.ln_2(x))


class Resampler(nn.Module):
  def __init__(self, n_queries: int, embed: int, heads: int, kv_dim: int):
    super().__init__()
    self.query = nn.Parameter(torch.zeros(n_queries, embed))
    self.pos_embed = nn.Parameter(torch.zeros(n_queries, embed), requires_grad=False)
    self.kv_proj = nn.Linear(kv_dim, embed, bias=False) if kv_dim != embed else nn.Identity()
    self.attn = nn.MultiheadAttention(embed, heads)
    self.ln_q = nn.LayerNorm(embed, eps=1e-6)
    self.ln_kv = nn.LayerNorm(embed, eps=1e-6)

  def forward(self, x):  # [B, L, W]
    pos = get_abs_pos(self.pos_embed, x.shape[1])
    x = self.ln_kv(self.kv_proj(x)).permute(1, 0, 2)
    q = self.ln_q(self.query)[:, None].repeat(1, x.shape[1], 1)
    out = self.attn(q + self.pos_embed[:, None], x + pos[:, None], x)[0]
    return out.permute(1, 0, 2)


class Visual(nn.Module):
  def __init__(self, v):
    super().__init__()
    self.conv1 = nn.Conv2d(3, v.width, v.patch_size, v.patch_size, bias=False)
    self.positional_embedding = nn.Parameter(torch.zeros(256, v.width))
    self.ln_pre = nn.LayerNorm(v.width, eps=1e-6)
    self.transformer = nn.Module()
    self.transformer.resblocks = nn.ModuleList(
        Block(v.width, v.heads, v.mlp_dim) for _ in range(v.layers))
    self.attn_pool = Resampler(v.n_queries, v.output_dim, v.output_dim // 128, v.width)
    self.ln_post = nn.LayerNorm(v.output_dim, eps=1e-6)
    self.proj = nn.Parameter(torch.zeros(v.output_dim, v.output_dim))

  def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # [N, 3, S, S]
    x = self.conv1(pixels).flatten(2).permute(0, 2, 1)
    x = x + get_abs_pos(self.positional_embedding, x.shape[1])
    x = self.ln_pre(x)
    for block in self.transformer.resblocks:
      x = block(x)
    return self.ln_post(self.attn_pool(x)) @ self.proj


# ---- whole model ---------------------------------------------------------------------------

class QwenVLReference(nn.Module):
  """Visual (above) + transformers' Qwen2ForCausalLM, image features spliced into the input
  embeddings at the positions strictly between <img> and </img>."""

  def __init__(self, cfg, weights: dict[str, np.ndarray], ntk_alpha: float = 1.0,
               logn_seq_length: int | None = None):
    """ntk_alpha: Qwen's dynamic-NTK factor, applied as RoPE base * alpha^(d / (d - 2)).
    logn_seq_length: scale q by log_n(p) for 1-based positions p > n (Qwen's logn attention;
    a per-position scale commutes with RoPE, so it is applied to q_proj's output)."""
    super().__init__()
    from transformers import Qwen2Config, Qwen2ForCausalLM

    m = cfg.llm
    self.cfg = cfg
    qcfg = Qwen2Config(vocab_size=m.vocab_size, hidden_size=m.hidden, intermediate_size=m.mlp_dim,
                       num_hidden_layers=m.layers, num_attention_heads=m.heads,
                       num_key_value_heads=m.heads, rms_norm_eps=m.rms_eps,
                       rope_parameters={"rope_type": "default", "rope_theta":
                                        m.rope_base * ntk_alpha ** (m.head_dim / (m.head_dim - 2))},
                       max_position_embeddings=32768,
                       tie_word_embeddings=False, use_sliding_window=False,
                       attn_implementation="eager")
    with torch.device("meta"):  # no memory, no random initialisation: the weights come below
      self.visual = Visual(cfg.vision)
      self.llm = Qwen2ForCausalLM(qcfg)
    prefix = "transformer.visual."
    self.visual.load_state_dict({k[len(prefix):]: as_tensor(w) for k, w in weights.items()
                                 if k.startswith(prefix)}, assign=True)
    sd = {"model.embed_tokens.weight": weights["transformer.wte.weight"],
          "model.norm.weight": weights["transformer.ln_f.weight"],
          "lm_head.weight": weights["lm_head.weight"]}
    for i in range(m.layers):
      src, dst = f"transformer.h.{i}.", f"model.layers.{i}."
      wq, wk, wv = np.split(weights[src + "attn.c_attn.weight"], 3, axis=0)  # blocked rows
      bq, bk, bv = np.split(weights[src + "attn.c_attn.bias"], 3)
      sd.update({dst + "input_layernorm.weight": weights[src + "ln_1.weight"],
                 dst + "post_attention_layernorm.weight": weights[src + "ln_2.weight"],
                 dst + "self_attn.q_proj.weight": wq, dst + "self_attn.k_proj.weight": wk,
                 dst + "self_attn.v_proj.weight": wv, dst + "self_attn.q_proj.bias": bq,
                 dst + "self_attn.k_proj.bias": bk, dst + "self_attn.v_proj.bias": bv,
                 dst + "self_attn.o_proj.weight": weights[src + "attn.c_proj.weight"],
                 dst + "mlp.gate_proj.weight": weights[src + "mlp.w2.weight"],
                 dst + "mlp.up_proj.weight": weights[src + "mlp.w1.weight"],
                 dst + "mlp.down_proj.weight": weights[src + "mlp.c_proj.weight"]})
    self.llm.load_state_dict({k: as_tensor(v) for k, v in sd.items()}, assign=True)
    self.llm.eval()
    # buffers outside the state dict (RoPE's inverse frequencies) are computed, on the CPU
    self.llm.model.rotary_emb = type(self.llm.model.rotary_emb)(self.llm.config)
    meta = [n for n, t in itertools.chain(self.named_parameters(), self.named_buffers())
            if t.is_meta]
    if meta:
      raise RuntimeError(f"reference tensors left on the meta device: {meta[:3]}")
    if logn_seq_length:
      def logn_hook(module, args, out):
        scale = [math.log(p, logn_seq_length) if p > logn_seq_length else 1.0
                 for p in range(1, out.shape[1] + 1)]
        return out * torch.tensor(scale, dtype=out.dtype)[None, :, None]

      for layer in self.llm.model.layers:
        layer.self_attn.q_proj.register_forward_hook(logn_hook)

  @torch.no_grad()
  def forward(self, tokens: np.ndarray, images: np.ndarray | None = None) -> np.ndarray:
    """tokens [B, L]; images [B, M, S, S, 3] NHWC (the k-th span of row b takes images[b, k])."""
    ids = torch.from_numpy(np.asarray(tokens, np.int64))
    embeds = self.llm.model.embed_tokens(ids)
    if images is not None:
      start, end = self.cfg.image_start_id, self.cfg.image_end_id
      for b in range(ids.shape[0]):
        starts = (ids[b] == start).nonzero().flatten().tolist()
        ends = (ids[b] == end).nonzero().flatten().tolist()
        for k, (a, e) in enumerate(zip(starts, ends)):
          pix = torch.from_numpy(np.asarray(images[b, k:k + 1])).permute(0, 3, 1, 2)
          embeds[b, a + 1:e] = self.visual(pix.float())[0]
    return self.llm(inputs_embeds=embeds).logits.float().numpy()
