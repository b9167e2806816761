"""A small NIfTI-1 reader (single ``.nii`` / ``.nii.gz`` file): voxels and affine, in RAS order.

Enough for the atlas volumes of Debian's ``mricron-data``; 4-D data, pair files
(``.hdr``/``.img``) and NIfTI-2 are rejected with a message.
"""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np

from datagen.sources.base import SourceError

_DTYPES = {2: np.uint8, 4: np.int16, 8: np.int32, 16: np.float32, 64: np.float64,
           256: np.int8, 512: np.uint16, 768: np.uint32}


def read_nifti(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
  """(voxels [X, Y, Z], 4x4 voxel-to-world affine) of a 3-D NIfTI-1 file."""
  path = Path(path)
  try:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
  except (OSError, EOFError) as e:
    raise SourceError(f"{path}: cannot read: {e}") from None
  if len(raw) < 352:
    raise SourceError(f"{path}: too short for a NIfTI-1 header ({len(raw)} bytes)")
  end = "<" if struct.unpack("<i", raw[:4])[0] == 348 else ">"
  if struct.unpack(end + "i", raw[:4])[0] != 348 or raw[344:347] != b"n+1":
    raise SourceError(f"{path}: not a single-file NIfTI-1 image")
  dim = struct.unpack(end + "8h", raw[40:56])
  shape = tuple(d for d in dim[1:1 + dim[0]])
  while len(shape) > 3 and shape[-1] == 1:
    shape = shape[:-1]
  if len(shape) != 3:
    raise SourceError(f"{path}: expected a 3-D volume, got shape {shape}")
  code = struct.unpack(end + "h", raw[70:72])[0]
  if code not in _DTYPES:
    raise SourceError(f"{path}: unsupported NIfTI datatype {code}")
  dtype = np.dtype(_DTYPES[code]).newbyteorder(end)
  offset = int(struct.unpack(end + "f", raw[108:112])[0])
  data = np.frombuffer(raw, dtype, count=math.prod(shape), offset=offset).reshape(shape,
                                                                                    order="F")
  slope, inter = struct.unpack(end + "2f", raw[112:120])
  if slope not in (0.0, 1.0) or inter != 0.0:
    data = data * slope + inter
  pixdim = struct.unpack(end + "8f", raw[76:108])
  sform = struct.unpack(end + "h", raw[254:256])[0]
  affine = np.eye(4)
  if sform > 0:
    affine[:3] = np.array(struct.unpack(end + "12f", raw[280:328])).reshape(3, 4)
  else:
    affine[:3, :3] = np.diag([abs(p) or 1.0 for p in pixdim[1:4]])
  return to_ras(np.ascontiguousarray(data), affine)


def to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Permutes and flips voxel axes so that they run along +x (right), +y (anterior), +z
  (superior); the affine is updated to match."""
  lin = affine[:3, :3]
  world = [int(np.argmax(np.abs(lin[:, i]))) for i in range(3)]
  if sorted(world) != [0, 1, 2]:
    raise SourceError("oblique volume: cannot map voxel axes to RAS")
  order = [world.index(w) for w in range(3)]
  data = np.transpose(data, order)
  aff = affine.copy()
  aff[:, :3] = affine[:, order]
  for ax in range(3):
    if aff[ax, ax] < 0:
      data = np.flip(data, ax)
      aff[:3, 3] += aff[:3, ax] * (data.shape[ax] - 1)
      aff[:3, ax] = -aff[:3, ax]
  return np.ascontiguousarray(data), aff
