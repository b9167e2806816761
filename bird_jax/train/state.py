"""Building the sharded train state: abstract split, shardings, initial parameters.

Nothing full-size is materialised on one host: random init runs under `jax.jit` with the
target out_shardings, and loaded parameters are placed on the mesh one array at a time.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from bird_jax.checkpoint.streaming import Source, hf_sources, place
from bird_jax.config import QwenVLConfig, read_hf_config
from bird_jax.model import QwenVL
from bird_jax.model.lora import Adapter, LoRAConfig, add_adapters
from bird_jax.sharding import check_replication, named_shardings, param_specs
from bird_jax.train.optimizer import trainable_filter
from bird_jax.tree_paths import dotted, flatten
from bird_jax.train.step import opt_shardings


@dataclasses.dataclass
class Layout:
  """What the trainer needs to know before any array exists."""

  graphdef: nnx.GraphDef
  abstract_params: Any  # trainable (nnx.State of ShapeDtypeStruct)
  abstract_frozen: Any  # everything else: frozen params, buffers
  state_shardings: dict[str, Any]  # {"step", "params", "opt"}
  frozen_shardings: Any
  abstract_state: dict[str, Any]


def split_filters(freeze, lora: LoRAConfig | None = None) -> tuple[Callable, Any]:
  return trainable_filter(freeze, adapters=lora is not None), ...


def build_model(cfg: QwenVLConfig, lora: LoRAConfig | None = None, seed: int | None = None
                ) -> QwenVL:
  """The run's model (with its adapters for a LoRA run): random weights from `seed`, or
  abstract (ShapeDtypeStruct leaves, nothing allocated) when seed is None."""
  def build(s: int) -> QwenVL:
    model = QwenVL(cfg, rngs=nnx.Rngs(s))
    return model if lora is None else add_adapters(model, lora)

  return nnx.eval_shape(lambda: build(0)) if seed is None else build(seed)


def make_layout(cfg: QwenVLConfig, freeze, tx: optax.GradientTransformation,
                mesh: jax.sharding.Mesh, replication_tolerance: float = 0.02,
                lora: LoRAConfig | None = None) -> Layout:
  model = build_model(cfg, lora)
  graphdef, params, frozen = nnx.split(model, *split_filters(freeze, lora))
  if lora is not None:
    left = sorted(set(flatten(nnx.state(model, Adapter))) - set(flatten(params)))
    if left:
      raise ValueError(f"lora.targets put adapters on frozen layers ({left[0]}, ...): narrow "
                       "the targets or the freeze patterns")
  if not jax.tree.leaves(params):
    raise ValueError(f"freeze patterns {list(freeze)} leave no parameter to train")
  p_sh = named_shardings(param_specs(params, mesh), mesh)
  f_sh = named_shardings(param_specs(frozen, mesh), mesh)
  check_replication(params, param_specs(params, mesh), mesh, replication_tolerance)
  check_replication(frozen, param_specs(frozen, mesh), mesh, replication_tolerance)
  opt_abstract = jax.eval_shape(tx.init, params)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state_sh = {"step": replicated, "params": p_sh, "opt": opt_shardings(tx, opt_abstract, p_sh, mesh)}
  abstract_state = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": params,
                    "opt": opt_abstract}
  return Layout(graphdef, params, frozen, state_sh, f_sh, abstract_state)


def random_params(cfg: QwenVLConfig, freeze, layout: Layout, seed: int,
                  lora: LoRAConfig | None = None, keep_positions: bool = False,
                  vit_positions: float = 0.0) -> tuple[Any, Any]:
  """Freshly initialised (trainable, frozen), created directly with their shardings;
  `keep_positions`: the resampler starts out pooling image token k from patch k
  (`Resampler.keep_positions`); `vit_positions` > 0: the ViT's positions start as the 2-D
  sin-cos embedding times that scale (`VisionTower.sincos_positions`)."""

  def init():
    model = build_model(cfg, lora, seed)
    if keep_positions:
      model.visual.attn_pool.keep_positions()
    if vit_positions:
      model.visual.sincos_positions(vit_positions)
    _, params, frozen = nnx.split(model, *split_filters(freeze, lora))
    return params, frozen

  return jax.jit(init, out_shardings=(layout.state_shardings["params"],
                                      layout.frozen_shardings))()


def fresh_adapters(cfg: QwenVLConfig, lora: LoRAConfig) -> dict[str, Any]:
  """{dotted path: array}: the adapters a LoRA run starts from (`lora_b` zero; they do not
  depend on the base weights, whose initialisation XLA drops as unused)."""
  return jax.device_get(jax.jit(lambda: flatten(nnx.state(build_model(cfg, lora, 0), Adapter)))())


def place_params(abstract: Any, shardings: Any, get: Callable[[str], Any]) -> Any:
  """An nnx.State like `abstract` whose leaves are `get(dotted path)`, cast to the abstract
  dtype and put on the mesh one array at a time."""
  flat = dict(nnx.to_flat_state(abstract))
  sh = dict(nnx.to_flat_state(shardings))
  for key, var in flat.items():
    path = dotted(key)
    value = get(path)
    if tuple(value.shape) != tuple(var.shape):
      raise ValueError(f"{path}: shape {tuple(value.shape)}, the model expects {tuple(var.shape)}")
    var.set_value(jax.device_put(jnp.asarray(value, var.dtype), sh[key].get_value()))
  return nnx.from_flat_state(flat)


def loaded_params(layout: Layout, sources: Mapping[str, Source], where: str) -> tuple[Any, Any]:
  """(trainable, frozen) streamed from `sources` ({path: Source} of an HF folder or an Orbax
  checkpoint, bird_jax/checkpoint/streaming.py) onto the layout's shardings, each parameter
  cast to the layout's dtype one block at a time."""
  return (_streamed(layout.abstract_params, layout.state_shardings["params"], sources, where),
          _streamed(layout.abstract_frozen, layout.frozen_shardings, sources, where))


def _streamed(abstract: Any, shardings: Any, sources: Mapping[str, Source], where: str) -> Any:
  flat = dict(nnx.to_flat_state(abstract))
  sh = dict(nnx.to_flat_state(shardings))
  target = {dotted(k): jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sh[k].get_value())
            for k, v in flat.items()}
  placed = place(target, {p: s for p, s in sources.items() if p in target}, where=where)
  for key, var in flat.items():
    var.set_value(placed[dotted(key)])
  return nnx.from_flat_state(flat)


def initial_state(params: Any, tx: optax.GradientTransformation, layout: Layout) -> dict[str, Any]:
  opt = jax.jit(tx.init, out_shardings=layout.state_shardings["opt"])(params)
  step = jax.device_put(jnp.zeros((), jnp.int32), layout.state_shardings["step"])
  return {"step": step, "params": params, "opt": opt}


def param_paths(state: Any) -> list[str]:
  return [dotted(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]


def hf_param_sources(hf_dir: str, cfg: QwenVLConfig) -> dict[str, Source]:
  """{path: Source} of an HF Qwen-VL folder (safetensors only) for the run's model config,
  which its config.json must describe (`loaded_params` streams them onto the mesh)."""
  _, hf_cfg = read_hf_config(hf_dir)
  if (hf_cfg.vision, hf_cfg.llm, hf_cfg.image_start_id) != (cfg.vision, cfg.llm, cfg.image_start_id):
    raise ValueError(f"{hf_dir}/config.json describes another architecture than the run's model "
                     f"config:\n  checkpoint: {hf_cfg.vision}, {hf_cfg.llm}\n  run: {cfg.vision}, "
                     f"{cfg.llm}")
  return hf_sources(hf_dir, cfg)