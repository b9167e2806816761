"""QwenVL: the vision tower's features overwrite the token embeddings inside image spans.

A span is `<img>` + n_queries ids + `</img>` (the ids between the tags are ignored: the chat
layer writes <imgpad>). images: [B, M, S, S, 3] normalised NHWC pixels; the k-th span of
row b (in token order) takes images[b, k]. Rows may have fewer spans than M (or none): the
unused image slots are computed and ignored.

    model = QwenVL(get_preset("tiny"), rngs=nnx.Rngs(0))
    logits = model(tokens, images)                      # [B, L, vocab] fp32
    logits = model(tokens, images, attention_mask=m)    # a padded batch (left or right)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bird_jax.config import QwenVLConfig
from bird_jax.model.qwen import QwenLM
from bird_jax.model.vision import VisionTower

Array = jax.Array


class QwenVL(nnx.Module):
  def __init__(self, cfg: QwenVLConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.visual = VisionTower(cfg, rngs=rngs)
    self.llm = QwenLM(cfg, rngs=rngs)
    self.cfg = cfg

  def __call__(self, tokens: Array, images: Array | None = None, *,
               attention_mask: Array | None = None, num_images: Array | None = None,
               **decode_kw: Any):
    """Logits [B, L, vocab] (fp32), or (logits, cache) when decode_kw has a `cache`.

    attention_mask [B, L] (1 = token, 0 = padding, left or right): padding is never attended
    and the tokens of each row are at positions 0..n-1 (what a row alone would give).
    decode_kw: positions, segment_ids, train, ntk_lengths, cache (see `QwenLM.decode`).
    num_images [B] (optional) is checked against the image spans."""
    out = self.hidden(tokens, images, attention_mask=attention_mask, num_images=num_images,
                      **decode_kw)
    if isinstance(out, tuple):
      return self.llm.logits(out[0]), out[1]
    return self.llm.logits(out)

  def hidden(self, tokens: Array, images: Array | None = None, *,
             attention_mask: Array | None = None, num_images: Array | None = None,
             **decode_kw: Any):
    """Final hidden states [B, L, hidden] (after ln_f), or (hidden, cache)."""
    check_inputs(self.cfg, tokens, images, num_images)
    if attention_mask is not None:
      if "segment_ids" in decode_kw or "positions" in decode_kw:
        raise ValueError("give attention_mask or segment_ids/positions, not both")
      decode_kw.update(mask_layout(attention_mask))
    h = self.llm.embed(tokens)
    if images is not None:
      h = self.splice(h, tokens, images)
    return self.llm.decode(h, **decode_kw)

  def encode_images(self, images: Array) -> Array:
    """[B, M, S, S, 3] -> [B, M, n_queries, hidden]."""
    b, m = images.shape[:2]
    feats = self.visual(images.reshape((b * m,) + images.shape[2:]))
    return feats.reshape((b, m) + feats.shape[1:])

  def splice(self, h: Array, tokens: Array, images: Array) -> Array:
    feats = self.encode_images(images)
    return splice_image_features(h, tokens, feats, self.cfg.image_start_id)


def mask_layout(attention_mask: Array) -> dict[str, Array]:
  """segment_ids and positions [B, L] of a padded batch: padding is segment 0 (never
  attended), each row's tokens are segment 1 at positions 0..n-1."""
  mask = jnp.asarray(attention_mask).astype(jnp.int32)
  return {"segment_ids": mask, "positions": jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)}


