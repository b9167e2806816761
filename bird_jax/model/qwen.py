"""Qwen-7B (v1) decoder: RMSNorm, fused qkv with bias, rotate-half RoPE, SwiGLU, untied head.

Module names mirror the HF checkpoint (`transformer.wte`, `transformer.h.{i}`, `ln_f`,
`lm_head`). Inference extras of the reference (dynamic NTK RoPE scaling and logn attention
scaling) act only beyond `seq_length` tokens and never in training.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from bird_jax.config import LLMConfig, QwenVLConfig
from bird_jax.model import layers as L
from bird_jax.sharding import constrain
from bird_jax.xla_cpu import converts_16bit

LOGIT_CHUNK = 8192  # lm_head columns per product where a 16-bit lm_head is converted

Array = jax.Array


# ---- rotary embedding ------------------------------------------------------------------------

def ntk_alpha(lengths: Array, seq_length: int) -> Array:
  """Qwen's dynamic NTK factor: max(2^ceil(log2(L / seq_length) + 1) - 1, 1), per row."""
  ctx = jnp.log2(lengths.astype(jnp.float32) / seq_length) + 1
  return jnp.maximum(2.0 ** jnp.ceil(ctx) - 1, 1.0)


def rope_tables(positions: Array, head_dim: int, base: float,
                alpha: Array | None = None) -> tuple[Array, Array]:
  """cos, sin [B, L, 1, head_dim] in fp32; base' = base * alpha^(d / (d - 2)) per row."""
  base = jnp.full((positions.shape[0], 1), base, jnp.float32)
  if alpha is not None:
    base = base * alpha.astype(jnp.float32)[:, None] ** (head_dim / (head_dim - 2))
  inv_freq = 1.0 / base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  freqs = positions.astype(jnp.float32)[:, :, None] * inv_freq[:, None, :]
  emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
  return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
  """GPT-NeoX rotate-half on all head dims, computed in fp32."""
  x32 = x.astype(jnp.float32)
  x1, x2 = jnp.split(x32, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (x32 * cos + rotated * sin).astype(x.dtype)


def logn_scale(positions: Array, seq_length: int) -> Array:
  """Qwen's logn attention: q *= log_{seq_length}(p) for 1-based positions p > seq_length."""
  p = positions.astype(jnp.float32) + 1
  return jnp.where(p > seq_length, jnp.log(p) / jnp.log(float(seq_length)), 1.0)


class KVCache(NamedTuple):
  """Keys/values of every layer for autoregressive decoding.

  k, v: [layers, B, heads, S, head_dim] (heads-major, the layout the attention products read);
  index: next write position (shared by all rows: batches are left-padded); valid: [B, S]
  which cached positions hold real tokens.
  """

  k: Array
  v: Array
  index: Array
  valid: Array

  @classmethod
  def empty(cls, c: LLMConfig, batch: int, length: int, dtype) -> "KVCache":
    shape = (c.layers, batch, c.heads, length, c.head_dim)
    empty = (jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((), jnp.int32),
             jnp.zeros((batch, length), bool))
    # inside a jitted program these are constants: the barrier keeps XLA from folding the
    # attention over an empty cache at compile time (seconds for nothing)
    return cls(*jax.lax.optimization_barrier(empty))


# ---- layers --------------------------------------------------------------------------------

class QwenAttention(nnx.Module):
  def __init__(self, c: LLMConfig, *, attention_impl: str | None, **kw):
    h, d = c.heads, c.head_dim
    self.c_attn = L.Linear((c.hidden,), (3, h, d), ("embed", "qkv", "heads", "kv"), bias=True, **kw)
    self.c_proj = L.Linear((h, d), (c.hidden,), ("heads", "kv", "embed"), bias=False, **kw)
    self.impl = attention_impl

  def __call__(self, x: Array, cos: Array, sin: Array, logn: Array | None, mask: Array | None,
               kv: tuple[Array, Array] | None = None):
    """kv: this layer's cache (k, v) [B, heads, S, head_dim]; attention then runs over the
    cached keys/values and the new ones, `mask` being the pair (cache_mask [B, 1, L, S],
    new_mask [B, 1, L, L]). Returns the output and the new keys/values (post-RoPE)
    [B, heads, L, head_dim], which the caller writes into the cache once."""
    qkv = self.c_attn(x)  # [B, L, 3, heads, head_dim], blocked q|k|v
    q, k, v = apply_rope(qkv[:, :, 0], cos, sin), apply_rope(qkv[:, :, 1], cos, sin), qkv[:, :, 2]
    if logn is not None:
      q = q * logn[:, :, None, None].astype(q.dtype)
    if kv is None:
      out = L.attention(q, k, v, mask=mask, is_causal=mask is None, implementation=self.impl)
      return self.c_proj(out), None
    out = L.cached_attention(q, k, v, kv[0], kv[1], *mask)
    return self.c_proj(out), (k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3))


