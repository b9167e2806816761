"""Building blocks shared by the vision tower and the LLM.

Parameters are created with `param(...)`, which records their logical axis names (`axes`
metadata, mapped to mesh axes by `bird_jax.sharding`). Layers of one kind are stacked with
`stack(...)` and run with `scan(...)` (one traced body, compile time flat in depth).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Array = jax.Array
Dtype = Any


class Buffer(nnx.Variable):
  """A stored, never-trained tensor (e.g. the resampler's fixed sin-cos embedding)."""


def param(key: Array, init: Callable, shape: Sequence[int], axes: Sequence[str | None],
          dtype: Dtype, kind: type[nnx.Variable] = nnx.Param) -> nnx.Variable:
  if len(axes) != len(shape):
    raise ValueError(f"axes {axes} do not match shape {shape}")
  return kind(init(key, tuple(shape), dtype), axes=tuple(axes))


normal = jax.nn.initializers.normal
zeros = jax.nn.initializers.zeros
ones = jax.nn.initializers.ones


class LayerNorm(nnx.Module):
  """torch.nn.LayerNorm (weight + bias), statistics in fp32, output in the compute dtype."""

  def __init__(self, dim: int, eps: float, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs):
    self.weight = param(rngs.params(), ones, (dim,), ("norm",), param_dtype)
    self.bias = param(rngs.params(), zeros, (dim,), ("norm",), param_dtype)
    self.eps, self.dtype = eps, dtype

  def __call__(self, x: Array) -> Array:
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    y = y * self.weight[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
    return y.astype(self.dtype)


class RMSNorm(nnx.Module):
  """Qwen's RMSNorm: normalise in fp32, cast back to the input dtype, THEN multiply the weight."""

  def __init__(self, dim: int, eps: float, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs):
    self.weight = param(rngs.params(), ones, (dim,), ("norm",), param_dtype)
    self.eps, self.dtype = eps, dtype

  def __call__(self, x: Array) -> Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), -1, keepdims=True) + self.eps)
    return y.astype(x.dtype).astype(self.dtype) * self.weight[...].astype(self.dtype)


class Linear(nnx.Module):
  """y = x . kernel (+ bias), contracting x's trailing `in_shape` dims; compute-dtype math.

  kernel: in_shape + out_shape (e.g. [embed, 3, heads, head_dim] for a fused qkv projection,
  [heads, head_dim, embed] for an output projection); bias: out_shape.
  """

  def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int],
               axes: Sequence[str | None], *, bias: bool, std: float | None = None,
               dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs):
    in_shape, out_shape = tuple(in_shape), tuple(out_shape)
    std = float(np.prod(in_shape)) ** -0.5 if std is None else std
    self.kernel = param(rngs.params(), normal(std), in_shape + out_shape, axes, param_dtype)
    if bias:
      self.bias = param(rngs.params(), zeros, out_shape, axes[len(in_shape):], param_dtype)
    self.n_in, self.dtype = len(in_shape), dtype

  def __call__(self, x: Array, part: int | None = None) -> Array:
    """x . kernel (+ bias); `part=i`: only output i of the first output axis (e.g. the q, k or
    v of a fused projection, each from its own input)."""
    pick = (lambda w, axis: w) if part is None else (lambda w, axis: jnp.take(w, part, axis))
    x = x.astype(self.dtype)
    y = jnp.tensordot(x, pick(self.kernel[...], self.n_in).astype(self.dtype), self.n_in)
    if hasattr(self, "lora_a"):  # adapters (bird_jax/model/lora.py)
      low = jnp.tensordot(x, self.lora_a[...].astype(self.dtype), self.n_in)
      y = y + self.lora_scale * jnp.tensordot(low, pick(self.lora_b[...], 1).astype(self.dtype), 1)
    if hasattr(self, "bias"):
      y = y + pick(self.bias[...], 0).astype(self.dtype)
    return y


def cudnn_available() -> bool:
  """Whether this jax has its CUDA plugin (cuDNN), which `implementation="cudnn"` needs to
  trace at all, for any platform."""
  try:
    from jax._src.lib import cuda_versions
  except ImportError:
    return False
  return cuda_versions is not None


def attention(q: Array, k: Array, v: Array, *, mask: Array | None = None,
              is_causal: bool = False, implementation: str | None = None) -> Array:
  """Multi-head attention, [B, T, N, H] layout, scale 1/sqrt(H), softmax in fp32.

  implementation: None or "xla" (XLA's, the scores materialised), "cudnn" (cuDNN's fused
  kernel; a mask goes to it as an additive bias). Refused up front where cuDNN is missing."""
  if implementation == "cudnn" and not cudnn_available():
    raise ValueError("attention_impl='cudnn' needs jax's CUDA plugin (cuDNN), which this host "
                     "lacks: set the model config's attention_impl to None or 'xla' (training: "
                     "--config.model.overrides.attention_impl=xla)")
  return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal,
                                      scale=float(q.shape[-1]) ** -0.5,
                                      implementation=implementation)