def splice_image_features(h: Array, tokens: Array, feats: Array, start_id: int) -> Array:
  """Overwrite h[b, s+1 : s+1+Q] with feats[b, k] for the k-th `<img>` at position s of row b.

  Static shapes, no host sync: each position finds its last `<img>` with a running max.
  """
  b, n = tokens.shape
  m, q = feats.shape[1], feats.shape[2]
  pos = jnp.arange(n, dtype=jnp.int32)
  is_start = tokens == start_id
  last_start = jax.lax.cummax(jnp.where(is_start, pos, -1), axis=1)
  k = jnp.cumsum(is_start, axis=1, dtype=jnp.int32) - 1  # which image
  j = pos - last_start - 1  # which query within it
  inside = (last_start >= 0) & (j >= 0) & (j < q) & (k < m)
  src = jnp.clip(k, 0, m - 1) * q + jnp.clip(j, 0, q - 1)
  flat = feats.reshape(b, m * q, feats.shape[-1]).astype(h.dtype)
  gathered = jnp.take_along_axis(flat, src[:, :, None], axis=1)
  return jnp.where(inside[:, :, None], gathered, h)


def check_inputs(cfg: QwenVLConfig, tokens: Any, images: Any, num_images: Any = None) -> None:
  """Clear errors for bad model inputs. Shapes are checked always (at trace time); image spans
  are checked when the tokens are concrete (i.e. outside jit)."""
  if tokens.ndim != 2:
    raise ValueError(f"tokens must be [batch, length], got shape {tokens.shape}")
  b, n = tokens.shape
  if n > cfg.llm.max_position_embeddings:
    raise ValueError(f"sequence length {n} exceeds the model maximum "
                     f"max_position_embeddings={cfg.llm.max_position_embeddings}")
  s = cfg.vision.image_size
  if images is not None:
    shape = tuple(images.shape)
    if len(shape) != 5 or shape[0] != b or shape[2:] != (s, s, 3):
      hint = " (channels-first? expected NHWC)" if len(shape) == 5 and shape[2] == 3 else ""
      raise ValueError(f"images must be [batch={b}, max_images, {s}, {s}, 3] (normalised RGB, "
                       f"NHWC, image_size={s}), got {shape}{hint}")
  if isinstance(tokens, jax.core.Tracer):
    return
  counts = check_image_spans(np.asarray(tokens), cfg)
  given = 0 if images is None else images.shape[1]
  for row, count in enumerate(counts):
    if count > given:
      raise ValueError(f"row {row} has {count} image span(s) but only {given} image slot(s) "
                       f"were given (images.shape[1] = {given})")
  if num_images is not None:
    num = np.broadcast_to(np.asarray(num_images), (b,))
    bad = [(r, int(c), int(g)) for r, (c, g) in enumerate(zip(counts, num)) if c != g]
    if bad:
      raise ValueError("number of image spans differs from the number of images given: " +
                       ", ".join(f"row {r}: {c} span(s) vs {g} image(s)" for r, c, g in bad))


def check_image_spans(tokens: np.ndarray, cfg: QwenVLConfig) -> list[int]:
  """Validates every `<img>`...`</img>` span (paired, not nested, exactly n_queries ids inside)
  and returns the number of spans per row."""
  start, end, q = cfg.image_start_id, cfg.image_end_id, cfg.vision.n_queries
  counts = []
  for row, ids in enumerate(tokens):
    starts, ends = np.flatnonzero(ids == start), np.flatnonzero(ids == end)
    if len(starts) != len(ends):
      raise ValueError(f"row {row}: {len(starts)} <img> vs {len(ends)} </img> tokens "
                       f"(<img> at {starts.tolist()}, </img> at {ends.tolist()})")
    for i, (a, e) in enumerate(zip(starts, ends)):
      if i + 1 < len(starts) and starts[i + 1] < e:
        raise ValueError(f"row {row}: <img> at {starts[i + 1]} opens before </img> at {e} "
                         f"closes the span opened at {a} (nested or overlapping image spans)")
      if e - a - 1 != q:
        raise ValueError(f"row {row}: image span <img> at {a} .. </img> at {e} holds {e - a - 1} "
                         f"ids; the model expects exactly n_queries={q} (an image cut by "
                         f"truncation, or nested/misordered tags)")
    counts.append(len(starts))
  return counts
