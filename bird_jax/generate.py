"""Batched autoregressive decoding with a KV cache: one jitted prefill + `lax.while_loop`.

Prompts are LEFT-padded to a bucketed length (the cache's write index is shared by all rows):
pad tokens get segment id 0 (never attended) and position 0, real tokens positions 0..n-1, so
a prompt decodes to the same tokens alone or inside a padded batch. Images are spliced into
the `<img>` spans at prefill (uint8 pixels are normalised on device). Decoding runs entirely
on device: static shapes, no re-tracing per step, no host round trip per token; the loop
ends when every row has produced a stop id or `max_new_tokens` tokens.

The dynamic-NTK factor is fixed from each prompt's true length at prefill and reused at every
step, as the reference does.

    gen = Generator(model, GenerationConfig.bird(tok, max_new_tokens=80))
    outs = gen.generate([prompt_ids, ...], pixels)  # list of np.int32 arrays, stop id included

Greedy decoding (temperature 0) is the reference's `do_sample=False`; temperature > 0 samples
from softmax(logits / temperature), restricted to the top-p nucleus when top_p < 1.
"""

from __future__ import annotations

import bisect
import dataclasses
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from bird_jax import xla_cpu
from bird_jax.data.image import normalize
from bird_jax.model.qwen import KVCache
from bird_jax.sharding import (batch_shards, constrain, logical_to_spec, named_shardings,
                               param_specs, replication_problem, use_mesh, with_shardings)

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
  """Decoding settings. Only max_new_tokens and greedy vs sampling (with or without top-p)
  shape the compiled program; the rest are runtime values.

  stop_ids: a row ends after emitting one of these (the stop id is part of its output);
  min_new_tokens: stop ids are suppressed while fewer tokens than this have been generated;
  pad_id: fills prompt padding and the output after a row has stopped.
  """

  max_new_tokens: int = 80
  min_new_tokens: int = 1
  stop_ids: tuple[int, ...] = ()
  pad_id: int = 0
  temperature: float = 0.0
  top_p: float = 1.0

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
    if not 0 <= self.min_new_tokens <= self.max_new_tokens:
      raise ValueError(f"min_new_tokens {self.min_new_tokens} must be in [0, max_new_tokens="
                       f"{self.max_new_tokens}]")
    if self.temperature < 0 or not 0 < self.top_p <= 1:
      raise ValueError(f"temperature must be >= 0 and top_p in (0, 1], got "
                       f"temperature={self.temperature} top_p={self.top_p}")
    object.__setattr__(self, "stop_ids", tuple(int(i) for i in self.stop_ids))

  @classmethod
  def bird(cls, tok: Any, max_new_tokens: int = 80, **kw: Any) -> "GenerationConfig":
    """BiRD's inference: greedy, min_new_tokens 1, eos = pad = <|endoftext|>."""
    return cls(max_new_tokens=max_new_tokens, min_new_tokens=1, stop_ids=(tok.endoftext_id,),
               pad_id=tok.pad_id, **kw)

  @classmethod
  def chat(cls, tok: Any, max_new_tokens: int = 80, **kw: Any) -> "GenerationConfig":
    """Chat decoding: stops at <|endoftext|>, <|im_end|> or <|im_start|>."""
    return cls(max_new_tokens=max_new_tokens, min_new_tokens=1,
               stop_ids=(tok.endoftext_id, tok.im_end_id, tok.im_start_id), pad_id=tok.pad_id,
               **kw)


# ---- token selection ---------------------------------------------------------------------------

def nucleus_mask(logits: Array, top_p: float) -> Array:
  """True for the smallest set of highest-probability ids whose mass reaches top_p (the top
  id always kept, also for a top_p too small for float32, which rounds it to 0; ties at the
  boundary kept together)."""
  probs = jax.nn.softmax(logits, axis=-1)
  sorted_probs = jnp.sort(probs, axis=-1)[..., ::-1]
  before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs  # mass strictly above each rank
  first = jnp.arange(sorted_probs.shape[-1]) == 0
  keep_sorted = (before < top_p) | first
  threshold = jnp.min(jnp.where(keep_sorted, sorted_probs, jnp.inf), axis=-1, keepdims=True)
  return probs >= threshold


