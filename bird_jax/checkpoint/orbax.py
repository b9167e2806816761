"""Orbax checkpoints: one `CheckpointManager` per run directory; every step holds named items

    params        model parameters: the nnx state as a nested dict ({'llm': {'wte': ...}})
    model_config  the QwenVLConfig (JSON)
    hf_source     where the weights came from (JSON: the HF config.json, each tensor's dtype,
                  the shard layout), written by `hf-to-jax`, used by `jax-to-hf`
    ...           anything a trainer adds (optimizer state, data-iterator state, the resolved
                  run config): pass their handlers to `checkpoint_manager(extra_handlers=...)`
                  and their args to `save(extra=...)`.

Parameters are restored onto any mesh: the target shardings come from the logical-axis table
(`bird_jax.sharding`), whatever sharding the arrays were saved with.

Large parameters can be saved without ever being whole in memory: a `StreamedArray` leaf is
written block by block (one layer of a stacked parameter at a time). `ParamReader` reads one
parameter, or one layer of it, back.

    mngr = checkpoint_manager("ckpt/run1", max_to_keep=3)
    save(mngr, step, params=nnx.state(model, nnx.Param).to_pure_dict(), config=cfg)
    params = restore_params(mngr, abstract_params(cfg, mesh))
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from etils import epath
from flax import nnx

from bird_jax.config import LLMConfig, QwenVLConfig, VisionConfig
from bird_jax.model import lora
from bird_jax.tree_paths import flatten, unflatten

PARAMS = "params"
MODEL_CONFIG = "model_config"
HF_SOURCE = "hf_source"
RUN_CONFIG = "train_config"  # the trainer's run config (JSON), e.g. a LoRA run's lora.rank/alpha
# Large arrays are stored in chunks of at most this many bytes (one layer of a stacked
# parameter per chunk where it fits) and written / read in row bands of about this size, one
# band at a time: the encoder's buffers stay small whatever the array or the core count.
CHUNK_BYTES = 64 * 2**20
# A StreamedArray up to this size is assembled in memory and written as one chunk.
SMALL_BYTES = 64 * 2**20


@dataclasses.dataclass(frozen=True)
class StreamedArray:
  """A parameter produced block by block along axis 0 (e.g. layer i of a stacked parameter):
  `block(i)` returns rows [i*shape[0]//blocks, (i+1)*shape[0]//blocks). Saved without ever
  holding more than one block."""

  shape: tuple[int, ...]
  dtype: np.dtype
  blocks: int
  block: Callable[[int], np.ndarray]

  @property
  def size(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64))

  @property
  def ndim(self) -> int:
    return len(self.shape)

  @property
  def nbytes(self) -> int:
    return self.size * np.dtype(self.dtype).itemsize


class _StreamingNumpyHandler(ocp.type_handlers.NumpyHandler):
  """NumpyHandler that also writes StreamedArray leaves block by block, and writes one leaf
  at a time (Orbax otherwise starts every leaf's write at once). The on-disk format is the
  NumpyHandler's, so any Orbax reader restores it (as numpy or as sharded jax.Array)."""

  def __init__(self):
    super().__init__(deepcopy_host_arrays=False)
    self._lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None

  def _serial(self) -> asyncio.Lock:
    """One lock per event loop (Orbax runs each save in a fresh loop)."""
    loop = asyncio.get_running_loop()
    if self._lock is None or self._lock[0] is not loop:
      self._lock = (loop, asyncio.Lock())
    return self._lock[1]

  async def _open_and_write(self, value: Any, tspec: dict, ts_context: ts.Context) -> None:
    async with self._serial():
      t = await ts.open(ts.Spec(tspec), create=True, open=True, context=ts_context)
      if not isinstance(value, StreamedArray):
        await _write_bands(t, np.asarray(value))
        return
      name = tspec["kvstore"].get("path")
      if value.nbytes <= SMALL_BYTES:
        whole = np.concatenate([_checked_block(value, i, name) for i in range(value.blocks)])
        await t.write(whole, can_reference_source_data_indefinitely=True)
        return
      rows = value.shape[0] // value.blocks
      for i in range(value.blocks):
        block = _checked_block(value, i, name)
        await _write_bands(t, block, offset=i * rows)
        del block


def _checked_block(value: StreamedArray, i: int, name: str) -> np.ndarray:
  block = np.asarray(value.block(i))
  want = (value.shape[0] // value.blocks,) + tuple(value.shape[1:])
  if block.shape != want or block.dtype != np.dtype(value.dtype):
    raise ValueError(f"{name}: block {i} is {block.dtype}{list(block.shape)}, expected "
                     f"{np.dtype(value.dtype)}{list(want)}")
  return block


def _row_bands(shape: tuple[int, ...], itemsize: int, chunk_rows: int) -> list[tuple[int, int]]:
  """[a, b) ranges over axis 0, whole chunks, about CHUNK_BYTES each."""
  row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * itemsize)
  step = max(1, (CHUNK_BYTES // row_bytes) // chunk_rows) * chunk_rows
  return [(a, min(a + step, shape[0])) for a in range(0, shape[0], step)]


async def _write_bands(t: ts.TensorStore, value: np.ndarray, offset: int = 0) -> None:
  """Writes `value` at rows [offset, offset + len) one band at a time."""
  if value.ndim == 0 or value.nbytes <= CHUNK_BYTES:
    whole = value.ndim == 0 or value.shape == tuple(t.shape)
    target = t if whole else t[offset:offset + len(value)]
    await target.write(value, can_reference_source_data_indefinitely=True)
    return
  chunk_rows = int(t.chunk_layout.write_chunk.shape[0])
  for a, b in _row_bands(value.shape, value.dtype.itemsize, chunk_rows):
    await t[offset + a:offset + b].write(value[a:b])


def type_handler_registry() -> Any:
  """Orbax's standard leaf handlers, numpy/StreamedArray leaves through the streaming one."""
  streaming = _StreamingNumpyHandler()
  scalar = ocp.type_handlers.ScalarHandler()
  return ocp.type_handlers.create_type_handler_registry(
      (int, scalar), (float, scalar), (np.number, scalar),
      (StreamedArray, streaming), (np.ndarray, streaming),
      (jax.Array, ocp.type_handlers.ArrayHandler()),
      (str, ocp.type_handlers.StringHandler()))


def checkpoint_manager(directory: str | os.PathLike, *, max_to_keep: int | None = None,
                       save_interval_steps: int = 1, async_save: bool = False,
                       read_only: bool = False, compress: bool = True,
                       extra_handlers: Mapping[str, ocp.CheckpointHandler] | None = None
                       ) -> ocp.CheckpointManager:
  """The run's CheckpointManager with handlers for params / model_config / hf_source, plus
  `extra_handlers` (e.g. {"opt_state": ocp.StandardCheckpointHandler(),
  "data_iter": grain.checkpoint.CheckpointHandler(),
  "train_config": ocp.JsonCheckpointHandler()}). compress: params written with zstd (about
  22% smaller for bf16 weights, half the write speed; readers take either). A read-only
  manager (for loading) is opened without Orbax's warnings about being read-only."""
  handlers = {PARAMS: ocp.PyTreeCheckpointHandler(type_handler_registry=type_handler_registry(),
                                                  use_compression=compress),
              MODEL_CONFIG: ocp.JsonCheckpointHandler(), HF_SOURCE: ocp.JsonCheckpointHandler(),
              RUN_CONFIG: ocp.JsonCheckpointHandler(),
              **(extra_handlers or {})}
  options = ocp.CheckpointManagerOptions(
      max_to_keep=None if read_only else max_to_keep,
      save_interval_steps=0 if read_only else save_interval_steps,  # else Orbax warns of it
      enable_async_checkpointing=async_save, read_only=read_only, create=not read_only)
  with _without_orbax_warning("Given directory is read only"):  # what read_only asks for
    return ocp.CheckpointManager(epath.Path(directory).absolute(), options=options,
                                 item_handlers=handlers)


@contextlib.contextmanager
def _without_orbax_warning(prefix: str):
  """Drops the absl log records whose message starts with `prefix` while the block runs:
  Orbax's warnings about what a reader asked for on purpose, not every warning."""

  class Drop(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
      return not str(record.msg).startswith(prefix)

  from absl import logging as absl_logging

  logger, drop = absl_logging.get_absl_logger(), Drop()
  logger.addFilter(drop)
  try:
    yield
  finally:
    logger.removeFilter(drop)


def _save_args(leaf: Any) -> ocp.SaveArgs:
  """Chunking: a large StreamedArray gets (at most) one block per chunk, so each block is
  encoded and written once; other large arrays get chunks of at most CHUNK_BYTES, split along
  axis 0 first (so row bands are whole chunks)."""
  nbytes = int(np.prod(leaf.shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
  if isinstance(leaf, StreamedArray) and leaf.nbytes > SMALL_BYTES and leaf.blocks > 1:
    return ocp.SaveArgs(chunk_byte_size=min(nbytes // leaf.blocks, CHUNK_BYTES), shard_axes=(0,))
  if nbytes > CHUNK_BYTES:
    return ocp.SaveArgs(chunk_byte_size=CHUNK_BYTES, shard_axes=(0,))
  return ocp.SaveArgs()


def save(manager: ocp.CheckpointManager, step: int, *, params: Mapping[str, Any],
         config: QwenVLConfig | None = None, hf_source: Mapping[str, Any] | None = None,
         extra: Mapping[str, Any] | None = None, force: bool = False) -> bool:
  """Saves one step. params: nested dict (or {dotted path: leaf}) of jax.Array / np.ndarray /
  StreamedArray; extra: item name -> ocp.args (handlers registered via `extra_handlers`).
  Returns whether the manager saved (its interval policy may skip a step)."""
  if params and all(isinstance(k, str) and "." in k for k in params):
    params = unflatten(params)
  params = dict(params)
  is_leaf = lambda x: isinstance(x, StreamedArray)
  args = {PARAMS: ocp.args.PyTreeSave(
      params, save_args=jax.tree.map(_save_args, params, is_leaf=is_leaf))}
  if config is not None:
    args[MODEL_CONFIG] = ocp.args.JsonSave(config_to_dict(config))
  if hf_source is not None:
    args[HF_SOURCE] = ocp.args.JsonSave(dict(hf_source))
  args.update(extra or {})
  return manager.save(step, args=ocp.args.Composite(**args), force=force)


# ---- restore ---------------------------------------------------------------------------------

def abstract_params(cfg: QwenVLConfig, mesh: jax.sharding.Mesh | None = None,
                    dtype: Any = None) -> dict[str, Any]:
  """The model's parameters as a nested dict of ShapeDtypeStruct (no memory), each with the
  NamedSharding the logical-axis table gives it on `mesh` (None: unsharded). dtype overrides
  the model's own parameter dtypes."""
  from bird_jax.model import abstract_model
  from bird_jax.sharding import param_specs

  state = nnx.state(abstract_model(cfg))
  specs = flatten(param_specs(state)) if mesh is not None else {}
  out = {}
  for path, leaf in flatten(state).items():
    sharding = jax.sharding.NamedSharding(mesh, specs[path]) if mesh is not None else None
    out[path] = jax.ShapeDtypeStruct(leaf.shape, dtype or leaf.dtype, sharding=sharding)
  return unflatten(out)


def _latest(manager: ocp.CheckpointManager, step: int | None) -> int:
  step = manager.latest_step() if step is None else step
  if step is None or step not in manager.all_steps():
    raise FileNotFoundError(f"{manager.directory}: no checkpoint step "
                            f"{'found' if step is None else step} (steps: {manager.all_steps()})")
  return step


def step_files(root: str | os.PathLike, step: int | None = None,
               items: tuple[str, ...] = (PARAMS, MODEL_CONFIG, HF_SOURCE, RUN_CONFIG)
               ) -> list[Path]:
  """The files of step `step` (default: the newest) of a checkpoint folder that hold `items`
  (by default what a reader of the weights reads), and the step's own metadata files: the
  bytes a model loaded from it depends on (a run's manifest hashes them)."""
  root = Path(root)
  if step is None:
    steps = [int(p.name) for p in root.iterdir() if p.name.isdigit() and p.is_dir()]
    if not steps:
      raise FileNotFoundError(f"{root}: no checkpoint step")
    step = max(steps)
  folder = root / str(step)
  return sorted(p for p in folder.rglob("*") if p.is_file() and (
      p.parent == folder or p.relative_to(folder).parts[0] in items))


def restore_params(manager: ocp.CheckpointManager, target: Mapping[str, Any],
                   step: int | None = None) -> dict[str, Any]:
  """Restores `params` onto the shardings (and dtypes) of `target` (e.g. `abstract_params(cfg,
  mesh)`), whatever layout they were saved with. Returns the nested dict of jax.Array."""
  step = _latest(manager, step)
  target = dict(target)
  restore_args = ocp.checkpoint_utils.construct_restore_args(target)
  out = manager.restore(step, args=ocp.args.Composite(
      **{PARAMS: ocp.args.PyTreeRestore(target, restore_args=restore_args)}))
  return out[PARAMS]


def restore_json(manager: ocp.CheckpointManager, item: str, step: int | None = None
                 ) -> dict[str, Any] | None:
  """A JSON item of a step (None when that step has no such item)."""
  step = _latest(manager, step)
  if not (epath.Path(manager.directory) / str(step) / item).exists():
    return None
  return manager.restore(step, args=ocp.args.Composite(**{item: ocp.args.JsonRestore()}))[item]


def adapter_config(manager: ocp.CheckpointManager, step: int | None = None) -> lora.LoRAConfig:
  """The LoRA settings of the run that wrote a step holding adapters (from its run config)."""
  settings = (restore_json(manager, RUN_CONFIG, step) or {}).get("lora") or {}
  if not settings.get("rank"):
    raise ValueError(f"{manager.directory}: step {_latest(manager, step)} holds LoRA adapters but "
                     f"no {RUN_CONFIG} with lora.rank and lora.alpha (their scale)")
  return lora.LoRAConfig.from_dict(settings).validate()


def restore_config(manager: ocp.CheckpointManager, step: int | None = None) -> QwenVLConfig:
  d = restore_json(manager, MODEL_CONFIG, step)
  if d is None:
    raise FileNotFoundError(f"{manager.directory}: step {_latest(manager, step)} has no "
                            f"{MODEL_CONFIG} item; save it with save(..., config=cfg)")
  return config_from_dict(d)


def config_to_dict(cfg: QwenVLConfig) -> dict[str, Any]:
  return dataclasses.asdict(cfg)


def config_from_dict(d: Mapping[str, Any]) -> QwenVLConfig:
  d = dict(d)
  return QwenVLConfig(vision=VisionConfig(**d.pop("vision")), llm=LLMConfig(**d.pop("llm")),
                      **d).validate()


def item_metadata(manager: ocp.CheckpointManager, step: int, item: str = PARAMS) -> Any:
  """The saved metadata of one item of a step (None when the step has no such item). The
  params item is read by its own handler: the manager's `item_metadata` reads every item of
  the step and warns about each one it has no handler for (a trainer's optimizer and data
  state, when a checkpoint is opened for inference)."""
  if item != PARAMS:
    return manager.item_metadata(step)[item]
  path = epath.Path(manager.directory) / str(step) / item
  if not path.exists():
    return None
  return ocp.PyTreeCheckpointHandler(type_handler_registry=type_handler_registry()).metadata(path)


class ParamReader:
  """Reads one saved parameter, or one layer of a stacked one, at a time (tensorstore on the
  Orbax files): `read(path)`, `read(path, layer)`. Nothing else is loaded. `item` names
  another array item of the step (e.g. a trainer's optimizer state)."""

  def __init__(self, manager: ocp.CheckpointManager, step: int | None = None,
               item: str = PARAMS):
    self.step = _latest(manager, step)
    meta = item_metadata(manager, self.step, item)
    if meta is None:
      raise FileNotFoundError(f"{manager.directory}: step {self.step} has no {item} item")
    self.use_zarr3 = bool(getattr(meta, "use_zarr3", False))
    tree = getattr(meta, "tree", meta)
    self.arrays = {path: m for path, m in flatten(tree).items()}
    self._context = ocp.type_handlers.get_ts_context(use_ocdbt=True)
    self._stores: dict[str, ts.TensorStore] = {}

  @property
  def shapes(self) -> dict[str, tuple[int, ...]]:
    return {p: tuple(m.shape) for p, m in self.arrays.items()}

  @property
  def dtypes(self) -> dict[str, np.dtype]:
    return {p: np.dtype(m.dtype) for p, m in self.arrays.items()}

  def _open(self, path: str) -> ts.TensorStore:
    """The array's tensorstore, opened once (reads of its layers reuse it)."""
    if path not in self._stores:
      self._stores[path] = self._open_new(path)
    return self._stores[path]

  def _open_new(self, path: str) -> ts.TensorStore:
    if path not in self.arrays:
      raise KeyError(f"parameter {path!r} is not in the checkpoint")
    m = self.arrays[path]
    directory = epath.Path(m.directory)
    ocdbt = ocp.type_handlers.is_ocdbt_checkpoint(directory)
    info = ocp.type_handlers.ParamInfo(name=m.name, parent_dir=directory,
                                       is_ocdbt_checkpoint=ocdbt, use_zarr3=self.use_zarr3,
                                       ts_context=self._context)
    spec = ocp.type_handlers.get_json_tspec_read(info, use_ocdbt=ocdbt)
    return ts.open(spec, context=self._context).result()

  def read(self, path: str, layer: int | None = None) -> np.ndarray:
    """The parameter (layer None) or its `layer`-th slice along axis 0, read in row bands into
    one preallocated array."""
    t = self._open(path)
    if layer is not None:
      t = t[layer]
    dtype = np.dtype(t.dtype.numpy_dtype)
    nbytes = int(np.prod(t.shape, dtype=np.int64)) * dtype.itemsize
    if t.rank == 0 or nbytes <= CHUNK_BYTES:
      return np.asarray(t.read().result())
    out = np.empty(tuple(t.shape), dtype)
    chunk_rows = int(t.chunk_layout.read_chunk.shape[0])
    for a, b in _row_bands(out.shape, dtype.itemsize, chunk_rows):
      out[a:b] = t[a:b].read().result()
    return out


def merged_reader(manager: ocp.CheckpointManager, reader: ParamReader
                  ) -> tuple[dict[str, tuple[int, ...]], Callable[[str, int | None], np.ndarray]]:
  """(parameter shapes, read(path, layer)) of a checkpoint, LoRA adapters folded into their
  kernels (bird_jax/model/lora.py) with the scale alpha / rank of the run that trained them."""
  adapted = lora.adapted_modules(reader.shapes)
  if not adapted:
    return reader.shapes, reader.read
  scale = adapter_config(manager, reader.step).scale

  def read(path: str, layer: int | None = None) -> np.ndarray:
    x = reader.read(path, layer)
    module = path.rsplit(".", 1)[0]
    if path.endswith(".kernel") and module in adapted:
      x = lora.merge_kernel(x, reader.read(f"{module}.{lora.A}", layer),
                            reader.read(f"{module}.{lora.B}", layer), scale)
    return x

  shapes = {p: s for p, s in reader.shapes.items() if not lora.is_adapter(p)}
  return shapes, read
