"""Parameter groups (regex freezing, weight-decay mask), the schedule and the optimizer.

Freezing is one line of config: every parameter whose dotted path (e.g.
`visual.blocks.attn.in_proj.kernel`) matches a `freeze` regex is frozen; frozen parameters get
no gradient computation and no optimizer state (they are not even inputs of the gradient).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from bird_jax.tree_paths import dotted

# BiRD / Qwen-VL `--fix_vit`: the whole visual tower is frozen except the resampler.
BIRD_FREEZE = (r"^visual\.(?!attn_pool\.)",)
# HF Trainer's rule: no weight decay for biases and torch LayerNorm parameters (Qwen's RMSNorm
# is not a torch LayerNorm, so the LLM's norms ARE decayed, as in BiRD's training).
HF_NO_DECAY = r"\.bias$|^visual\.(.*\.)?ln_\w+\.(weight|bias)$"


def trainable_filter(freeze: Sequence[str], adapters: bool = False
                     ) -> Callable[[tuple, Any], bool]:
  """nnx filter: a Param whose path matches none of the `freeze` regexes; with `adapters`
  (a LoRA run) an adapter whose path matches none, every Param being frozen."""
  from bird_jax.model.lora import Adapter

  patterns = [re.compile(p) for p in freeze]
  kind = Adapter if adapters else nnx.Param

  def is_trainable(path: tuple, value: Any) -> bool:
    return isinstance(value, kind) and not any(p.search(dotted(path)) for p in patterns)

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
  # Adam's moments stored in bfloat16 halve the optimizer state (math stays fp32); costs
  # fidelity: about 3 significant digits per stored moment
  moments_dtype: str = "float32"


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


class AdamState(NamedTuple):
  count: jax.Array
  mu: Any
  nu: Any


def adamw(c: OptimConfig, lr: optax.Schedule) -> optax.GradientTransformation:
  """Global-norm clipping + AdamW in ONE elementwise pass per parameter.

  The arithmetic of optax.chain(clip_by_global_norm, adamw) (tested), but written so
  that nothing parameter-sized is materialised besides the new moments and the update (the
  chained version keeps a clipped copy of every gradient alive). Moments are stored in
  `c.moments_dtype`; the math is fp32.
  """
  dtype = jnp.dtype(c.moments_dtype)
  b1, b2, eps = c.b1, c.b2, c.eps

  def init(params):
    zeros = lambda p: jnp.zeros(p.shape, dtype)
    return AdamState(jnp.zeros((), jnp.int32), jax.tree.map(zeros, params),
                     jax.tree.map(zeros, params))

  def update(grads, state, params):
    norm = optax.tree.norm(grads)
    # clipping as one scalar factor: a per-element divide would be materialised (XLA does not
    # duplicate "expensive" divides into the several consumers below)
    scale = (jnp.where(norm >= c.clip_norm, c.clip_norm / norm, 1.0) if c.clip_norm > 0
             else jnp.ones((), jnp.float32))
    count = optax.safe_increment(state.count)
    c1, c2 = 1 - b1 ** count.astype(jnp.float32), 1 - b2 ** count.astype(jnp.float32)
    rate = lr(state.count)
    decay = decay_mask(params, c.no_decay)

    def leaf(g, m, v, p, wd):
      g = g.astype(jnp.float32) * scale
      m = b1 * m.astype(jnp.float32) + (1 - b1) * g
      v = b2 * v.astype(jnp.float32) + (1 - b2) * g * g
      u = (m / c1) / (jnp.sqrt(v / c2) + eps)
      if wd and c.weight_decay:
        u = u + c.weight_decay * p
      return (-rate * u).astype(p.dtype), m.astype(dtype), v.astype(dtype)

    out = jax.tree.map(leaf, grads, state.mu, state.nu, params, decay)
    pick = lambda i: jax.tree.map(lambda t: t[i], out, is_leaf=lambda x: isinstance(x, tuple))
    return pick(0), AdamState(count, pick(1), pick(2))

  return optax.GradientTransformation(init, update)


def make_optimizer(c: OptimConfig, total_steps: int) -> tuple[optax.GradientTransformation,
                                                              optax.Schedule]:
  lr = schedule(c, total_steps)
  return adamw(c, lr), lr