SEED_MODULUS = 2**32  # a PRNG key's seed width (jax without x64 keeps the low 32 bits)


def sampling_key(seed: int) -> Array:
  """The PRNG key of a seed: any Python int, taken modulo SEED_MODULUS, so that a seed
  outside int64 (which jax.random.key refuses) or a negative one is a seed like any other; a
  seed jax accepted keeps the key it had (without x64, jax keeps the same low 32 bits)."""
  return jax.random.key(int(seed) % SEED_MODULUS)


MAX_STOP_IDS = 8  # stop ids travel as a fixed-size array (unused slots -1): no recompile


@dataclasses.dataclass(frozen=True)
class _Static:
  """The part of a GenerationConfig that shapes the program."""
  max_new_tokens: int
  sample: bool
  nucleus: bool


def _split_config(cfg: GenerationConfig) -> tuple[_Static, dict[str, Array]]:
  if len(cfg.stop_ids) > MAX_STOP_IDS:
    raise ValueError(f"at most {MAX_STOP_IDS} stop ids, got {len(cfg.stop_ids)}")
  stop = np.full((MAX_STOP_IDS,), -1, np.int32)
  stop[:len(cfg.stop_ids)] = cfg.stop_ids
  dyn = dict(stop=stop, min_new=np.int32(cfg.min_new_tokens), pad=np.int32(cfg.pad_id),
             temperature=np.float32(cfg.temperature or 1.0), top_p=np.float32(cfg.top_p))
  sample = cfg.temperature > 0
  return _Static(cfg.max_new_tokens, sample, sample and cfg.top_p < 1), dyn


def select_tokens(logits: Array, step: Array, key: Array, static: _Static,
                  dyn: dict[str, Array]) -> Array:
  """Next ids [B] from fp32 logits [B, V] for the token at generation index `step`."""
  stop = dyn["stop"]
  blocked = (jnp.arange(logits.shape[-1])[:, None] == stop[None]).any(-1)  # [V]
  logits = jnp.where(blocked & (step < dyn["min_new"]), -jnp.inf, logits)
  if not static.sample:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / dyn["temperature"]
  if static.nucleus:
    logits = jnp.where(nucleus_mask(logits, dyn["top_p"]), logits, -jnp.inf)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


# ---- the jitted program ------------------------------------------------------------------------

def left_pad_layout(lengths: Array, width: int) -> tuple[Array, Array]:
  """(segment_ids, positions) [B, width] for rows right-aligned in `width` columns."""
  start = (width - lengths)[:, None]
  col = jnp.arange(width, dtype=jnp.int32)[None]
  return (col >= start).astype(jnp.int32), jnp.maximum(col - start, 0)


def _decode(model: nnx.Module, tokens: Array, lengths: Array, pixels: Array | None, key: Array,
            static: _Static, dyn: dict[str, Array]) -> tuple[Array, Array]:
  """Prefill + decode loop. Returns (out [B, max_new_tokens] int32, n_new [B] int32)."""
  b, width = tokens.shape
  n_new = static.max_new_tokens
  segments, positions = left_pad_layout(lengths, width)
  llm = model.llm
  cache = KVCache.empty(llm.cfg, b, width + n_new, llm.dtype)
  kv_axes = ("layers", "batch", "act_heads", "length", "kv")
  cache = cache._replace(k=constrain(cache.k, kv_axes), v=constrain(cache.v, kv_axes))
  images = None if pixels is None else normalize(pixels).astype(llm.dtype)
  h, cache = model.hidden(tokens, images, positions=positions, segment_ids=segments,
                          cache=cache, ntk_lengths=lengths)
  key, sub = jax.random.split(key)
  first = select_tokens(llm.logits(h[:, -1:])[:, 0], jnp.int32(0), sub, static, dyn)
  stop, pad = dyn["stop"], dyn["pad"]
  out = jnp.full((b, n_new), pad, jnp.int32).at[:, 0].set(first)
  done = jnp.isin(first, stop)
  ones = jnp.ones((b, 1), jnp.int32)

  def cond(state):
    i, _, _, _, done, _ = state
    return (i + 1 < n_new) & ~jnp.all(done)

  def body(state):
    i, cache, last, out, done, key = state
    h, cache = model.hidden(last[:, None], None, positions=(lengths + i)[:, None],
                            segment_ids=ones, cache=cache, ntk_lengths=lengths)
    key, sub = jax.random.split(key)
    nxt = select_tokens(llm.logits(h)[:, 0], i + 1, sub, static, dyn)
    nxt = jnp.where(done, pad, nxt)
    out = jax.lax.dynamic_update_slice(out, nxt[:, None], (0, i + 1))
    return i + 1, cache, nxt, out, done | jnp.isin(nxt, stop), key

  state = (jnp.int32(0), cache, first, out, done, key)
  _, _, _, out, _, _ = jax.lax.while_loop(cond, body, state)
  is_stop = jnp.isin(out, stop)
  n = jnp.where(is_stop.any(-1), jnp.argmax(is_stop, -1) + 1, n_new).astype(jnp.int32)
  return out, n


