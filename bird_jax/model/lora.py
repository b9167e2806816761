"""Low-rank adapters on the model's linear layers (LoRA).

An adapted `Linear` computes ``x . kernel + scale * (x . lora_a) . lora_b`` with
``lora_a: in_shape + (rank,)``, ``lora_b: (rank,) + out_shape`` and ``scale = alpha / rank``
(a stacked layer adds the leading 'layers' axis to both). `lora_b` starts at zero, so a model
with fresh adapters computes exactly what the base model does. Adapters are `Adapter`
variables, not `nnx.Param`: the checkpoint table, the HF conversion and everything else that
reads the model's parameters never sees them; `merge` folds them into the kernels for export.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bird_jax.model.layers import Linear
from bird_jax.tree_paths import dotted

A, B = "lora_a", "lora_b"
ADAPTERS_FILE, ADAPTERS_CONFIG = "adapters.safetensors", "adapters.json"


class Adapter(nnx.Variable):
  """A LoRA factor (trained; the base parameters stay frozen)."""


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
  rank: int = 0  # 0: no adapters
  alpha: float = 16.0
  # regexes over dotted module paths, e.g. the LLM's attention and MLP and the resampler
  targets: tuple[str, ...] = (r"^llm\.h\.(attn|mlp)\.", r"^visual\.attn_pool\.")
  dtype: str = "float32"
  seed: int = 0

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "LoRAConfig":
    """From a JSON/ConfigDict form (lists for tuples); unknown keys are ignored."""
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if k == "targets" else v for k, v in d.items() if k in known})

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  def validate(self) -> "LoRAConfig":
    if self.rank < 0 or (self.rank and not self.targets):
      raise ValueError(f"lora: rank {self.rank} with targets {self.targets}: give a rank >= 1 "
                       "and at least one target regex (rank 0 turns adapters off)")
    for t in self.targets:
      re.compile(t)
    return self


def target_linears(model: nnx.Module, targets: Sequence[str]) -> dict[str, Linear]:
  """{dotted path: Linear} of the linear layers whose path matches one of `targets`."""
  patterns = [re.compile(t) for t in targets]
  return {dotted(path): node for path, node in nnx.iter_graph(model)
          if isinstance(node, Linear) and any(p.search(dotted(path)) for p in patterns)}


def add_adapters(model: nnx.Module, cfg: LoRAConfig) -> nnx.Module:
  """Adds zero-effect adapters to every target linear of `model` (in place; returned). Works
  on concrete models and inside `nnx.eval_shape`."""
  cfg.validate()
  found = target_linears(model, cfg.targets)
  if not found:
    raise ValueError(f"lora.targets {cfg.targets} match no linear layer of the model")
  key = jax.random.key(cfg.seed)
  for i, (path, linear) in enumerate(sorted(found.items())):
    kernel = linear.kernel
    axes = tuple(kernel.get_metadata()["axes"])
    lead = 1 if axes[0] == "layers" else 0  # a stacked layer's leading axis
    in_shape = kernel.shape[lead:lead + linear.n_in]
    out_shape = kernel.shape[lead + linear.n_in:]
    std = float(np.prod(in_shape)) ** -0.5
    a = std * jax.random.normal(jax.random.fold_in(key, i),
                                kernel.shape[:lead] + in_shape + (cfg.rank,), cfg.dtype)
    b = jnp.zeros(kernel.shape[:lead] + (cfg.rank,) + out_shape, cfg.dtype)
    linear.lora_a = Adapter(a, axes=axes[:lead + linear.n_in] + (None,))
    linear.lora_b = Adapter(b, axes=axes[:lead] + (None,) + axes[lead + linear.n_in:])
    linear.lora_scale = cfg.scale
  return model


def merge_kernel(kernel: np.ndarray, a: np.ndarray, b: np.ndarray, scale: float) -> np.ndarray:
  """``kernel + scale * a . b`` (in fp32, returned in the kernel's dtype); leading (layer)
  axes shared by all three, or none."""
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  rank = a.shape[-1]
  lead = a.ndim + b.ndim - 2 - kernel.ndim
  delta = a.reshape(a.shape[:lead] + (-1, rank)) @ b.reshape(b.shape[:lead] + (rank, -1))
  return (np.asarray(kernel, np.float32) + scale * delta.reshape(kernel.shape)).astype(kernel.dtype)


def adapted_modules(paths: Iterable[str]) -> set[str]:
  """The module paths that hold adapters among dotted parameter paths."""
  return {p[:-len(A) - 1] for p in paths if p.endswith(f".{A}")}


def merge(params: Mapping[str, Any], scale: float) -> dict[str, np.ndarray]:
  """{dotted path: array} with adapters -> the same without them, each adapted kernel
  replaced by `merge_kernel`: the plain model that computes what the adapted one does."""
  out = {p: v for p, v in params.items() if not is_adapter(p)}
  for module in adapted_modules(params):
    out[f"{module}.kernel"] = merge_kernel(np.asarray(params[f"{module}.kernel"]),
                                           params[f"{module}.{A}"], params[f"{module}.{B}"], scale)
  return out


def is_adapter(path: str) -> bool:
  return path.endswith((f".{A}", f".{B}"))


def save_adapters(directory: str | os.PathLike, adapters: Mapping[str, Any], cfg: LoRAConfig,
                  base: Mapping[str, Any]) -> None:
  """Writes the adapters on their own: ADAPTERS_FILE ({dotted path: array}, safetensors) and
  ADAPTERS_CONFIG (their LoRAConfig and `base`, what they were trained on)."""
  from safetensors.numpy import save_file

  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  save_file({p: np.ascontiguousarray(v) for p, v in adapters.items()},
            str(directory / ADAPTERS_FILE))
  (directory / ADAPTERS_CONFIG).write_text(json.dumps(
      {"lora": dataclasses.asdict(cfg), "base": dict(base)}, indent=2) + "\n")


def load_adapters(directory: str | os.PathLike) -> tuple[LoRAConfig, dict[str, np.ndarray]]:
  """(LoRAConfig, {dotted path: array}) written by `save_adapters`."""
  from safetensors.numpy import load_file

  directory = Path(directory)
  try:
    meta = json.loads((directory / ADAPTERS_CONFIG).read_text())
    cfg = LoRAConfig.from_dict(meta["lora"])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{directory / ADAPTERS_CONFIG}: not an adapters config ({e})") from None
  return cfg.validate(), load_file(str(directory / ADAPTERS_FILE))


def attach(model: nnx.Module, cfg: LoRAConfig, values: Mapping[str, Any]) -> nnx.Module:
  """`model` with the adapters `values` ({dotted path: array}, e.g. from `load_adapters`)."""
  add_adapters(model, cfg)
  state = nnx.state(model, Adapter)
  flat = dict(nnx.to_flat_state(state))
  want = {dotted(k) for k in flat}
  if want != set(values):
    raise ValueError(f"adapters do not match the model's targets: missing "
                     f"{sorted(want - set(values))[:3]}, unexpected {sorted(set(values) - want)[:3]}")
  for key, var in flat.items():
    value = values[dotted(key)]
    if tuple(value.shape) != tuple(var.shape):
      raise ValueError(f"{dotted(key)}: adapter shape {tuple(value.shape)}, the model "
                       f"expects {tuple(var.shape)}")
    var.set_value(jnp.asarray(value, var.dtype))
  nnx.update(model, nnx.from_flat_state(flat))
  return model
