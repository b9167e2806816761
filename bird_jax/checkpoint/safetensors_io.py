"""Streaming safetensors I/O: read an HF checkpoint folder tensor by tensor, write sharded
safetensors + `model.safetensors.index.json` tensor by tensor.

Reading returns each tensor as a read-only memory map of its bytes (the header and the file
sizes checked by `safetensors.safe_open` first): nothing is copied until a caller converts
it, and the pages are file cache the kernel can drop, not process memory. Writing plans every
shard's header from names/shapes/dtypes first, then streams each tensor's bytes as it is
produced. bfloat16 is `ml_dtypes.bfloat16` on the numpy side: bytes are copied, never
converted, so a round trip is bitwise.

Only safetensors are ever loaded: pickle checkpoints (*.bin, *.pt, ...) are refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import struct
from pathlib import Path
from typing import Callable, Mapping, Sequence

import ml_dtypes
import numpy as np
from safetensors import safe_open

from bird_jax import exit_codes
from bird_jax.manifest import HashingWriter

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SHARD_NAME = "model-{:05d}-of-{:05d}.safetensors"

# safetensors dtype tag <-> numpy dtype
DTYPES: dict[str, np.dtype] = {
    "BF16": np.dtype(ml_dtypes.bfloat16), "F16": np.dtype(np.float16),
    "F32": np.dtype(np.float32), "F64": np.dtype(np.float64), "I8": np.dtype(np.int8),
    "I16": np.dtype(np.int16), "I32": np.dtype(np.int32), "I64": np.dtype(np.int64),
    "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
TAGS = {v: k for k, v in DTYPES.items()}
FLOAT_TAGS = ("BF16", "F16", "F32")

PICKLE_HELP = (
    "pickle checkpoints are never loaded (unpickling runs arbitrary code). Convert it to "
    "safetensors on a trusted machine first, e.g.\n"
    "  python -c \"import torch; from safetensors.torch import save_file; "
    "sd = torch.load('pytorch_model.bin', map_location='cpu', weights_only=True); "
    "save_file({k: v.contiguous() for k, v in sd.items()}, 'model.safetensors', "
    "metadata={'format': 'pt'})\"\n"
    "or load the model with transformers and call `model.save_pretrained(out, "
    "safe_serialization=True)`; the public Qwen-VL / Qwen-VL-Chat releases already ship "
    "safetensors.")


class CheckpointFormatError(ValueError):
  """A checkpoint folder or file that cannot be read as an HF safetensors checkpoint."""

  exit_code = exit_codes.BAD_INPUT  # a tool refuses the checkpoint


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  name: str
  file: str  # file name inside the checkpoint folder
  shape: tuple[int, ...]
  dtype: str  # safetensors tag, e.g. "BF16"
  offset: int = 0  # where its bytes start in the file

  @property
  def nbytes(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64)) * DTYPES[self.dtype].itemsize


def parse_size(text: str | int) -> int:
  """'4GB' -> 4e9 bytes (HF's convention: GB = 10^9, GiB = 2^30); ints pass through."""
  if isinstance(text, int):
    return text
  m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?i?B?)\s*", str(text), re.IGNORECASE)
  if not m:
    raise ValueError(f"cannot parse size {text!r} (expected e.g. 4GB, 500MB, 2GiB)")
  unit = m.group(2).upper().rstrip("B")
  scale = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
           "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}[unit]
  return int(float(m.group(1)) * scale)


def refuse_pickle(path: str | os.PathLike) -> None:
  if str(path).lower().endswith(PICKLE_SUFFIXES):
    raise CheckpointFormatError(f"{path}: {PICKLE_HELP}")


def weight_files(directory: Path) -> tuple[list[str], dict[str, str] | None]:
  """The safetensors files of a checkpoint folder and its index's weight_map (None when the
  folder holds a single `model.safetensors` or un-indexed files)."""
  index = directory / INDEX_FILE
  if index.exists():
    try:
      weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError) as e:
      raise CheckpointFormatError(f"{index}: not an HF index file (need a 'weight_map'): {e}")
    return sorted(set(weight_map.values())), dict(weight_map)
  files = sorted(p.name for p in directory.glob("*.safetensors"))
  if files:
    return files, None
  pickles = sorted(p.name for p in directory.iterdir() if p.name.lower().endswith(PICKLE_SUFFIXES))
  if pickles:
    raise CheckpointFormatError(f"{directory}: only pickle weights found ({', '.join(pickles)}); "
                                f"{PICKLE_HELP}")
  raise CheckpointFormatError(f"{directory}: no {INDEX_FILE} and no *.safetensors files")


