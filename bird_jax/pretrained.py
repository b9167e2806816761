"""One call from weights on disk to a model ready to run, with its tokenizer and config.

    from bird_jax import load_pretrained
    model, tok, cfg = load_pretrained("Qwen-VL-Chat")         # an HF Qwen-VL folder
    model, tok, cfg = load_pretrained("runs/demo/train")      # a training workdir or an Orbax
                                                              # checkpoint folder (latest step)
    logits = model(tokens, images, attention_mask=mask)       # left- or right-padded batches

`dtype` sets the compute dtype ("float32", "bfloat16"); `mesh` places every parameter with the
sharding of the logical-axis table (bird_jax/sharding.py). Weights that hold NaN/inf are
refused (NonFiniteWeights). Safetensors only: pickle files are never loaded. Loading streams:
each tensor goes from disk straight into its place on the devices, after the names, shapes
and the memory needed have been checked (bird_jax/checkpoint/streaming.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import jax

from bird_jax.checkpoint.streaming import Source, hf_sources, orbax_sources, place
from bird_jax.config import HF_CONFIG_FILE, QwenVLConfig, read_hf_config
from bird_jax.tokenizer import Tokenizer, load_tokenizer
from bird_jax.tree_paths import flatten


class Pretrained(NamedTuple):
  model: Any  # bird_jax.model.QwenVL
  tokenizer: Tokenizer
  config: QwenVLConfig


def load_pretrained(path: str | Path, *, dtype: str | None = None,
                    param_dtype: str | None = None, mesh: jax.sharding.Mesh | None = None,
                    step: int | None = None, adapters: str | Path | None = None,
                    progress: bool = False) -> Pretrained:
  """The model, tokenizer and config of an HF Qwen-VL folder (config.json + safetensors) or of
  an Orbax checkpoint (a folder of steps, or a training workdir holding `checkpoints/`; `step`
  default: the latest, which `checkpoint_step(path)` names). `adapters`: a folder written by
  `convert lora-export`, attached to that base model (a LoRA run's own checkpoint needs none:
  its adapters come folded in). Parameters keep the dtype they are stored in (the release's
  bfloat16 stays bfloat16) unless `param_dtype` is given."""
  loaded = _load(Path(path), dtype, param_dtype, mesh, step, progress)
  if adapters is None:
    return loaded
  from bird_jax.model import lora

  cfg, values = lora.load_adapters(adapters)
  return loaded._replace(model=lora.attach(loaded.model, cfg, values))


def is_hf_folder(path: str | Path) -> bool:
  """An HF folder holds config.json; a training workdir does too, but its checkpoints/ decide."""
  path = Path(path)
  return (path / HF_CONFIG_FILE).is_file() and not (path / "checkpoints").is_dir()


def _load(path: Path, dtype: str | None, param_dtype: str | None,
          mesh: jax.sharding.Mesh | None, step: int | None, progress: bool) -> Pretrained:
  if is_hf_folder(path):
    if step is not None:
      raise ValueError(f"{path}: an HF folder has no steps (step={step})")
    cfg, model = load_hf_model(path, mesh, dtype=dtype, param_dtype=param_dtype,
                               progress=progress)
    return Pretrained(model, load_tokenizer(cfg, hf_dir=path), cfg)
  cfg, model = load_model(path, mesh, step=step, dtype=dtype, param_dtype=param_dtype,
                          progress=progress)
  return Pretrained(model, load_tokenizer(cfg), cfg)


def _as_stored(cfg: QwenVLConfig, sources: dict[str, Source], dtype: str | None,
               param_dtype: str | None) -> QwenVLConfig:
  """`cfg` with the compute dtype `dtype` (None: cfg's) and the parameter dtypes `param_dtype`
  or, by default, those the weights are stored in (the LLM's and the ViT's: the dtype of
  most of their bytes)."""
  def stored(prefix: str) -> str:
    nbytes: dict[str, int] = {}
    for p, s in sources.items():
      if p.startswith(prefix):
        nbytes[s.dtype.name] = nbytes.get(s.dtype.name, 0) + s.block_bytes * s.blocks
    return max(nbytes, key=nbytes.get)

  if param_dtype:
    cfg = cfg.replace(param_dtype=param_dtype, vision_param_dtype=None)
  else:
    llm, vision = stored("llm."), stored("visual.")
    cfg = cfg.replace(param_dtype=llm, vision_param_dtype=None if vision == llm else vision)
  return cfg.replace(dtype=dtype or cfg.dtype).validate()


def _placed(cfg: QwenVLConfig, sources: dict[str, Source], mesh: jax.sharding.Mesh | None,
            where: str, progress: bool):
  from bird_jax.checkpoint.orbax import abstract_params
  from bird_jax.model import model_from_params

  target = flatten(abstract_params(cfg, mesh))
  return cfg, model_from_params(cfg, place(target, sources, where=where, progress=progress))


def load_hf_model(hf_dir: str | Path, mesh: jax.sharding.Mesh | None, *,
                  dtype: str | None = None, param_dtype: str | None = None,
                  progress: bool = False):
  """(config, model) of an HF Qwen-VL folder: every tensor's name, shape and dtype checked
  against the config first, then streamed onto `mesh` one tensor at a time."""
  _, cfg = read_hf_config(hf_dir)
  sources = hf_sources(hf_dir, cfg)
  return _placed(_as_stored(cfg, sources, dtype, param_dtype), sources, mesh, str(hf_dir),
                 progress)


def manager_root(ckpt: str | Path) -> Path:
  root = Path(ckpt)
  if (root / "checkpoints").is_dir():
    root = root / "checkpoints"
  if not root.is_dir():
    raise FileNotFoundError(f"--ckpt {ckpt}: no such checkpoint folder")
  return root


def checkpoint_step(ckpt: str | Path, step: int | None = None) -> int | None:
  """The step `load_model` reads: `step`, or the latest of the checkpoint folder / workdir."""
  if step is not None:
    return step
  from bird_jax.checkpoint import orbax as ockpt

  return ockpt.checkpoint_manager(manager_root(ckpt), read_only=True).latest_step()


def load_model(ckpt: str | Path, mesh: jax.sharding.Mesh | None, *, step: int | None = None,
               cfg: QwenVLConfig | None = None, dtype: str | None = None,
               param_dtype: str | None = None, progress: bool = False):
  """(config, model) from an Orbax checkpoint folder (a step root, or a training workdir with
  `checkpoints/`), streamed onto `mesh` one parameter (one layer of a stacked one) at a time.
  `cfg` replaces the checkpoint's model config; `dtype` its compute dtype (e.g. "bfloat16");
  LoRA adapters come folded into their kernels."""
  from bird_jax.checkpoint import orbax as ockpt

  manager = ockpt.checkpoint_manager(manager_root(ckpt), read_only=True)
  step = manager.latest_step() if step is None else step
  cfg = cfg or ockpt.restore_config(manager, step)
  sources = orbax_sources(manager, step)
  return _placed(_as_stored(cfg, sources, dtype, param_dtype), sources, mesh,
                 f"--ckpt {ckpt} step {step}", progress)
