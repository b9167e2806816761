"""Qwen-VL's visual side: OpenCLIP-style ViT, the resampler ("attn_pool") and `proj`.

pixels [N, S, S, 3] (normalised, NHWC) -> features [N, n_queries, output_dim].
Module names mirror the HF checkpoint (`transformer.visual.*`); layouts are JAX-native
([in, out] kernels, conv HWIO, attention heads split out).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bird_jax.config import QwenVLConfig, VisionConfig
from bird_jax.model import layers as L
from bird_jax.sharding import constrain

Array = jax.Array


class ViTAttention(nnx.Module):
  """Self-attention; in_proj kernel [W, 3, heads, head_dim] (HF interleaves it per head)."""

  def __init__(self, c: VisionConfig, **kw):
    h, d = c.heads, c.head_dim
    self.in_proj = L.Linear((c.width,), (3, h, d), ("embed", "qkv", "heads", "kv"), bias=True, **kw)
    self.out_proj = L.Linear((h, d), (c.width,), ("heads", "kv", "embed"), bias=True, **kw)

  def __call__(self, x: Array) -> Array:
    qkv = self.in_proj(x)  # [B, L, 3, heads, head_dim]
    return self.out_proj(L.attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]))


class ViTMLP(nnx.Module):
  def __init__(self, c: VisionConfig, **kw):
    self.c_fc = L.Linear((c.width,), (c.mlp_dim,), ("embed", "mlp"), bias=True, **kw)
    self.c_proj = L.Linear((c.mlp_dim,), (c.width,), ("mlp", "embed"), bias=True, **kw)

  def __call__(self, x: Array) -> Array:
    return self.c_proj(jax.nn.gelu(self.c_fc(x), approximate=False))  # exact erf GELU


class ViTBlock(nnx.Module):
  """Pre-LN block: x += attn(ln_1(x)); x += mlp(ln_2(x))."""

  def __init__(self, c: VisionConfig, **kw):
    self.ln_1 = L.LayerNorm(c.width, c.ln_eps, **kw)
    self.attn = ViTAttention(c, **kw)
    self.ln_2 = L.LayerNorm(c.width, c.ln_eps, **kw)
    self.mlp = ViTMLP(c, **kw)

  def __call__(self, x: Array) -> Array:
    x = x + self.attn(self.ln_1(x))
    return x + self.mlp(self.ln_2(x))


class ResamplerAttention(nnx.Module):
  """torch.nn.MultiheadAttention: in_proj [E, 3, heads, head_dim] (HF: blocked q;k;v rows)."""

  def __init__(self, c: VisionConfig, **kw):
    e, h, d = c.output_dim, c.resampler_heads, c.resampler_head_dim
    self.in_proj = L.Linear((e,), (3, h, d), ("embed", "qkv", "heads", "kv"), bias=True, **kw)
    self.out_proj = L.Linear((h, d), (e,), ("heads", "kv", "embed"), bias=True, **kw)

  def __call__(self, q: Array, k: Array, v: Array) -> Array:
    q, k, v = (self.in_proj(x, part=i) for i, x in enumerate((q, k, v)))
    return self.out_proj(L.attention(q, k, v))


class Resampler(nnx.Module):
  """n_queries learned queries cross-attend to the ViT tokens once (no residual, no FFN):
  query = ln_q(query) + pos_embed; key = ln_kv(kv_proj(x)) + resize(pos_embed, patch grid);
  value = ln_kv(kv_proj(x))."""

  def __init__(self, c: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    e = c.output_dim
    self.query = L.param(rngs.params(), jax.nn.initializers.truncated_normal(0.02),
                         (c.n_queries, e), ("queries", "embed"), param_dtype)
    self.pos_embed = L.Buffer(jnp.asarray(L.sincos_2d(e, c.query_grid), param_dtype),
                              axes=("queries", "embed"))
    if c.has_kv_proj:  # the reference uses an identity (and stores nothing) when width == E
      self.kv_proj = L.Linear((c.width,), (e,), ("mlp", "embed"), bias=False, **kw)
    self.ln_q = L.LayerNorm(e, c.ln_eps, **kw)
    self.ln_kv = L.LayerNorm(e, c.ln_eps, **kw)
    self.attn = ResamplerAttention(c, **kw)
    self.grid, self.cfg = c.grid, c

  def keep_positions(self, scale: float = 8.0, content: float = 0.02) -> None:
    """Re-initialises the resampler so that query k starts out attending to patch k (needs as
    many queries as patches): the learned queries are zeroed, so a query is its sin-cos
    position; the q and k projections route the same frequencies of both grid axes (sin and
    cos) to every head, times `scale`, so each head's scores peak where the patch's position
    equals the query's; ln_kv's weight starts at `content` so that the patch contents do not
    blur that peak (ln_post renormalises the output). At random initialisation the queries
    pool nearly uniformly and every image token is about the image's mean: what a model
    trained from scratch has to unlearn before it can tell where anything is."""
    c = self.cfg
    if c.n_queries != c.num_patches:
      raise ValueError(f"keep_positions needs one query per patch: {c.n_queries} queries, "
                       f"{c.num_patches} patches")
    e, h = c.output_dim, c.resampler_heads
    f = e // 4  # frequencies per (axis, sin|cos) block of sincos_2d
    if f % h:
      raise ValueError(f"keep_positions: {f} frequencies do not split over {h} heads")
    order = [block * f + k for j in range(h) for k in range(j, f, h) for block in range(4)]
    route = np.zeros((e, e), np.float32)
    route[order, np.arange(e)] = scale  # input dim order[i] -> output (head, dim) i
    route = jnp.asarray(route.reshape(e, h, e // h), self.query.dtype)
    self.query[...] = jnp.zeros_like(self.query[...])
    kernel = self.attn.in_proj.kernel[...]
    self.attn.in_proj.kernel[...] = kernel.at[:, 0].set(route).at[:, 1].set(route)
    self.attn.in_proj.bias[...] = self.attn.in_proj.bias[...].at[:2].set(0)
    self.ln_kv.weight[...] = jnp.full_like(self.ln_kv.weight[...], content)

  def __call__(self, x: Array) -> Array:
    if hasattr(self, "kv_proj"):
      x = self.kv_proj(x)
    kv = self.ln_kv(x)
    pos = self.pos_embed[...]
    q = self.ln_q(self.query[...]) + pos.astype(kv.dtype)
    q = jnp.broadcast_to(q, (x.shape[0],) + q.shape)
    k = kv + L.resize_grid(pos, self.grid).astype(kv.dtype)
    return self.attn(q, k, kv)


class VisionTower(nnx.Module):
  """conv1 (no bias) -> + resized learned positions -> ln_pre -> blocks -> attn_pool -> ln_post
  -> @ proj (stored [in, out], as in HF)."""

  def __init__(self, cfg: QwenVLConfig, *, rngs: nnx.Rngs):
    c = cfg.vision
    param_dtype = jnp.dtype(cfg.vision_param_dtype or cfg.param_dtype)
    kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=param_dtype, rngs=rngs)
    p = c.patch_size
    self.conv1 = L.param(rngs.params(), L.normal((3 * p * p) ** -0.5), (p, p, 3, c.width),
                         ("patch", "patch", "channels", "embed"), param_dtype)
    self.positional_embedding = L.param(rngs.params(), L.normal(c.width ** -0.5),
                                        (c.pos_grid ** 2, c.width), ("positions", "embed"),
                                        param_dtype)
    self.ln_pre = L.LayerNorm(c.width, c.ln_eps, **kw)
    self.blocks = L.stack(lambda r: ViTBlock(c, **{**kw, "rngs": r}), c.layers, rngs)
    self.attn_pool = Resampler(c, **kw)
    self.ln_post = L.LayerNorm(c.output_dim, c.ln_eps, **kw)
    self.proj = L.param(rngs.params(), L.normal(c.output_dim ** -0.5),
                        (c.output_dim, c.output_dim), ("embed", "mlp"), param_dtype)
    self.cfg, self.dtype, self.remat = c, kw["dtype"], cfg.remat

  def sincos_positions(self, scale: float) -> None:
    """Re-initialises the learned positions as the 2-D sin-cos embedding times `scale`: every
    patch then carries its column and row as a smooth code that stays linearly readable in
    the image tokens (at random initialisation the positions are noise, small beside the patch
    contents, and no linear read-out finds a token's slot in them)."""
    c = self.cfg
    pos = L.sincos_2d(c.width, c.pos_grid) * np.float32(scale)
    self.positional_embedding[...] = jnp.asarray(pos, self.positional_embedding[...].dtype)

  def __call__(self, pixels: Array) -> Array:
    c = self.cfg
    n, g, p = pixels.shape[0], c.grid, c.patch_size
    # conv1 with stride = kernel = patch: a matmul over non-overlapping patches, row-major grid
    x = pixels.astype(self.dtype).reshape(n, g, p, g, p, 3)
    x = jnp.einsum("bhpwqc,pqcd->bhwd", x, self.conv1[...].astype(self.dtype))
    x = x.reshape(n, g * g, c.width)
    x = x + L.resize_grid(self.positional_embedding[...], g).astype(self.dtype)
    x = constrain(self.ln_pre(x), ("batch", "length", "act_embed"))
    x = L.scan(self.blocks, x, lambda block, h: block(h), self.remat)
    x = self.ln_post(self.attn_pool(x))
    return jnp.einsum("bqe,ef->bqf", x, self.proj[...].astype(self.dtype))
