"""One call from weights on disk to a model ready to run, with its tokenizer and config.

    from bird_jax import load_pretrained
    model, tok, cfg = load_pretrained("Qwen-VL-Chat")         # an HF Qwen-VL folder
    model, tok, cfg = load_pretrained("runs/demo/train")      # a training workdir or an Orbax
                                                              # checkpoint folder (latest step)
    logits = model(tokens, images, attention_mask=mask)       # left- or right-padded batches

`dtype` sets the compute dtype ("float32", "bfloat16"); `mesh` places every parameter with the
sharding of the logical-axis table (bird_jax/sharding.py). Weights that hold NaN/inf are
refused (NonFiniteWeights). Safetensors only: pickle files are never loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from bird_jax.checkpoint.verify import NonFiniteWeights, tree_is_finite
from bird_jax.config import HF_CONFIG_FILE, QwenVLConfig, read_hf_config
from bird_jax.tokenizer import Tokenizer, load_tokenizer
from bird_jax.tree_paths import flatten


class Pretrained(NamedTuple):
  model: Any  # bird_jax.model.QwenVL
  tokenizer: Tokenizer
  config: QwenVLConfig


def load_pretrained(path: str | Path, *, dtype: str | None = None,
                    mesh: jax.sharding.Mesh | None = None, step: int | None = None,
                    adapters: str | Path | None = None) -> Pretrained:
  """The model, tokenizer and config of an HF Qwen-VL folder (config.json + safetensors) or of
  an Orbax checkpoint (a folder of steps, or a training workdir holding `checkpoints/`; `step`
  default: the latest, which `checkpoint_step(path)` names). `adapters`: a folder written by
  `convert lora-export`, attached to that base model (a LoRA run's own checkpoint needs none:
  its adapters come folded in)."""
  loaded = _load(Path(path), dtype, mesh, step)
  if adapters is None:
    return loaded
  from bird_jax.model import lora

  cfg, values = lora.load_adapters(adapters)
  return loaded._replace(model=lora.attach(loaded.model, cfg, values))


def _load(path: Path, dtype: str | None, mesh: jax.sharding.Mesh | None, step: int | None
          ) -> Pretrained:
  # a training workdir also holds a config.json (the run's): its checkpoints/ decide
  if (path / HF_CONFIG_FILE).is_file() and not (path / "checkpoints").is_dir():
    if step is not None:
      raise ValueError(f"{path}: an HF folder has no steps (step={step})")
    cfg, model = load_hf_model(path, mesh, dtype=dtype)
    return Pretrained(model, load_tokenizer(cfg, hf_dir=path), cfg)
  cfg, model = load_model(path, mesh, step=step, dtype=dtype)
  return Pretrained(model, load_tokenizer(cfg), cfg)


def _with_dtype(cfg: QwenVLConfig, dtype: str | None) -> QwenVLConfig:
  return cfg.replace(dtype=dtype).validate() if dtype else cfg


def _checked(params: Any, where: str) -> Any:
  if not tree_is_finite(params):
    raise NonFiniteWeights(f"{where}: the weights hold NaN/inf values; the model's answers "
                           "would be garbage (`python -m bird_jax.convert inspect` shows where)")
  return params


def load_hf_model(hf_dir: str | Path, mesh: jax.sharding.Mesh | None, *,
                  dtype: str | None = None):
  """(config, model) of an HF Qwen-VL folder, every tensor checked against the config first."""
  from flax import nnx

  from bird_jax.checkpoint import hf
  from bird_jax.checkpoint.orbax import abstract_params
  from bird_jax.checkpoint.safetensors_io import HFReader
  from bird_jax.model import abstract_model, model_from_params

  _, cfg = read_hf_config(hf_dir)
  cfg = _with_dtype(cfg, dtype)
  reader = HFReader(hf_dir)
  shapes = hf.param_shapes(nnx.state(abstract_model(cfg)))
  entries = hf.expected_tensors(cfg, shapes)
  hf.check_tensors({n: (t.shape, t.dtype) for n, t in reader.tensors.items()}, entries,
                   source=str(hf_dir))
  params = hf.hf_to_params(reader.get, entries, shapes)
  if mesh is not None:
    target = flatten(abstract_params(cfg, mesh))
    params = {p: jax.device_put(v, target[p].sharding) for p, v in params.items()}
  return cfg, model_from_params(cfg, _checked(params, str(hf_dir)))


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
               cfg: QwenVLConfig | None = None, dtype: str | None = None):
  """(config, model) from an Orbax checkpoint folder (a step root, or a training workdir with
  `checkpoints/`), parameters placed on `mesh` per the sharding rules. `cfg` replaces the
  checkpoint's model config; `dtype` its compute dtype (e.g. "bfloat16")."""
  from bird_jax.checkpoint import orbax as ockpt
  from bird_jax.model import lora, model_from_params

  manager = ockpt.checkpoint_manager(manager_root(ckpt), read_only=True)
  step = manager.latest_step() if step is None else step
  cfg = _with_dtype(cfg or ockpt.restore_config(manager, step), dtype)
  target = ockpt.abstract_params(cfg, mesh)
  reader = ockpt.ParamReader(manager, step)
  if lora.adapted_modules(reader.shapes):  # a LoRA run: adapters folded into their kernels
    _, read = ockpt.merged_reader(manager, reader)
    params = {p: jax.device_put(np.asarray(read(p), t.dtype), t.sharding)
              for p, t in flatten(target).items()}
  else:
    params = flatten(ockpt.restore_params(manager, target, step))
  return cfg, model_from_params(cfg, _checked(params, f"--ckpt {ckpt} step {step}"))
