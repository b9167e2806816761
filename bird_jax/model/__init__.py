"""Qwen-VL in Flax NNX: `QwenVL` (vision tower + resampler + Qwen LLM, image splice).

    from bird_jax.config import get_preset
    from bird_jax.model import QwenVL
    model = QwenVL(get_preset("tiny"), rngs=nnx.Rngs(0))
"""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
from flax import nnx

from bird_jax.config import QwenVLConfig
from bird_jax.model.qwen_vl import QwenVL, check_inputs, splice_image_features
from bird_jax.tree_paths import dotted

__all__ = ["QwenVL", "abstract_model", "model_from_params", "check_inputs",
           "splice_image_features"]


def abstract_model(cfg: QwenVLConfig) -> QwenVL:
  """The model with ShapeDtypeStruct leaves: shapes, dtypes and axes metadata, no memory."""
  return nnx.eval_shape(lambda: QwenVL(cfg, rngs=nnx.Rngs(0)))


def model_from_params(cfg: QwenVLConfig, params: Mapping[str, Any]) -> QwenVL:
  """A model whose every variable comes from `params` ({dotted path: array}); each variable
  keeps the dtype the config gives it."""
  model = abstract_model(cfg)
  graphdef, state = nnx.split(model)
  flat = dict(nnx.to_flat_state(state))
  want = {dotted(k) for k in flat}
  missing, extra = sorted(want - set(params)), sorted(set(params) - want)
  if missing or extra:
    raise KeyError(f"parameters do not match the model: missing {missing}, unexpected {extra}")
  for key, var in flat.items():
    path = dotted(key)
    value = params[path]
    if tuple(value.shape) != tuple(var.shape):
      raise ValueError(f"{path}: shape {tuple(value.shape)}, the model expects {tuple(var.shape)}")
    var.set_value(jnp.asarray(value, var.dtype))
  return nnx.merge(graphdef, nnx.from_flat_state(flat))