def _data_starts(path: Path) -> dict[str, int]:
  """{tensor name: byte offset of its data in the file}, from the safetensors header (an
  8-byte little-endian length, then that many bytes of JSON; offsets relative to its end)."""
  with open(path, "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(n))
  return {k: 8 + n + v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}


class HFReader:
  """Tensor names, shapes and dtypes of an HF safetensors checkpoint (folder or single file),
  and `get(name)`: one tensor, memory-mapped."""

  def __init__(self, path: str | os.PathLike):
    path = Path(path)
    refuse_pickle(path)
    if path.is_file():
      self.directory, files, weight_map = path.parent, [path.name], None
    elif path.is_dir():
      self.directory = path
      files, weight_map = weight_files(path)
    else:
      raise CheckpointFormatError(f"{path}: no such file or folder")
    # pickle files next to safetensors weights are never read (reported by `inspect`)
    self.ignored_pickles = [] if not path.is_dir() else sorted(
        p.name for p in self.directory.iterdir() if p.name.lower().endswith(PICKLE_SUFFIXES))
    self.files = files
    self.weight_map = weight_map
    self.tensors: dict[str, TensorInfo] = {}
    problems = []
    for file in files:
      fpath = self.directory / file
      if not fpath.exists():
        problems.append(f"{fpath}: listed in {INDEX_FILE} but missing")
        continue
      try:
        with safe_open(str(fpath), framework="numpy") as f:  # checks the header and sizes
          starts = _data_starts(fpath)
          for name in f.keys():
            s = f.get_slice(name)
            if name in self.tensors:
              problems.append(f"{name}: in both {self.tensors[name].file} and {file}")
            self.tensors[name] = TensorInfo(name, file, tuple(s.get_shape()), s.get_dtype(),
                                            starts[name])
      except Exception as e:  # safetensors raises its own error types
        raise CheckpointFormatError(f"{fpath}: not a readable safetensors file: {e}") from e
    if weight_map is not None:
      for name, file in sorted(weight_map.items()):
        info = self.tensors.get(name)
        if info is None and (self.directory / file).exists():
          problems.append(f"{name}: listed in {INDEX_FILE} under {file} but not in that file")
        elif info is not None and info.file != file:
          problems.append(f"{name}: {INDEX_FILE} says {file}, found in {info.file}")
      for name in sorted(set(self.tensors) - set(weight_map)):
        problems.append(f"{name}: in {self.tensors[name].file} but not in {INDEX_FILE}")
    if problems:
      raise CheckpointFormatError(f"{self.directory}: inconsistent checkpoint:\n  " +
                                  "\n  ".join(problems))

  def get(self, name: str) -> np.ndarray:
    """The tensor as a read-only view of the file's pages (np.memmap): nothing is copied until
    a caller converts it, and the pages are the kernel's to drop again."""
    info = self.tensors[name]
    if info.nbytes == 0:
      return np.empty(info.shape, DTYPES[info.dtype])
    return np.memmap(self.directory / info.file, DTYPES[info.dtype], mode="r",
                     offset=info.offset, shape=info.shape)

  def layout(self) -> dict[str, list[str]]:
    """file -> tensor names in the order they are stored."""
    out: dict[str, list[str]] = {f: [] for f in self.files}
    for info in self.tensors.values():
      out[info.file].append(info.name)
    return out

  @property
  def total_bytes(self) -> int:
    return sum(t.nbytes for t in self.tensors.values())


# ---- writing -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TensorSpec:
  name: str
  shape: tuple[int, ...]
  dtype: np.dtype

  @property
  def nbytes(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def plan_shards(specs: Sequence[TensorSpec], max_bytes: int) -> list[list[TensorSpec]]:
  """HF's greedy split: tensors in order, a new shard when the next would pass max_bytes; a
  tensor larger than max_bytes gets a shard of its own."""
  shards: list[list[TensorSpec]] = [[]]
  size = 0
  for spec in specs:
    if shards[-1] and size + spec.nbytes > max_bytes:
      shards.append([])
      size = 0
    shards[-1].append(spec)
    size += spec.nbytes
  return shards


def shard_names(n: int) -> list[str]:
  return [SINGLE_FILE] if n == 1 else [SHARD_NAME.format(i + 1, n) for i in range(n)]


def layout_shards(specs: Sequence[TensorSpec], layout: Mapping[str, Sequence[str]]
                  ) -> dict[str, list[TensorSpec]]:
  """Follow a recorded layout (file -> names); every spec must be placed exactly once."""
  by_name = {s.name: s for s in specs}
  placed = [n for names in layout.values() for n in names]
  missing, extra = sorted(set(by_name) - set(placed)), sorted(set(placed) - set(by_name))
  if missing or extra or len(placed) != len(set(placed)):
    raise ValueError(f"recorded shard layout does not match the tensors: missing {missing}, "
                     f"unknown {extra}")
  return {file: [by_name[n] for n in names] for file, names in layout.items()}


def _header(specs: Sequence[TensorSpec], metadata: Mapping[str, str]) -> bytes:
  entries: dict[str, object] = {"__metadata__": dict(metadata)}
  offset = 0
  for s in specs:
    dtype = np.dtype(s.dtype)
    if dtype not in TAGS:
      raise ValueError(f"{s.name}: dtype {dtype} has no safetensors tag")
    entries[s.name] = {"dtype": TAGS[dtype], "shape": list(s.shape),
                       "data_offsets": [offset, offset + s.nbytes]}
    offset += s.nbytes
  raw = json.dumps(entries, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)  # the format aligns the data start to 8 bytes
  return struct.pack("<Q", len(raw)) + raw


def write_safetensors(path: Path, specs: Sequence[TensorSpec], get: Callable[[str], np.ndarray],
                      metadata: Mapping[str, str] | None = None,
                      on_tensor: Callable[[TensorSpec], None] | None = None) -> dict:
  """Writes one safetensors file, fetching each tensor with `get(name)` right before its bytes
  are written (the header is planned from `specs`; a tensor that disagrees is an error).
  Returns the file's {"sha256", "bytes"}, hashed as it was written."""
  tmp = path.with_name(path.name + ".partial")
  with open(tmp, "wb") as raw:
    f = HashingWriter(raw)
    f.write(_header(specs, metadata or {"format": "pt"}))
    for s in specs:
      arr = get(s.name)
      if tuple(arr.shape) != tuple(s.shape) or arr.dtype != np.dtype(s.dtype):
        raise ValueError(f"{s.name}: produced {arr.dtype}{list(arr.shape)}, planned "
                         f"{np.dtype(s.dtype)}{list(s.shape)}")
      f.write(np.ascontiguousarray(arr).reshape(-1).view(np.uint8).data)
      del arr
      if on_tensor is not None:
        on_tensor(s)
  os.replace(tmp, path)
  return f.entry()


def write_sharded(directory: str | os.PathLike, shards: Mapping[str, Sequence[TensorSpec]],
                  get: Callable[[str], np.ndarray],
                  on_tensor: Callable[[TensorSpec], None] | None = None,
                  hashes: dict[str, dict] | None = None) -> dict:
  """Writes every shard (file name -> specs in order) and, for more than one file, the HF index
  JSON ({"metadata": {"total_size"}, "weight_map"}). Returns the index dict; `hashes` gets
  {file name: {"sha256", "bytes"}} of the shards, hashed as they were written."""
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  for file, specs in shards.items():
    entry = write_safetensors(directory / file, specs, get, on_tensor=on_tensor)
    if hashes is not None:
      hashes[file] = entry
  index = {"metadata": {"total_size": sum(s.nbytes for specs in shards.values() for s in specs)},
           "weight_map": {s.name: file for file, specs in shards.items() for s in specs}}
  if len(shards) > 1 or SINGLE_FILE not in shards:
    index["weight_map"] = dict(sorted(index["weight_map"].items()))
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
  return index


def save_tensors(directory: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                 shard_size: int | str = "4GB") -> dict:
  """In-memory convenience (tests, small checkpoints): dict name -> array, sharded like HF."""
  specs = [TensorSpec(n, tuple(a.shape), a.dtype) for n, a in tensors.items()]
  shards = plan_shards(specs, parse_size(shard_size))
  named = dict(zip(shard_names(len(shards)), shards))
  return write_sharded(directory, named, tensors.__getitem__)