# ---- prompt bucketing ----------------------------------------------------------------------------

def default_buckets(max_len: int, smallest: int = 32) -> tuple[int, ...]:
  """Prompt widths 32, 48, 64, 96, 128, 192, ... (steps of 1.5x / 1.33x) up to max_len, so
  a test set compiles a handful of times and pads at most ~50%."""
  out, b = [], smallest
  while b < max_len:
    out.append(b)
    b = b * 3 // 2 if (b & (b - 1)) == 0 else b * 4 // 3
  return tuple(out) + (max_len,)


def bucket_width(n: int, buckets: Sequence[int]) -> int:
  i = bisect.bisect_left(buckets, n)
  if i == len(buckets):
    raise ValueError(f"prompt of {n} tokens is longer than the largest bucket {buckets[-1]}")
  return buckets[i]


# ---- the user-facing driver -------------------------------------------------------------------

class Generator:
  """Jitted batched generation for one model (optionally sharded over a mesh).

  mesh: parameters are placed per the logical-axis rules (`bird_jax.sharding`) and the batch
  is split over the ('data', 'fsdp') axes; None = whatever devices the arrays are on. Large
  parameters left replicated on a sharding mesh (a mesh axis that does not divide their
  dimension) are warned about, with training's check and tolerance.
  batch_size: every call is padded to this many rows (one compile per prompt bucket).
  An abstract model (`bird_jax.model.abstract_model`) on an AbstractMesh (or none) builds a
  generator that can only `trace` its program: lowering it needs no device and no memory.
  """

  def __init__(self, model: nnx.Module, cfg: GenerationConfig, *, batch_size: int | None = None,
               buckets: Sequence[int] | None = None, mesh: jax.sharding.Mesh | None = None):
    self.cfg, self.mesh, self.batch_size = cfg, mesh, batch_size
    llm_cfg = model.cfg.llm
    self.buckets = tuple(buckets) if buckets else default_buckets(
        llm_cfg.max_position_embeddings - cfg.max_new_tokens)
    if self.buckets[-1] + cfg.max_new_tokens > llm_cfg.max_position_embeddings:
      raise ValueError(f"largest prompt bucket {self.buckets[-1]} + max_new_tokens "
                       f"{cfg.max_new_tokens} exceeds max_position_embeddings "
                       f"{llm_cfg.max_position_embeddings}")
    self.graphdef, state = nnx.split(model)
    self.batch_spec = P()
    if mesh is not None:
      specs = param_specs(state, mesh)
      problem = replication_problem(state, specs, mesh)
      if problem:
        warnings.warn(f"generation: {problem}", RuntimeWarning, stacklevel=2)
      shardings = named_shardings(specs, mesh)
      abstract = all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(state))
      state = (with_shardings(state, shardings) if abstract else
               jax.device_put(state, shardings))
      self.batch_spec = logical_to_spec(("batch",), mesh_axes=mesh.axis_names)
    self.state, self.image_size = state, model.cfg.vision.image_size
    self.traces = 0  # compiled programs so far (one per distinct input shape)
    self._run = jax.jit(self._program, static_argnames=("static",),
                        compiler_options=xla_cpu.compiler_options(state))

  def _program(self, state, tokens, lengths, pixels, key, dyn, static):
    self.traces += 1  # runs only while tracing
    return _decode(nnx.merge(self.graphdef, state), tokens, lengths, pixels, key, static, dyn)

  @property
  def batch_divisor(self) -> int:
    """Rows must come in multiples of this (the mesh's batch axes)."""
    return 1 if self.mesh is None else batch_shards(self.mesh.shape)

  def _rows(self, ndim: int) -> NamedSharding | None:
    """The sharding of a batch array of rank `ndim`: rows over the mesh's batch axes."""
    if self.mesh is None:
      return None
    return NamedSharding(self.mesh, P(self.batch_spec[0], *([None] * (ndim - 1))))

  def _put(self, x: np.ndarray) -> Array:
    """Host batch -> device array split over the batch axes (every process holds the whole
    batch; each device takes its rows, so this also works across hosts)."""
    if self.mesh is None:
      return jnp.asarray(x)
    return jax.make_array_from_callback(x.shape, self._rows(x.ndim), lambda idx: x[idx])

  def trace(self, rows: int, width: int, images: int = 0,
            cfg: GenerationConfig | None = None) -> jax.stages.Traced:
    """The program `generate` runs for `rows` prompts in a bucket of `width` tokens with
    `images` image slots per prompt (0: text only), traced on abstract inputs (nothing is
    allocated): prefill, then the decoding loop. `.lower(lowering_platforms=("cuda",))` lowers
    it for a platform this host lacks (tests/test_lowering.py)."""
    cfg = cfg or self.cfg
    rows = -(-rows // self.batch_divisor) * self.batch_divisor
    arg = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=self._rows(len(shape)))
    s = self.image_size
    pixels = arg((rows, images, s, s, 3), np.uint8) if images else None
    static, dyn = _split_config(cfg)
    dyn = {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype) for k, v in dyn.items()}
    key = jax.eval_shape(lambda: sampling_key(0))
    with use_mesh(self.mesh):
      return self._run.trace(self.state, arg((rows, width), np.int32), arg((rows,), np.int32),
                             pixels, key, dyn, static=static)

  @staticmethod
  def _fetch(x: Array) -> np.ndarray:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)

  def generate(self, prompts: Sequence[Sequence[int]], pixels: np.ndarray | None = None, *,
               seed: int = 0, cfg: GenerationConfig | None = None) -> list[np.ndarray]:
    """Token ids of each prompt's continuation (up to and including its stop id).

    prompts: token id lists (each with its image spans already expanded); pixels: uint8
    [len(prompts), M, S, S, 3] (the k-th `<img>` span of a prompt takes its k-th image) or None.
    seed: any int (sampling_key); only sampling reads it.
    """
    cfg = cfg or self.cfg
    n = len(prompts)
    if n == 0:
      return []
    lengths = np.asarray([len(p) for p in prompts], np.int32)
    if lengths.min() < 1:
      raise ValueError(f"prompt {int(lengths.argmin())} is empty")
    width = bucket_width(int(lengths.max()), self.buckets)
    rows = self.batch_size or n
    if rows < n:
      raise ValueError(f"{n} prompts exceed the generator's batch_size {rows}")
    rows = -(-rows // self.batch_divisor) * self.batch_divisor
    order = list(range(n)) + [0] * (rows - n)  # filler rows repeat prompt 0, outputs dropped
    tokens = np.full((rows, width), cfg.pad_id, np.int32)
    for r, i in enumerate(order):
      tokens[r, width - lengths[i]:] = prompts[i]
    if pixels is not None:
      pixels = np.asarray(pixels)
      if pixels.dtype != np.uint8 or pixels.ndim != 5 or pixels.shape[0] != n:
        raise ValueError(f"pixels must be uint8 [{n}, images, S, S, 3], got {pixels.dtype} "
                         f"{pixels.shape}")
      pixels = self._put(pixels[order])
    with use_mesh(self.mesh):
      static, dyn = _split_config(cfg)
      out, count = self._run(self.state, self._put(tokens), self._put(lengths[order]), pixels,
                             sampling_key(seed), dyn, static=static)
    out, count = self._fetch(out), self._fetch(count)
    return [out[i, :count[i]] for i in range(n)]
