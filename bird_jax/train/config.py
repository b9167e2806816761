"""The run configuration: one `ml_collections.ConfigDict` schema with defaults.

Files in configs/ start from `default_config()` and change what they need; every field can be
overridden on the command line (`--config.optim.lr=1e-5`). The typed configs the library
uses (QwenVLConfig, DataConfig, OptimConfig, ...) are built from it here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any

import ml_collections

from bird_jax.config import QwenVLConfig, get_preset
from bird_jax.exit_codes import BadInput, refusing
from bird_jax.data.pipeline import DataConfig
from bird_jax.model.lora import LoRAConfig
from bird_jax.train.optimizer import BIRD_FREEZE, OptimConfig
from bird_jax.train.step import StepConfig


def _fields(cls: type) -> dict[str, Any]:
  out = {}
  for f in dataclasses.fields(cls):
    if f.default is not dataclasses.MISSING:
      out[f.name] = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
      out[f.name] = f.default_factory()  # type: ignore[misc]
  return out


def load_config_file(path: str | os.PathLike, arg: str | None = None
                     ) -> ml_collections.ConfigDict:
  """`get_config()` of a Python config file (`configs/*.py`); `get_config(arg)` for a variant
  (what `--config=FILE:arg` selects)."""
  spec = importlib.util.spec_from_file_location("config_file", path)
  if spec is None or spec.loader is None:
    raise FileNotFoundError(f"{path}: not a Python config file")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config() if arg is None else module.get_config(arg)


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # model: a preset by name plus field overrides, e.g. model.overrides.remat = "full",
  # model.overrides.llm.layers = 4 (nested for the vision/llm sub-configs).
  c.model = ml_collections.ConfigDict({"preset": "tiny", "overrides": {}})
  # initialisation: an HF Qwen-VL folder (converted on the fly), an Orbax params checkpoint,
  # or random weights (both empty); keep_positions: random weights whose resampler starts out
  # pooling image token k from patch k (needs as many queries as patches); vit_positions > 0:
  # the ViT's positions start as 2-D sin-cos times that scale (docs/training.md)
  c.init = ml_collections.ConfigDict({"hf": "", "ckpt": "", "seed": 0,
                                      "keep_positions": False, "vit_positions": 0.0})
  c.data = ml_collections.ConfigDict({k: (list(v) if isinstance(v, tuple) else v)
                                      for k, v in _fields(DataConfig).items()})
  c.data.shards = ""
  c.optim = ml_collections.ConfigDict(_fields(OptimConfig))
  c.optim.grad_accum = 1  # micro-batches (of data.batch_size rows) per optimizer step
  c.freeze = tuple(BIRD_FREEZE)  # regexes of parameter paths that are not trained
  # LoRA (rank > 0): adapters on the linear layers whose module path matches `targets` are
  # trained, every base parameter is frozen in its stored dtype (docs/training.md)
  c.lora = ml_collections.ConfigDict(_fields(LoRAConfig))
  c.step = ml_collections.ConfigDict(_fields(StepConfig))
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  c.train = ml_collections.ConfigDict({
      "workdir": "runs/default",
      "steps": 100,  # optimizer steps (the schedule's length)
      "log_every": 10,
      "ckpt_every": 500,  # also at the end, on SIGTERM/SIGINT and at max_minutes
      "max_minutes": 0.0,  # stop and save after this many minutes of training (0: no limit)
      # stop and save after this step (0: at train.steps); the schedule still spans
      # train.steps: a part of a run, as `python -m bird_jax.audit --replay` replays one
      "stop_step": 0,
      "keep": 3,  # checkpoints kept
      "resume": True,  # continue from the newest usable checkpoint in workdir (docs/faults.md)
      "resume_step": -1,  # resume from exactly this step (-1: the newest usable one)
      "overwrite": False,  # with resume=false: move an earlier run in workdir to previous/
      # start from step 0 although rejected/ or previous/ hold later checkpoint steps
      "allow_rollback": False,
      # several processes: a process silent this long is dead and the others stop (seconds;
      # 0: $JAX_HEARTBEAT_TIMEOUT_SECONDS, else bird_jax/distributed.py's HEARTBEAT_S, 15)
      "heartbeat_timeout_s": 0,
      "peak_tflops": 0.0,  # per device, for MFU (0 = do not report MFU)
      "replication_tolerance": 0.02,
      "tensorboard": True,
  })
  return c


def model_config(c: ml_collections.ConfigDict) -> QwenVLConfig:
  """The preset with the overrides applied; an unknown preset or override field, or a value
  the model refuses, is BadInput naming model.preset / model.overrides."""
  with refusing(KeyError, where="model.preset"):
    base = get_preset(c.model.preset)
  over = c.model.overrides.to_dict() if hasattr(c.model.overrides, "to_dict") else dict(c.model.overrides)
  with refusing(TypeError, ValueError, where="model.overrides"):
    sub = {k: dataclasses.replace(getattr(base, k), **over.pop(k)) for k in ("vision", "llm")
           if k in over}
    return base.replace(**over, **sub).validate()


def check_init(c: ml_collections.ConfigDict) -> None:
  """A run starts from init.hf, init.ckpt or random weights: at most one of the two is set."""
  if c.init.hf and c.init.ckpt:
    raise BadInput(f"init.hf ({c.init.hf}) and init.ckpt ({c.init.ckpt}) are both set; a run "
                   "starts from one of them (or from random weights: neither)")


def data_config(c: ml_collections.ConfigDict, validate: bool = True) -> DataConfig:
  d = DataConfig(**c.data.to_dict())
  return d.validate() if validate else d


def optim_config(c: ml_collections.ConfigDict) -> OptimConfig:
  return OptimConfig(**{k: v for k, v in c.optim.to_dict().items() if k != "grad_accum"})


def lora_config(c: ml_collections.ConfigDict) -> LoRAConfig | None:
  """The run's adapters, or None for a full fine-tune (lora.rank 0)."""
  lora = LoRAConfig.from_dict(c.lora.to_dict())
  return lora.validate() if lora.rank else None


def step_config(c: ml_collections.ConfigDict) -> StepConfig:
  return StepConfig(**c.step.to_dict())