class QwenMLP(nnx.Module):
  """c_proj(w1(x) * silu(w2(x))): SiLU on the w2 branch (w2 = gate, w1 = up)."""

  def __init__(self, c: LLMConfig, **kw):
    self.w1 = L.Linear((c.hidden,), (c.mlp_dim,), ("embed", "mlp"), bias=False, **kw)
    self.w2 = L.Linear((c.hidden,), (c.mlp_dim,), ("embed", "mlp"), bias=False, **kw)
    self.c_proj = L.Linear((c.mlp_dim,), (c.hidden,), ("mlp", "embed"), bias=False, **kw)

  def __call__(self, x: Array) -> Array:
    return self.c_proj(self.w1(x) * jax.nn.silu(self.w2(x)))


class QwenBlock(nnx.Module):
  def __init__(self, c: LLMConfig, *, attention_impl: str | None, **kw):
    self.ln_1 = L.RMSNorm(c.hidden, c.rms_eps, **kw)
    self.attn = QwenAttention(c, attention_impl=attention_impl, **kw)
    self.ln_2 = L.RMSNorm(c.hidden, c.rms_eps, **kw)
    self.mlp = QwenMLP(c, **kw)

  def __call__(self, x: Array, cos, sin, logn, mask, kv=None):
    a, kv = self.attn(self.ln_1(x), cos, sin, logn, mask, kv)
    x = x + a
    return x + self.mlp(self.ln_2(x)), kv


