"""HF Qwen-VL tensors <-> bird_jax parameters: ONE declarative table, read in both directions.

Each rule names an HF tensor (with `{i}` for a layer index), the parameter path in the model
state, and a layout transform (a pair of functions, HF -> JAX and JAX -> HF). Layers of a
scanned stack share one parameter with a leading layer axis.

HF layouts (PyTorch): Linear weight [out, in]; conv OIHW; the ViT's in_proj rows are
interleaved per head ([heads, q|k|v, head_dim]); the resampler's in_proj_weight and the LLM's
c_attn are blocked ([q|k|v, heads, head_dim]); `proj` is stored [in, out] (no transpose).

Read HF -> JAX: `expected_tensors` (names + shapes to validate with `check_tensors`), then
`param_plans` (block i of a parameter from one HF tensor, for streaming) or `hf_to_params`
(in memory). Read JAX -> HF: `to_hf_tensor` / `hf_tensors` / `params_to_hf`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from bird_jax import exit_codes
from bird_jax.config import QwenVLConfig
from bird_jax.tree_paths import flatten

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Transform:
  """to_jax(hf_array, jax_shape) -> array of jax_shape; to_hf(jax_array) -> hf array;
  hf_shape(jax_shape) -> the HF shape (used to validate before loading). to_jax / to_hf may
  return views: callers materialise once, casting in the same pass (`materialize`)."""

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
      to_jax=lambda w, shape: w.T.reshape(shape),  # splits one axis of a view: no copy
      to_hf=lambda k: k.reshape(split(k.shape)).T,
      hf_shape=lambda shape: split(shape)[::-1])


def _vit_qkv_to_jax(w: np.ndarray, shape: Shape) -> np.ndarray:
  width, _, heads, hd = shape  # HF rows: [heads, q|k|v, head_dim]
  return w.T.reshape(width, heads, 3, hd).transpose(0, 2, 1, 3)


def _vit_qkv_to_hf(k: np.ndarray) -> np.ndarray:
  width, three, heads, hd = k.shape
  return k.transpose(0, 2, 1, 3).reshape(width, heads * three * hd).T


IDENTITY = Transform("identity", lambda w, shape: w.reshape(shape), lambda k: k, lambda s: s)
LINEAR1 = _linear(1)
LINEAR2 = _linear(2)
BIAS = Transform("flatten", lambda w, shape: w.reshape(shape), lambda k: k.reshape(-1),
                 lambda s: (int(np.prod(s)),))
CONV = Transform("oihw<->hwio", lambda w, shape: w.transpose(2, 3, 1, 0),
                 lambda k: k.transpose(3, 2, 0, 1),
                 lambda s: (s[3], s[2], s[0], s[1]))
VIT_QKV = Transform("vit_interleaved_qkv", _vit_qkv_to_jax, _vit_qkv_to_hf,
                    lambda s: (s[1] * s[2] * s[3], s[0]))
VIT_QKV_BIAS = Transform(
    "vit_interleaved_qkv_bias",
    lambda w, shape: w.reshape(shape[1], 3, shape[2]).transpose(1, 0, 2),
    lambda k: k.transpose(1, 0, 2).reshape(-1),
    lambda s: (int(np.prod(s)),))


_TILE = 64  # rows x columns of one tile of a strided copy (a transposed weight)


def materialize(x: np.ndarray, dtype: Any = None) -> np.ndarray:
  """A C-contiguous array of `dtype` (None: x's own) from a possibly strided view, in one
  copy-and-cast pass; no copy when x already is one. Without a cast the bytes are copied as
  unsigned integers (numpy copies ml_dtypes' bfloat16 element by element, ~5x slower), and a
  large strided view (a transposed weight, also split into heads) is copied tile by tile as a
  matrix, so that the reads of one tile stay in the cache (~2x numpy's element-order copy)."""
  dtype = x.dtype if dtype is None else np.dtype(dtype)
  if x.flags.c_contiguous and x.dtype == dtype:
    return x
  if x.dtype == dtype:
    return _copy(x.view(f"u{x.itemsize}")).view(dtype)
  return np.ascontiguousarray(x, dtype=dtype)


def _copy(x: np.ndarray) -> np.ndarray:
  if x.ndim < 2 or x.nbytes < (1 << 20):
    return np.ascontiguousarray(x)
  try:
    matrix = np.reshape(x, (x.shape[0], -1), copy=False)
  except ValueError:  # not a matrix view (e.g. the ViT's interleaved q/k/v)
    return np.ascontiguousarray(x)
  out = np.empty(matrix.shape, x.dtype)
  for i in range(0, matrix.shape[0], _TILE):
    for j in range(0, matrix.shape[1], _TILE):
      out[i:i + _TILE, j:j + _TILE] = matrix[i:i + _TILE, j:j + _TILE]
  return out.reshape(x.shape)


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

# Rows follow the HF state_dict order (module registration order of QWenLMHeadModel), which
# is also the order `jax-to-hf` writes tensors in.
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
    # ---- ViT ---------------------------------------------------------------------------
    Rule(_V + "positional_embedding", "visual.positional_embedding", IDENTITY),
    Rule(_V + "proj", "visual.proj", IDENTITY),  # stored [in, out]: NOT transposed
    Rule(_V + "conv1.weight", "visual.conv1", CONV),
    Rule(_V + "ln_pre.weight", "visual.ln_pre.weight", IDENTITY),
    Rule(_V + "ln_pre.bias", "visual.ln_pre.bias", IDENTITY),
    Rule(_VB + "ln_1.weight", "visual.blocks.ln_1.weight", IDENTITY),
    Rule(_VB + "ln_1.bias", "visual.blocks.ln_1.bias", IDENTITY),
    Rule(_VB + "ln_2.weight", "visual.blocks.ln_2.weight", IDENTITY),
    Rule(_VB + "ln_2.bias", "visual.blocks.ln_2.bias", IDENTITY),
    Rule(_VB + "attn.in_proj.weight", "visual.blocks.attn.in_proj.kernel", VIT_QKV),
    Rule(_VB + "attn.in_proj.bias", "visual.blocks.attn.in_proj.bias", VIT_QKV_BIAS),
    Rule(_VB + "attn.out_proj.weight", "visual.blocks.attn.out_proj.kernel", LINEAR2),
    Rule(_VB + "attn.out_proj.bias", "visual.blocks.attn.out_proj.bias", IDENTITY),
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
    # ---- head ------------------------------------------------------------------------------
    Rule("lm_head.weight", "llm.lm_head", LINEAR1),
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
  """Every HF tensor name the model needs, with its expected HF shape, in HF order (a layer's
  tensors together, layer after layer). param_shapes: dotted path -> JAX shape (stacked layers
  included), e.g. from `param_shapes(abstract_model)`."""
  keyed = []
  for pos, rule in enumerate(rules_for(cfg)):
    shape = tuple(param_shapes[rule.path])
    if rule.layered:
      stack = _stack_start(rule)
      for i in range(num_layers(rule, cfg)):
        name = rule.hf.format(i=i)
        hf_shape = tuple(rule.transform.hf_shape(shape[1:]))
        keyed.append(((stack, i, pos), Entry(name, rule, i, hf_shape)))
    else:
      hf_shape = tuple(rule.transform.hf_shape(shape))
      keyed.append(((pos, -1, pos), Entry(rule.hf, rule, None, hf_shape)))
  return {e.name: e for _, e in sorted(keyed, key=lambda kv: kv[0])}


def _stack_start(rule: Rule) -> int:
  """Position in RULES of the first rule of `rule`'s layer stack (same prefix before {i})."""
  prefix = rule.hf.split("{i}")[0]
  return next(k for k, r in enumerate(RULES) if r.hf.split("{i}")[0] == prefix and r.layered)


def param_shapes(state: Any) -> dict[str, Shape]:
  """Dotted path -> shape for every array in an nnx State / nested dict."""
  return {k: tuple(v.shape) for k, v in flatten(state).items()}


# ---- validation ---------------------------------------------------------------------------

FLOAT_DTYPES = ("BF16", "F16", "F32")


class CheckpointMismatch(ValueError):
  """The tensors of a checkpoint do not match the model; the message lists every problem."""

  exit_code = exit_codes.BAD_INPUT  # a tool refuses the checkpoint


def tensor_problems(found: Mapping[str, tuple[Shape, str]], expected: Mapping[str, Entry]
                    ) -> dict[str, list[str]]:
  """found: HF name -> (shape, safetensors dtype tag). Every missing, unexpected, wrongly
  shaped and non-float tensor, by kind (empty lists when the checkpoint fits the model)."""
  return {
      "missing tensors": [n for n in expected if n not in found],
      "unexpected tensors": sorted(n for n in found if n not in expected),
      "wrong shapes": [f"{n}: shape {list(found[n][0])}, the model expects {list(e.shape)}"
                       for n, e in expected.items()
                       if n in found and tuple(found[n][0]) != e.shape],
      "wrong dtypes": [f"{n}: dtype {found[n][1]}, expected a float dtype "
                       f"({'/'.join(FLOAT_DTYPES)})"
                       for n in expected if n in found and found[n][1] not in FLOAT_DTYPES],
  }


def check_tensors(found: Mapping[str, tuple[Shape, str]], expected: Mapping[str, Entry],
                  source: str = "checkpoint") -> None:
  """Raises CheckpointMismatch naming ALL problems of `tensor_problems` (never a silent
  reshape or cast of a wrong tensor)."""
  parts = [f"{len(items)} {title}:\n    " + "\n    ".join(items)
           for title, items in tensor_problems(found, expected).items() if items]
  if parts:
    raise CheckpointMismatch(f"{source} does not match the model config:\n  " + "\n  ".join(parts))


# ---- HF -> params ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ParamPlan:
  """How one model parameter is assembled from HF tensors: `names[i]` fills block i (layer i of
  a stacked parameter; the whole parameter otherwise)."""

  path: str
  rule: Rule
  shape: Shape  # the parameter's JAX shape (leading layer axis for stacked ones)
  names: tuple[str, ...]

  @property
  def layered(self) -> bool:
    return self.rule.layered

  def block(self, i: int, get: Callable[[str], np.ndarray], dtype: Any) -> np.ndarray:
    """Block i in the JAX layout and `dtype`: at most the HF tensor and one converted copy
    are alive at once."""
    shape = self.shape[1:] if self.layered else self.shape
    x = self.rule.transform.to_jax(get(self.names[i]), shape)
    x = materialize(x, dtype)  # the HF tensor (a view's base) is freed right after
    return x[None] if self.layered else x


def param_plans(entries: Mapping[str, Entry], shapes: Mapping[str, Shape]) -> dict[str, ParamPlan]:
  """One plan per parameter path, in table order."""
  names: dict[str, list[str]] = {}
  rules: dict[str, Rule] = {}
  for e in sorted(entries.values(), key=lambda e: (RULES.index(e.rule), e.layer or 0)):
    names.setdefault(e.rule.path, []).append(e.name)
    rules[e.rule.path] = e.rule
  return {p: ParamPlan(p, rules[p], tuple(shapes[p]), tuple(n)) for p, n in names.items()}


def hf_to_params(get: Callable[[str], np.ndarray], entries: Mapping[str, Entry],
                 shapes: Mapping[str, Shape], dtype: Any = None) -> dict[str, np.ndarray]:
  """Builds {dotted path: array} in memory from HF tensors fetched one at a time with
  `get(name)` (dtype None: keep each tensor's dtype). Stacked parameters are filled layer by
  layer into one preallocated array: for small models (tests, benchmarks). Full-size weights
  are loaded by `bird_jax.checkpoint.streaming` and converted by `bird_jax.convert`, neither
  of which holds the whole model on the host."""
  def checked(name: str) -> np.ndarray:
    w = get(name)
    if tuple(w.shape) != entries[name].shape:
      raise CheckpointMismatch(f"{name}: shape {list(w.shape)} but the model expects "
                               f"{list(entries[name].shape)}")
    return w

  params: dict[str, np.ndarray] = {}
  for plan in param_plans(entries, shapes).values():
    for i in range(len(plan.names)):
      block = plan.block(i, checked, dtype)
      if not plan.layered:
        params[plan.path] = block
        continue
      if plan.path not in params:
        params[plan.path] = np.empty(plan.shape, block.dtype)
      params[plan.path][i] = block[0]
  return params


# ---- params -> HF ----------------------------------------------------------------------------

def to_hf_tensor(entry: Entry, read: Callable[[str, int | None], np.ndarray],
                 dtype: Any = None) -> np.ndarray:
  """One HF tensor from its parameter. read(path, layer) returns the parameter (layer None) or
  one layer of a stacked parameter, in the JAX layout; dtype None keeps the parameter's."""
  x = entry.rule.transform.to_hf(np.asarray(read(entry.rule.path, entry.layer)))
  if tuple(x.shape) != entry.shape:
    raise CheckpointMismatch(f"{entry.name}: parameter {entry.rule.path} gives shape "
                             f"{list(x.shape)}, HF expects {list(entry.shape)}")
  return materialize(x, dtype)


def hf_tensors(read: Callable[[str, int | None], np.ndarray], entries: Mapping[str, Entry],
               dtype_for: Callable[[Entry], Any] | None = None
               ) -> Iterator[tuple[str, np.ndarray]]:
  """Yields (HF name, array) one tensor at a time, in `entries` order (see `to_hf_tensor`);
  dtype_for(entry) gives each output dtype (None: keep the parameter's dtype)."""
  for name, e in entries.items():
    yield name, to_hf_tensor(e, read, None if dtype_for is None else dtype_for(e))


def params_to_hf(params: Mapping[str, Any], cfg: QwenVLConfig,
                 dtype_for: Callable[[Entry], Any] | None = None
                 ) -> Iterator[tuple[str, np.ndarray]]:
  """Yields (HF name, array) one tensor at a time, in HF order, from {dotted path: array}."""
  entries = expected_tensors(cfg, {p: tuple(v.shape) for p, v in params.items()})
  return hf_tensors(lambda p, i: params[p] if i is None else params[p][i], entries, dtype_for)


_LAYER = re.compile(r"\.(\d+)\.")


def rule_for_name(name: str) -> tuple[Rule, int | None] | None:
  """The rule an HF tensor name falls under and its layer index (None for a tensor the table
  does not know)."""
  m = _LAYER.search(name)
  pattern = _LAYER.sub(".{i}.", name, count=1)
  for r in RULES:
    if r.hf == name:
      return r, None
    if m and r.hf == pattern:
      return r, int(m.group(1))
  return None
