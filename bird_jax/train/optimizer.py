"""Parameter groups (regex freezing, weight-decay mask), the schedule and the optimizer.

Freezing is one line of config: every parameter whose dotted path (e.g.
`visual.blocks.attn.in_proj.kernel`) matches a `freeze` regex is frozen; frozen parameters get
no gradient computation and no optimizer state (they are not even inputs of the gradient).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx

# BiRD / Qwen-VL `--fix_vit`: the whole visual tower is frozen except the resampler.
BIRD_FREEZE = (r"^visual\.(?!attn_pool\.)",)
# HF Trainer's rule: no weight decay for biases and torch LayerNorm parameters (Qwen's RMSNorm
# is not a torch LayerNorm, so the LLM's norms ARE decayed, as in BiRD's training).
HF_NO_DECAY = r"\.bias$|^visual\.(.*\.)?ln_\w+\.(weight|bias)$"


def dotted(path: Sequence[Any]) -> str:
  """A pytree / nnx path -> 'llm.h.attn.c_attn.kernel' (drops Variable '.value' hops)."""
  parts = []
  for k in path:
    name = getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))
    if name != "value":
      parts.append(str(name))
  return ".".join(parts)


def trainable_filter(freeze: Sequence[str]) -> Callable[[tuple, Any], bool]:
  """nnx filter: a Param whose path matches none of the `freeze` regexes."""
  patterns = [re.compile(p) for p in freeze]

  def is_trainable(path: tuple, value: Any) -> bool:
    return isinstance(value, nnx.Param) and not any(p.search(dotted(path)) for p in patterns)

  return is_trainable


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  lr: float = 2e-5
  warmup_ratio: float = 0.01  # of the total steps (HF `warmup_ratio`), or:
  warmup_steps: int = 0  # when > 0, overrides warmup_ratio
  schedule: str = "cosine"  # "cosine" | "constant"
  end_lr_ratio: float = 0.0  # cosine ends at lr * end_lr_ratio
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 0.1
  no_decay: str = HF_NO_DECAY  # regex of paths without weight decay
  clip_norm: float = 1.0  # global-norm clipping (0 = off)
  mu_dtype: str | None = None  # e.g. "bfloat16" to store Adam's first moment in bf16


def schedule(c: OptimConfig, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0, then cosine decay (HF `get_cosine_schedule_with_warmup`)."""
  warmup = c.warmup_steps or math.ceil(c.warmup_ratio * total_steps)
  if c.schedule == "constant":
    return optax.join_schedules([optax.linear_schedule(0.0, c.lr, max(warmup, 1)),
                                 optax.constant_schedule(c.lr)], [max(warmup, 1)])
  if c.schedule != "cosine":
    raise ValueError(f"optim.schedule {c.schedule!r} not in ('cosine', 'constant')")
  return optax.warmup_cosine_decay_schedule(0.0, c.lr, warmup, max(total_steps, warmup + 1),
                                            end_value=c.lr * c.end_lr_ratio)


def decay_mask(params: Any, no_decay: str) -> Any:
  pattern = re.compile(no_decay)
  return jax.tree_util.tree_map_with_path(lambda p, _: not pattern.search(dotted(p)), params)


def make_optimizer(c: OptimConfig, total_steps: int) -> tuple[optax.GradientTransformation,
                                                              optax.Schedule]:
  lr = schedule(c, total_steps)
  adamw = optax.adamw(lr, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay,
                      mask=lambda p: decay_mask(p, c.no_decay),
                      mu_dtype=jnp.dtype(c.mu_dtype) if c.mu_dtype else None)
  tx = optax.chain(optax.clip_by_global_norm(c.clip_norm), adamw) if c.clip_norm else adamw
  return tx, lr
