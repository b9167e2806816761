"""Weights from disk onto devices one block at a time: the one path by which `load_pretrained`
(and so eval, serve and chat) and a training run's initial weights are loaded.

A `Source` is one parameter as stored: its shape, its stored dtype, `read(i)` (block i as
stored: one layer of a stacked parameter, the whole array otherwise) and `to_model`, the
change of layout into the model's (HF tensors are transposed, heads split). `hf_sources`
makes them from an HF folder (each block a memory-mapped safetensors tensor), `orbax_sources`
from an Orbax step (one tensorstore slice per block). `place` checks every name and shape
against the target, then the memory the target needs against what the devices (and, for CPU
devices, the host) have free, and only then reads: each block is copied to the devices as
stored, put into the model's layout and dtype there and written into its slot of the
parameter's buffer, which is allocated once with the target sharding and updated in place
(the old buffer is donated); each parameter is then checked for NaN/inf on the devices. The
host holds one stored block at a time beside what CPU devices keep.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from bird_jax.checkpoint import hf
from bird_jax.checkpoint.safetensors_io import DTYPES
from bird_jax.checkpoint.verify import NonFiniteWeights

GB = 1e9


@dataclasses.dataclass(frozen=True)
class Source:
  """One stored parameter of the model shape `shape`, in `blocks` equal row bands along axis 0
  (one per layer of a stacked parameter): `read(i)` is block i as stored (a file's layout,
  e.g. a memory-mapped safetensors tensor) and `to_model(x)` turns it, on the device, into the
  model's layout (jnp operations: a transpose, a split of heads; None: already in it)."""

  shape: tuple[int, ...]
  dtype: np.dtype
  blocks: int
  read: Callable[[int], np.ndarray]
  to_model: Callable[[Any], Any] | None = None

  @property
  def block_bytes(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize // self.blocks


class WeightsDoNotFit(ValueError):
  """The parameters need more memory than the devices (or the host) have free."""


def hf_sources(hf_dir: str | os.PathLike, cfg: Any) -> dict[str, Source]:
  """{parameter path: Source} of an HF Qwen-VL folder for the model config `cfg`: one block
  per safetensors tensor. Every tensor's name, shape and dtype is checked against `cfg` first
  (a wrong vocabulary or a missing layer is refused by name, before anything is read)."""
  from flax import nnx

  from bird_jax.checkpoint.safetensors_io import HFReader
  from bird_jax.model import abstract_model

  reader = HFReader(hf_dir)
  shapes = hf.param_shapes(nnx.state(abstract_model(cfg)))
  entries = hf.expected_tensors(cfg, shapes)
  hf.check_tensors({n: (t.shape, t.dtype) for n, t in reader.tensors.items()}, entries,
                   source=str(hf_dir))
  out = {}
  for path, plan in hf.param_plans(entries, shapes).items():
    stored = np.dtype(DTYPES[reader.tensors[plan.names[0]].dtype])
    block = plan.shape[1:] if plan.layered else plan.shape
    out[path] = Source(plan.shape, stored, len(plan.names),
                       lambda i, plan=plan: reader.get(plan.names[i]),
                       HFLayout(plan.rule.transform, block, plan.layered))
  return out


@dataclasses.dataclass(frozen=True)
class HFLayout:
  """An HF tensor -> one block of its parameter, on the device: the table's transform (its
  numpy-style methods run on jax arrays too), with a leading layer axis for a stacked one.
  Equal for equal layouts, so that parameters of one shape share one compiled write."""

  transform: hf.Transform
  shape: tuple[int, ...]
  layered: bool

  def __call__(self, x: Any) -> Any:
    x = self.transform.to_jax(x, self.shape)
    return x[None] if self.layered else x


def orbax_sources(manager: Any, step: int | None = None) -> dict[str, Source]:
  """{parameter path: Source} of an Orbax step (default: the latest): stacked parameters one
  layer at a time; a LoRA run's adapters folded into their kernels."""
  from bird_jax.checkpoint import orbax as ockpt

  reader = ockpt.ParamReader(manager, step)
  shapes, read = ockpt.merged_reader(manager, reader)
  layered = {r.path for r in hf.RULES if r.layered}
  out = {}
  for path, shape in shapes.items():
    shape, dtype = tuple(shape), reader.dtypes[path]
    if path in layered and len(shape) > 1:
      out[path] = Source(shape, dtype, shape[0],
                         lambda i, path=path: np.asarray(read(path, i))[None])
    else:
      out[path] = Source(shape, dtype, 1, lambda i, path=path: read(path, None))
  return out


def array_sources(arrays: Mapping[str, Any]) -> dict[str, Source]:
  """{path: Source} of arrays already in memory (e.g. fresh LoRA adapters)."""
  return {p: Source(tuple(a.shape), np.dtype(a.dtype), 1, lambda i, a=a: np.asarray(a))
          for p, a in arrays.items()}


# ---- checks before any read ------------------------------------------------------------------

def check_names_and_shapes(target: Mapping[str, Any], sources: Mapping[str, Source],
                           where: str) -> None:
  missing = sorted(set(target) - set(sources))
  extra = sorted(set(sources) - set(target))
  wrong = [f"{p}: stored {list(sources[p].shape)}, the model expects {list(target[p].shape)}"
           for p in sorted(set(target) & set(sources))
           if tuple(sources[p].shape) != tuple(target[p].shape)]
  problems = ([f"missing: {', '.join(missing)}"] if missing else []) + (
      [f"not in the model: {', '.join(extra)}"] if extra else []) + wrong
  if problems:
    raise hf.CheckpointMismatch(f"{where} does not match the model config:\n  " +
                                "\n  ".join(problems))


def _shard_bytes(t: Any) -> dict[Any, int]:
  """Bytes each device holds of the array `t` (a ShapeDtypeStruct with or without sharding)."""
  itemsize = np.dtype(t.dtype).itemsize
  sharding = t.sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
  shard = int(np.prod(sharding.shard_shape(tuple(t.shape)), dtype=np.int64)) * itemsize
  return {d: shard for d in sharding.addressable_devices}


def host_available_bytes() -> int:
  """MemAvailable of /proc/meminfo (what the host can give without swapping), or the free
  physical pages where there is none."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def memory_needed(target: Mapping[str, Any], sources: Mapping[str, Source]
                  ) -> tuple[dict[Any, int], int]:
  """({device: bytes of parameters it will hold}, host bytes still to find): the block in
  flight and its converted copy (2 x the largest block) and, for CPU devices, their parameters
  (the process running now is already counted in what the host has available)."""
  per_device: dict[Any, int] = {}
  for t in target.values():
    for d, n in _shard_bytes(t).items():
      per_device[d] = per_device.get(d, 0) + n
  largest = max((s.block_bytes for s in sources.values()), default=0)
  host = 2 * largest + sum(
      n for d, n in per_device.items() if d.platform == "cpu")
  return per_device, host


def check_fits(target: Mapping[str, Any], sources: Mapping[str, Source], where: str) -> None:
  """Refuses (WeightsDoNotFit, with the bytes needed and available) a load that cannot fit,
  before anything is read."""
  per_device, host = memory_needed(target, sources)
  largest = max((s.block_bytes for s in sources.values()), default=0)
  for d, need in sorted(per_device.items(), key=lambda kv: kv[0].id):
    need += largest  # the stored block in flight, copied to every device of the mesh
    stats = d.memory_stats() if d.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
      free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
      if need > free:
        raise WeightsDoNotFit(f"{where}: the weights need {need / GB:.2f} GB on {d} but it has "
                              f"{free / GB:.2f} GB free (shard them over more devices with a "
                              "mesh, or load them in a smaller dtype)")
  free = host_available_bytes()
  if host > free:
    weights = sum(per_device.values()) / GB
    raise WeightsDoNotFit(f"{where}: loading needs {host / GB:.2f} GB of host memory "
                          f"({weights:.2f} GB of weights in their target dtypes) but "
                          f"{free / GB:.2f} GB is available")


# ---- placing -------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _zeros(shape: tuple[int, ...], dtype: Any, sharding: Any) -> Callable[[], jax.Array]:
  return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)


@functools.lru_cache(maxsize=None)
def _write(to_model: Any, dtype: Any, sharding: Any) -> Callable:
  """buf, stored block, row -> buf with the block, in the model's layout and dtype, written at
  `row` (buf donated: in place)."""
  def write(buf, x, row):
    x = (to_model(x) if to_model is not None else x).astype(dtype)
    return jax.lax.dynamic_update_slice_in_dim(buf, x, row, 0)

  return jax.jit(write, donate_argnums=0, out_shardings=sharding)


@functools.lru_cache(maxsize=None)
def _finite_blocks(blocks: int) -> Callable:
  """array -> bool per block of `blocks` row bands: holds no NaN/inf."""
  return jax.jit(lambda x: jnp.isfinite(x).reshape(blocks, -1).all(axis=1))


def _replicated(sharding: Any) -> Any:
  """Where a stored block goes before its layout is changed: every device of the target's mesh
  (each takes its part in the write)."""
  if isinstance(sharding, jax.sharding.NamedSharding):
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
  return sharding


def place_one(t: Any, src: Source, name: str) -> jax.Array:
  """The parameter `t` (ShapeDtypeStruct with its sharding, or None for the default device)
  filled from `src`: its device buffer allocated once and written in place one stored block
  at a time, each block copied to the device as stored and put into the model's layout there;
  then checked for NaN/inf (NonFiniteWeights naming the parameter and the block)."""
  dtype = np.dtype(t.dtype)
  if src.blocks == 1 and src.to_model is None and src.dtype == dtype:
    x = np.asarray(src.read(0))
    buf = jax.device_put(x, t.sharding) if t.sharding is not None else jnp.asarray(x)
  else:
    buf = _zeros(tuple(t.shape), dtype, t.sharding)()
    write = _write(src.to_model, dtype, buf.sharding)
    rows = t.shape[0] // src.blocks
    for i in range(src.blocks):
      x = jax.device_put(np.asarray(src.read(i)), _replicated(buf.sharding))
      buf = write(buf, x, np.int32(i * rows))
      del x
  if jnp.issubdtype(dtype, jnp.inexact):
    finite = np.asarray(_finite_blocks(src.blocks)(buf))
    if not finite.all():
      block = "" if src.blocks == 1 else f" block {int(np.argmin(finite))}"
      raise NonFiniteWeights(f"{name}{block}: the weights hold NaN/inf values; the model's "
                             "answers would be garbage (`python -m bird_jax.convert inspect` "
                             "shows where)")
  return buf


def place(target: Mapping[str, Any], sources: Mapping[str, Source], *, where: str,
          progress: bool = False) -> dict[str, jax.Array]:
  """{path: jax.Array} for every path of `target` ({path: ShapeDtypeStruct}, with the
  shardings to place on), read from `sources`. Names, shapes and memory are checked before
  the first read; a block holding NaN/inf raises NonFiniteWeights naming it."""
  check_names_and_shapes(target, sources, where)
  check_fits(target, sources, where)
  total = sum(int(np.prod(s.shape, dtype=np.int64)) * s.dtype.itemsize for s in sources.values())
  out = {}
  with tqdm(total=total, unit="B", unit_scale=True, desc="loading", disable=not progress) as bar:
    for path, t in target.items():
      out[path] = place_one(t, sources[path], f"{where}: {path}")
      bar.update(sources[path].block_bytes * sources[path].blocks)
  return out