def cached_attention(q: Array, k: Array, v: Array, k_cache: Array, v_cache: Array,
                     cache_mask: Array, new_mask: Array) -> Array:
  """Attention of new queries over a KV cache plus the new keys/values, without writing them
  into the cache first (no copy of the cache per layer); numerics as `attention`.

  q, k, v: [B, T, N, H] (new tokens); k_cache, v_cache: [B, N, S, H] (heads-major: the score
  and value products read the cache in place); cache_mask: [B, 1, T, S]; new_mask:
  [B, 1, T, T]. Returns [B, T, N, H].
  """
  f32 = jnp.float32
  scale = jnp.asarray(float(q.shape[-1]) ** -0.5, f32)
  big = jnp.asarray(-0.7 * float(jnp.finfo(f32).max), f32)
  old = jnp.einsum("btnh,bnsh->bnts", q, k_cache.astype(q.dtype), preferred_element_type=f32)
  new = jnp.einsum("btnh,bsnh->bnts", q, k, preferred_element_type=f32)
  old = jnp.where(cache_mask, old * scale, big)
  new = jnp.where(new_mask, new * scale, big)
  top = jnp.maximum(old.max(-1, keepdims=True), new.max(-1, keepdims=True))
  old, new = jnp.exp(old - top), jnp.exp(new - top)
  total = old.sum(-1, keepdims=True) + new.sum(-1, keepdims=True)
  old, new = (old / total).astype(v.dtype), (new / total).astype(v.dtype)
  return (jnp.einsum("bnts,bnsh->btnh", old, v_cache.astype(v.dtype))
          + jnp.einsum("bnts,bsnh->btnh", new, v))


# ---- positional embeddings of the visual side ----------------------------------------------

def _cubic(x: np.ndarray, a: float = -0.75) -> np.ndarray:
  """PyTorch's bicubic convolution kernel (A = -0.75)."""
  x = np.abs(x)
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


@functools.lru_cache(maxsize=None)
def bicubic_matrix(src: int, dst: int) -> np.ndarray:
  """[dst, src] matrix equal to torch `F.interpolate(mode="bicubic", align_corners=False)`
  along one axis (source index (i + 0.5) * src / dst - 0.5, taps clamped at the borders)."""
  out = np.zeros((dst, src), np.float64)
  real = (np.arange(dst) + 0.5) * (src / dst) - 0.5
  base = np.floor(real).astype(np.int64)
  t = real - base
  for tap in range(-1, 3):
    idx = np.clip(base + tap, 0, src - 1)
    np.add.at(out, (np.arange(dst), idx), _cubic(t - tap))
  return out.astype(np.float32)


def resize_grid(pos: Array, dst: int) -> Array:
  """Resize a row-major [src*src, D] grid embedding to [dst*dst, D] (Qwen-VL's get_abs_pos):
  bicubic A=-0.75 in fp32, cast back; identity when the sizes already match."""
  src = int(round(pos.shape[0] ** 0.5))
  if src * src != pos.shape[0]:
    raise ValueError(f"positional grid of {pos.shape[0]} entries is not square")
  if src == dst:
    return pos
  m = jnp.asarray(bicubic_matrix(src, dst))
  grid = pos.astype(jnp.float32).reshape(src, src, -1)
  hi = jax.lax.Precision.HIGHEST
  out = jnp.einsum("ih,jw,hwd->ijd", m, m, grid, precision=hi)
  return out.reshape(dst * dst, -1).astype(pos.dtype)


def sincos_2d(dim: int, grid: int) -> np.ndarray:
  """MAE 2D sin-cos embedding [grid*grid, dim], fp32: first half encodes the column index,
  second half the row index; each half is [sin(p * w_k), cos(p * w_k)], w_k = 1e4^(-k/(dim/4))."""
  omega = np.arange(dim // 4, dtype=np.float32) / np.float32(dim / 4)
  omega = (1.0 / np.float32(10000) ** omega).astype(np.float32)
  rows, cols = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32),
                           indexing="ij")

  def one_axis(p: np.ndarray) -> np.ndarray:
    out = np.einsum("m,d->md", p.reshape(-1), omega).astype(np.float32)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  return np.concatenate([one_axis(cols), one_axis(rows)], axis=1).astype(np.float32)


# ---- stacked layers ----------------------------------------------------------------------------

REMAT = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def stack(make: Callable[[nnx.Rngs], nnx.Module], n: int, rngs: nnx.Rngs) -> nnx.Module:
  """n layers built by `make`, parameters stacked on a leading 'layers' axis."""

  @nnx.split_rngs(splits=n)
  @nnx.vmap(in_axes=(0,), out_axes=0,
            transform_metadata={nnx.PARTITION_NAME: "layers", "axes": "layers"})
  def create(r: nnx.Rngs) -> nnx.Module:
    return make(r)

  return create(rngs)


def scan(layers: nnx.Module, x: Array, apply: Callable[..., Any], remat: str = "none",
         xs: Any = None, carry_axes: Sequence[str | None] = ("batch", "length", "act_embed")
         ) -> Any:
  """Runs the stacked `layers` in order as one `lax.scan` (+ remat per layer).

  Without xs: apply(layer, x) -> x; returns x. With xs (arrays with a leading layer axis, e.g.
  a KV cache): apply(layer, x, xs_i) -> (x, ys_i); returns (x, stacked ys).
  The carry is sharding-constrained (logical `carry_axes`) on entry and exit of every layer
  and of the loop: XLA's partitioner otherwise may pick a layout for the loop's result that
  later ops mis-partition (seen on CPU: wrong resampler outputs on a data x fsdp x tensor mesh).
  """
  from bird_jax.sharding import constrain

  graphdef, state = nnx.split(layers)

  def body(carry: Array, inputs: Any) -> tuple[Array, Any]:
    layer_state, layer_xs = inputs
    layer = nnx.merge(graphdef, layer_state)
    carry = constrain(carry, carry_axes)
    if xs is None:
      out, ys = apply(layer, carry), None
    else:
      out, ys = apply(layer, carry, layer_xs)
    return constrain(out, carry_axes), ys

  if REMAT[remat] is not None:
    body = jax.checkpoint(body, policy=REMAT[remat], prevent_cse=False)
  carry, ys = jax.lax.scan(body, constrain(x, carry_axes), (state, xs))
  carry = constrain(carry, carry_axes)
  return carry if xs is None else (carry, ys)
