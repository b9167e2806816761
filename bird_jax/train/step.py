"""The train state and ONE jitted train step (sharded in/out, donated state).

State = {"step", "params" (trainable only, fp32 masters), "opt" (optax state)}; the frozen
parameters live beside it, never differentiated, never updated, never donated.
A step takes a batch with a leading gradient-accumulation axis [A, B, ...] and performs one
optimizer update on the token-weighted mean loss over all A x B rows.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from bird_jax.data.image import normalize
from bird_jax.sharding import logical_to_spec
from bird_jax.train.loss import lm_loss_stats
from bird_jax.tree_paths import dotted
from bird_jax.vocabulary import IGNORE_ID

BATCH_KEYS = ("tokens", "labels", "positions", "segment_ids", "images")


@dataclasses.dataclass(frozen=True)
class StepConfig:
  loss_chunk: int = 0  # sequence chunk for the loss (0 = whole sequence at once)


def loss_fn(graphdef: nnx.GraphDef, params: Any, frozen: Any, batch: dict[str, jax.Array],
            total_tokens: jax.Array, loss_chunk: int) -> tuple[jax.Array, dict[str, jax.Array]]:
  model = nnx.merge(graphdef, params, frozen)
  h = model.hidden(batch["tokens"], normalize(batch["images"]), positions=batch["positions"],
                   segment_ids=batch["segment_ids"], train=True)
  stats = lm_loss_stats(h, model.llm.logits, batch["labels"], loss_chunk)
  return stats["nll"] / total_tokens, stats


# Parameters of scanned layer stacks: each is used by exactly one matmul (or elementwise op)
# per layer and micro-batch, always cast to the compute dtype first.
LAYER_STACKS = re.compile(r"^(llm\.h|visual\.blocks)\.")


def compute_copy(params: Any, dtype: Any) -> Any:
  """Layer-stack parameters cast to the compute dtype, others untouched.

  Differentiating with respect to this copy gives the same gradients as with respect to the fp32
  masters (the cast's cotangent is already in the compute dtype), while the backward pass then
  produces layer gradients in the compute dtype and XLA keeps one low-precision copy of the
  weights instead of one per loop (forward, recomputation).
  """
  return jax.tree_util.tree_map_with_path(
      lambda p, x: x.astype(dtype) if LAYER_STACKS.search(dotted(p)) else x, params)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    lr: optax.Schedule, c: StepConfig, compute_dtype: Any = jnp.float32
                    ) -> Callable:
  """train_step(state, frozen, batch) -> (state, metrics); not yet jitted (see `jit_step`)."""

  def train_step(state: dict[str, Any], frozen: Any, batch: dict[str, jax.Array]):
    batch = {k: batch[k] for k in BATCH_KEYS}
    total = jnp.maximum((batch["labels"][..., 1:] != IGNORE_ID).sum(), 1).astype(jnp.float32)
    grad_fn = jax.grad(loss_fn, argnums=1, has_aux=True)
    params = compute_copy(state["params"], compute_dtype)

    def micro(carry, mb):
      grads, stats = carry
      g, s = grad_fn(graphdef, params, frozen, mb, total, c.loss_chunk)
      add = lambda acc, x: acc + x.astype(acc.dtype)
      return (jax.tree.map(add, grads, g), jax.tree.map(jnp.add, stats, s)), None

    zeros = jax.tree.map(jnp.zeros_like, state["params"])
    zero_stats = {k: jnp.zeros((), jnp.float32) for k in ("nll", "correct", "count")}
    (grads, stats), _ = jax.lax.scan(micro, (zeros, zero_stats), batch)
    updates, opt = tx.update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {"loss": stats["nll"] / total, "accuracy": stats["correct"] / total,
               "tokens": stats["count"], "grad_norm": optax.tree.norm(grads),
               "param_norm": optax.tree.norm(params), "lr": lr(state["step"])}
    return {"step": state["step"] + 1, "params": params, "opt": opt}, metrics

  return train_step


def batch_sharding(mesh: jax.sharding.Mesh) -> Callable[[int], NamedSharding]:
  """Sharding of a batch array of rank r with layout [A, B, ...]: rows over ('data', 'fsdp')."""
  rows = logical_to_spec(("batch",), mesh_axes=mesh.axis_names)[0]
  return lambda rank: NamedSharding(mesh, P(None, rows, *([None] * (rank - 2))))


def opt_shardings(tx: optax.GradientTransformation, opt_abstract: Any, param_shardings: Any,
                  mesh: jax.sharding.Mesh) -> Any:
  """Optimizer-state shardings by tree structure: every copy of the parameter tree inside the
  state (Adam's moments) takes the parameters' shardings; everything else (counts) is
  replicated."""
  replicated = NamedSharding(mesh, P())
  return optax.tree_map_params(
      tx, lambda _, s: s, opt_abstract, param_shardings,
      transform_non_params=lambda _: replicated,
      is_leaf=lambda x: isinstance(x, (NamedSharding, jax.ShapeDtypeStruct)))


def jit_step(train_step: Callable, state_shardings: Any, frozen_shardings: Any,
             mesh: jax.sharding.Mesh) -> Callable:
  """jax.jit with explicit in/out shardings; the state is donated (updated in place)."""
  shard_batch = batch_sharding(mesh)
  batch_shardings = {k: shard_batch(6 if k == "images" else 3) for k in BATCH_KEYS}
  return jax.jit(train_step, in_shardings=(state_shardings, frozen_shardings, batch_shardings),
                 out_shardings=(state_shardings, NamedSharding(mesh, P())), donate_argnums=(0,))
