"""Checks that weights are usable: every value finite, every saved array readable.

    tree_is_finite(params)                 # on device, one fused reduction
    report = verify_params(manager, step)  # streams a checkpoint's params from disk
    report.ok, report.summary()
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from bird_jax import exit_codes


WHOLE_BYTES = 256 * 2**20  # larger arrays are read back one slice of axis 0 at a time


class NonFiniteWeights(ValueError):
  """Weights hold NaN or inf values."""

  exit_code = exit_codes.NON_FINITE


@jax.jit
def _all_finite(leaves: list[jax.Array]) -> jax.Array:
  flags = [jnp.all(jnp.isfinite(x)) for x in leaves]
  return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


def tree_is_finite(tree: Any) -> bool:
  """Whether every floating-point leaf of `tree` (jax or numpy arrays) is finite."""
  leaves = [x for x in jax.tree.leaves(tree)
            if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]
  return bool(_all_finite(leaves))


def nonfinite_count(x: np.ndarray) -> int:
  """NaN/inf values in a host array (bf16/fp16 widened; integer arrays have none)."""
  x = np.asarray(x)
  if x.dtype.kind in "iub":
    return 0
  if x.dtype not in (np.float32, np.float64):
    x = x.astype(np.float32)
  return int(x.size - np.count_nonzero(np.isfinite(x)))


@dataclasses.dataclass
class ParamsReport:
  step: int
  arrays: int = 0
  values: int = 0
  nonfinite: dict[str, int] = dataclasses.field(default_factory=dict)  # path -> count
  unreadable: dict[str, str] = dataclasses.field(default_factory=dict)  # path -> error

  @property
  def ok(self) -> bool:
    return not self.nonfinite and not self.unreadable

  def summary(self) -> str:
    if self.ok:
      return (f"step {self.step}: {self.arrays} parameters ({self.values:,} values) read back, "
              "all finite")
    parts = []
    if self.unreadable:
      path, err = next(iter(self.unreadable.items()))
      parts.append(f"{len(self.unreadable)} parameter(s) unreadable (e.g. {path}: {err})")
    if self.nonfinite:
      n = sum(self.nonfinite.values())
      path = max(self.nonfinite, key=self.nonfinite.get)
      parts.append(f"{n:,} of {self.values:,} values are NaN/inf in {len(self.nonfinite)} "
                   f"parameter(s) (most in {path})")
    return f"step {self.step}: " + "; ".join(parts)


def verify_params(manager: ocp.CheckpointManager, step: int | None = None,
                  item: str = "params") -> ParamsReport:
  """Reads every saved array of a step's `item` (one layer at a time, with tensorstore: no
  device memory) and counts non-finite values; read errors (truncated or missing files) are
  recorded per array, not raised."""
  from bird_jax.checkpoint.orbax import ParamReader

  try:
    reader = ParamReader(manager, step, item)
  except Exception as e:  # noqa: BLE001 -- any failure to open the step is the finding
    s = manager.latest_step() if step is None else step
    return ParamsReport(step=-1 if s is None else s,
                        unreadable={f"{item} (metadata)": first_line(e)})
  report = ParamsReport(step=reader.step)
  for path, shape in reader.shapes.items():
    report.arrays += 1
    nbytes = int(np.prod(shape, dtype=np.int64)) * reader.dtypes[path].itemsize
    layers = range(shape[0]) if nbytes > WHOLE_BYTES and len(shape) > 1 else [None]
    bad = 0
    try:
      for layer in layers:
        x = reader.read(path, layer)
        report.values += int(np.size(x))
        bad += nonfinite_count(x)
    except Exception as e:  # noqa: BLE001
      report.unreadable[path] = first_line(e)
      continue
    if bad:
      report.nonfinite[path] = bad
  return report


def first_line(e: BaseException) -> str:
  """`Type: first line` of the innermost cause (Orbax wraps tensorstore's precise error)."""
  while e.__cause__ is not None:
    e = e.__cause__
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:300] if text else ''}"