class QwenLM(nnx.Module):
  """wte -> blocks -> ln_f -> lm_head. Split into embed / decode / logits so that the
  multimodal model can splice image features between embedding and decoding."""

  def __init__(self, cfg: QwenVLConfig, *, rngs: nnx.Rngs):
    c = cfg.llm
    kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
    self.wte = L.param(rngs.params(), L.normal(0.02), (c.vocab_size, c.hidden),
                       ("vocab", None), kw["param_dtype"])
    self.h = L.stack(lambda r: QwenBlock(c, attention_impl=cfg.attention_impl, **{**kw, "rngs": r}),
                     c.layers, rngs)
    self.ln_f = L.RMSNorm(c.hidden, c.rms_eps, **kw)
    self.lm_head = L.param(rngs.params(), L.normal(0.02), (c.hidden, c.vocab_size),
                           (None, "vocab"), kw["param_dtype"])
    self.cfg, self.dtype, self.remat = c, kw["dtype"], cfg.remat

  def embed(self, tokens: Array) -> Array:
    h = jnp.take(self.wte[...], tokens, axis=0).astype(self.dtype)  # vocab-parallel table
    return constrain(h, ("batch", "length", "act_embed"))

  def decode(self, h: Array, *, positions: Array | None = None,
             segment_ids: Array | None = None, train: bool = False,
             ntk_lengths: Array | None = None, cache: KVCache | None = None):
    """Blocks + ln_f on embeddings h [B, L, D]; returns h, or (h, cache) when a cache is given.

    positions: [B, L] (default 0..L-1). segment_ids: [B, L], tokens attend only within their
    segment (causally); None = one causal sequence per row; with a cache, segment id 0 marks
    padding that later tokens never attend to. Outside training, dynamic NTK uses
    `ntk_lengths` [B] (default: non-padding tokens per row) and logn scaling uses positions.
    """
    c = self.cfg
    b, n = h.shape[:2]
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
    mask = None
    causal = jnp.tril(jnp.ones((n, n), bool))
    if cache is not None:  # (cached keys, new keys): the cache is written after the layers
      new_valid = jnp.ones((b, n), bool) if segment_ids is None else segment_ids > 0
      valid = jax.lax.dynamic_update_slice(cache.valid, new_valid, (0, cache.index))
      mask = (cache.valid[:, None, None, :], (causal[None] & new_valid[:, None, :])[:, None])
    elif segment_ids is not None:
      mask = ((segment_ids[:, :, None] == segment_ids[:, None, :]) & causal)[:, None]
    alpha = logn = None
    if not train and c.use_dynamic_ntk:
      if ntk_lengths is None:  # decoding passes the prompt lengths, as the reference does
        ntk_lengths = (valid.sum(-1) if cache is not None else jnp.full((b,), n)
                       if segment_ids is None else (segment_ids > 0).sum(-1))
      alpha = ntk_alpha(ntk_lengths, c.seq_length)
    if not train and c.use_logn_attn:
      logn = logn_scale(positions, c.seq_length)
    cos, sin = rope_tables(positions, c.head_dim, c.rope_base, alpha)
    if cache is None:
      h = L.scan(self.h, h, lambda block, x: block(x, cos, sin, logn, mask)[0], self.remat)
      return self.ln_f(h)
    h, (k, v) = L.scan(self.h, h, lambda block, x, kv: block(x, cos, sin, logn, mask, kv),
                       self.remat, xs=(cache.k, cache.v))
    # the loop reads the cache and returns only the new keys/values: one in-place write per
    # step, no cache copies
    at = (0, 0, 0, cache.index, 0)
    k = jax.lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype), at)
    v = jax.lax.dynamic_update_slice(cache.v, v.astype(cache.v.dtype), at)
    return self.ln_f(h), KVCache(k, v, cache.index + n, valid)

  def logits(self, h: Array) -> Array:
    """fp32 logits [B, L, vocab]. Where the product converts a 16-bit lm_head to float32
    (XLA:CPU, bird_jax/xla_cpu.py) it runs over LOGIT_CHUNK columns at a time, so that only
    one chunk is converted at once (2.5 GB for the whole 7B lm_head)."""
    w = self.lm_head[...]
    product = lambda w: jnp.einsum("bld,dv->blv", h, w.astype(self.dtype),
                                   preferred_element_type=jnp.float32)
    vocab = w.shape[1]
    if not converts_16bit(w.dtype) or vocab <= LOGIT_CHUNK:
      return constrain(product(w), ("act_batch_data", "length", "act_vocab"))
    starts = [min(j, vocab - LOGIT_CHUNK) for j in range(0, vocab, LOGIT_CHUNK)]

    def chunk(j: Array, out: Array) -> Array:
      start = jnp.asarray(starts)[j]  # the last chunk ends at the vocab's end (overlapping)
      part = product(jax.lax.dynamic_slice_in_dim(w, start, LOGIT_CHUNK, axis=1))
      return jax.lax.dynamic_update_slice_in_dim(out, part, start, axis=2)

    out = jnp.zeros(h.shape[:2] + (vocab,), jnp.float32)
    out = jax.lax.fori_loop(0, len(starts), chunk, out)
    return constrain(out, ("act_batch_data", "length", "act_vocab"))

  def __call__(self, tokens: Array, **kw) -> Array:
    return self.logits(self.decode(self.embed(tokens), **kw))
