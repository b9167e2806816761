"""HF Qwen-VL tensors <-> bird_jax parameters: ONE declarative table, read in both directions.

Each rule names an HF tensor (with `{i}` for a layer index), the parameter path in the model
state, and a layout transform (a pair of functions, HF -> JAX and JAX -> HF). Layers of a
scanned stack share one parameter with a leading layer axis.

HF layouts (PyTorch): Linear weight [out, in]; conv OIHW; the ViT's in_proj rows are
interleaved per head ([heads, q|k|v, head_dim]); the resampler's in_proj_weight and the LLM's
c_attn are blocked ([q|k|v, heads, head_dim]); `proj` is stored [in, out] (no transpose).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from bird_jax.config import QwenVLConfig

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Transform:
  """to_jax(hf_array, jax_shape) -> array of jax_shape; to_hf(jax_array) -> hf array;
  hf_shape(jax_shape) -> the HF shape (used to validate before loading)."""

  name: str
  to_jax: Callable[[np.ndarray, Shape], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]
  hf_shape: Callable[[Shape], Shape]


def _linear(n_in: int) -> Transform:
  """Linear weight [out, in] <-> kernel in_shape + out_shape (first n_in dims contracted)."""

  def split(shape: Shape) -> tuple[int, int]:
    return int(np.prod(shape[:n_in])), int(np.prod(shape[n_in:]))

  return Transform(
      f"linear{n_in}",
      to_jax=lambda w, shape: np.ascontiguousarray(w.T).reshape(shape),
      to_hf=lambda k: np.ascontiguousarray(k.reshape(split(k.shape)).T),
      hf_shape=lambda shape: split(shape)[::-1])


def _vit_qkv_to_jax(w: np.ndarray, shape: Shape) -> np.ndarray:
  width, _, heads, hd = shape  # HF rows: [heads, q|k|v, head_dim]
  return np.ascontiguousarray(w.T.reshape(width, heads, 3, hd).transpose(0, 2, 1, 3))


def _vit_qkv_to_hf(k: np.ndarray) -> np.ndarray:
  width, three, heads, hd = k.shape
  return np.ascontiguousarray(k.transpose(0, 2, 1, 3).reshape(width, heads * three * hd).T)


IDENTITY = Transform("identity", lambda w, shape: w.reshape(shape), lambda k: k, lambda s: s)
LINEAR1 = _linear(1)
LINEAR2 = _linear(2)
BIAS = Transform("flatten", lambda w, shape: w.reshape(shape), lambda k: k.reshape(-1),
                 lambda s: (int(np.prod(s)),))
CONV = Transform("oihw<->hwio", lambda w, shape: np.ascontiguousarray(w.transpose(2, 3, 1, 0)),
                 lambda k: np.ascontiguousarray(k.transpose(3, 2, 0, 1)),
                 lambda s: (s[3], s[2], s[0], s[1]))
VIT_QKV = Transform("vit_interleaved_qkv", _vit_qkv_to_jax, _vit_qkv_to_hf,
                    lambda s: (s[1] * s[2] * s[3], s[0]))
VIT_QKV_BIAS = Transform(
    "vit_interleaved_qkv_bias",
    lambda w, shape: np.ascontiguousarray(w.reshape(shape[1], 3, shape[2]).transpose(1, 0, 2)),
    lambda k: np.ascontiguousarray(k.transpose(1, 0, 2)).reshape(-1),
    lambda s: (int(np.prod(s)),))


@dataclasses.dataclass(frozen=True)
class Rule:
  hf: str  # HF tensor name; "{i}" = layer index
  path: str  # dotted parameter path in the model state
  transform: Transform

  @property
  def layered(self) -> bool:
    return "{i}" in self.hf


_V = "transformer.visual."
_VB = _V + "transformer.resblocks.{i}."
_AP = _V + "attn_pool."

RULES: tuple[Rule, ...] = (
    # ---- LLM --------------------------------------------------------------------------
    Rule("transformer.wte.weight", "llm.wte", IDENTITY),
    Rule("transformer.h.{i}.ln_1.weight", "llm.h.ln_1.weight", IDENTITY),
    Rule("transformer.h.{i}.attn.c_attn.weight", "llm.h.attn.c_attn.kernel", LINEAR1),
    Rule("transformer.h.{i}.attn.c_attn.bias", "llm.h.attn.c_attn.bias", BIAS),
    Rule("transformer.h.{i}.attn.c_proj.weight", "llm.h.attn.c_proj.kernel", LINEAR2),
    Rule("transformer.h.{i}.ln_2.weight", "llm.h.ln_2.weight", IDENTITY),
    Rule("transformer.h.{i}.mlp.w1.weight", "llm.h.mlp.w1.kernel", LINEAR1),
    Rule("transformer.h.{i}.mlp.w2.weight", "llm.h.mlp.w2.kernel", LINEAR1),
    Rule("transformer.h.{i}.mlp.c_proj.weight", "llm.h.mlp.c_proj.kernel", LINEAR1),
    Rule("transformer.ln_f.weight", "llm.ln_f.weight", IDENTITY),
    Rule("lm_head.weight", "llm.lm_head", LINEAR1),
    # ---- ViT ---------------------------------------------------------------------------
    Rule(_V + "conv1.weight", "visual.conv1", CONV),
    Rule(_V + "positional_embedding", "visual.positional_embedding", IDENTITY),
    Rule(_V + "ln_pre.weight", "visual.ln_pre.weight", IDENTITY),
    Rule(_V + "ln_pre.bias", "visual.ln_pre.bias", IDENTITY),
    Rule(_VB + "ln_1.weight", "visual.blocks.ln_1.weight", IDENTITY),
    Rule(_VB + "ln_1.bias", "visual.blocks.ln_1.bias", IDENTITY),
    Rule(_VB + "attn.in_proj.weight", "visual.blocks.attn.in_proj.kernel", VIT_QKV),
    Rule(_VB + "attn.in_proj.bias", "visual.blocks.attn.in_proj.bias", VIT_QKV_BIAS),
    Rule(_VB + "attn.out_proj.weight", "visual.blocks.attn.out_proj.kernel", LINEAR2),
    Rule(_VB + "attn.out_proj.bias", "visual.blocks.attn.out_proj.bias", IDENTITY),
    Rule(_VB + "ln_2.weight", "visual.blocks.ln_2.weight", IDENTITY),
    Rule(_VB + "ln_2.bias", "visual.blocks.ln_2.bias", IDENTITY),
    Rule(_VB + "mlp.c_fc.weight", "visual.blocks.mlp.c_fc.kernel", LINEAR1),
    Rule(_VB + "mlp.c_fc.bias", "visual.blocks.mlp.c_fc.bias", IDENTITY),
    Rule(_VB + "mlp.c_proj.weight", "visual.blocks.mlp.c_proj.kernel", LINEAR1),
    Rule(_VB + "mlp.c_proj.bias", "visual.blocks.mlp.c_proj.bias", IDENTITY),
    # ---- resampler + projection ----------------------------------------------------------
    Rule(_AP + "query", "visual.attn_pool.query", IDENTITY),
    Rule(_AP + "pos_embed", "visual.attn_pool.pos_embed", IDENTITY),
    Rule(_AP + "kv_proj.weight", "visual.attn_pool.kv_proj.kernel", LINEAR1),
    Rule(_AP + "attn.in_proj_weight", "visual.attn_pool.attn.in_proj.kernel", LINEAR1),
    Rule(_AP + "attn.in_proj_bias", "visual.attn_pool.attn.in_proj.bias", BIAS),
    Rule(_AP + "attn.out_proj.weight", "visual.attn_pool.attn.out_proj.kernel", LINEAR2),
    Rule(_AP + "attn.out_proj.bias", "visual.attn_pool.attn.out_proj.bias", IDENTITY),
    Rule(_AP + "ln_q.weight", "visual.attn_pool.ln_q.weight", IDENTITY),
    Rule(_AP + "ln_q.bias", "visual.attn_pool.ln_q.bias", IDENTITY),
    Rule(_AP + "ln_kv.weight", "visual.attn_pool.ln_kv.weight", IDENTITY),
    Rule(_AP + "ln_kv.bias", "visual.attn_pool.ln_kv.bias", IDENTITY),
    Rule(_V + "ln_post.weight", "visual.ln_post.weight", IDENTITY),
    Rule(_V + "ln_post.bias", "visual.ln_post.bias", IDENTITY),
    Rule(_V + "proj", "visual.proj", IDENTITY),  # stored [in, out]: NOT transposed
)


def rules_for(cfg: QwenVLConfig) -> tuple[Rule, ...]:
  """The rules that apply to `cfg` (kv_proj exists only when the ViT width != output_dim)."""
  return tuple(r for r in RULES if cfg.vision.has_kv_proj or "kv_proj" not in r.path)


def num_layers(rule: Rule, cfg: QwenVLConfig) -> int:
  return cfg.llm.layers if rule.path.startswith("llm.") else cfg.vision.layers


@dataclasses.dataclass(frozen=True)
class Entry:
  """One HF tensor: where it goes (rule, layer index) and the shape it must have."""

  name: str
  rule: Rule
  layer: int | None
  shape: Shape


def expected_tensors(cfg: QwenVLConfig, param_shapes: Mapping[str, Shape]) -> dict[str, Entry]:
  """Every HF tensor name the model needs, with its expected HF shape. param_shapes: dotted
  path -> JAX shape (stacked layers included), e.g. from `param_shapes(abstract_model)`."""
  out: dict[str, Entry] = {}
  for rule in rules_for(cfg):
    shape = tuple(param_shapes[rule.path])
    if rule.layered:
      for i in range(num_layers(rule, cfg)):
        name = rule.hf.format(i=i)
        out[name] = Entry(name, rule, i, tuple(rule.transform.hf_shape(shape[1:])))
    else:
      out[rule.hf] = Entry(rule.hf, rule, None, tuple(rule.transform.hf_shape(shape)))
  return out


def param_shapes(state: Any) -> dict[str, Shape]:
  """Dotted path -> shape for every array in an nnx State / nested dict."""
  return {k: tuple(v.shape) for k, v in flatten(state).items()}


def flatten(state: Any) -> dict[str, Any]:
  """Nested nnx State / dict -> {dotted path: array}."""
  from flax import nnx

  if isinstance(state, nnx.State):
    state = state.to_pure_dict()
  out: dict[str, Any] = {}

  def walk(node: Any, prefix: str) -> None:
    if isinstance(node, Mapping):
      for k, v in node.items():
        walk(v, f"{prefix}.{k}" if prefix else str(k))
    else:
      out[prefix] = node

  walk(state, "")
  return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for path, value in flat.items():
    node = out
    *parents, leaf = path.split(".")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return out


def hf_to_params(get: Callable[[str], np.ndarray], entries: Mapping[str, Entry],
                 shapes: Mapping[str, Shape], dtype: Any = None) -> dict[str, np.ndarray]:
  """Builds {dotted path: array} from HF tensors fetched one at a time with `get(name)`.
  Stacked parameters are filled layer by layer into one preallocated array."""
  params: dict[str, np.ndarray] = {}
  for name, e in entries.items():
    w = get(name)
    if tuple(w.shape) != e.shape:
      raise ValueError(f"{name}: shape {tuple(w.shape)} but the model expects {e.shape}")
    target = tuple(shapes[e.rule.path])
    out_dtype = w.dtype if dtype is None else dtype
    if e.layer is None:
      params[e.rule.path] = e.rule.transform.to_jax(w, target).astype(out_dtype, copy=False)
    else:
      if e.rule.path not in params:
        params[e.rule.path] = np.empty(target, out_dtype)
      params[e.rule.path][e.layer] = e.rule.transform.to_jax(w, target[1:])
  return params


def params_to_hf(params: Mapping[str, Any], cfg: QwenVLConfig) -> Iterator[tuple[str, np.ndarray]]:
  """Yields (HF name, array) one tensor at a time, in table order."""
  for rule in rules_for(cfg):
    value = params[rule.path]
    if rule.layered:
      for i in range(num_layers(rule, cfg)):
        yield rule.hf.format(i=i), rule.transform.to_hf(np.asarray(value[i]))
    else:
      yield rule.hf, rule.transform.to_hf(np.asarray(value))


_LAYER = re.compile(r"\.(\d+)\.")


def rule_for_name(name: str) -> Rule | None:
  """The rule an HF tensor name falls under (None for a tensor the table does not know)."""
  pattern = _LAYER.sub(".{i}.", name, count=1)
  return next((r for r in RULES if r.hf in (name, pattern)), None)
