"""What every image/mask source provides.

A source enumerates cheap references (:class:`ImageRef`: id, modality, dataset, case, slice
and a source-specific JSON-able payload) in a deterministic order, without touching pixels;
sampling and the split work on these. Worker processes then :meth:`Source.load` a reference
(pixels and per-instance masks) and fetch its encoded image for the record.

Ids follow SA-Med2D's stems, ``<modality_sub>--<dataset>--<case>--<axis>_<slice4>`` (or
``--2d_none``), so ``id.split("_")[0]`` is the modality key as BiRD derives it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import numpy as np

from bird_jax import exit_codes


class SourceError(RuntimeError):
  """A source that cannot be read (missing files, unexpected layout); the message says why."""

  exit_code = exit_codes.BAD_INPUT


@dataclasses.dataclass(frozen=True)
class ImageRef:
  id: str
  modality: str  # one of bird_jax.vocabulary.MODALITIES
  dataset: str
  case_id: str
  slice: int | None  # slice number inside the case's volume; None for 2-D images
  payload: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def case_key(self) -> str:
    """Cases are unique within a dataset; this key is unique across datasets."""
    return f"{self.dataset}--{self.case_id}"

  def to_dict(self) -> dict[str, Any]:
    return {"id": self.id, "modality": self.modality, "dataset": self.dataset,
            "case_id": self.case_id, "slice": self.slice, "payload": dict(self.payload)}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "ImageRef":
    return cls(d["id"], d["modality"], d["dataset"], d["case_id"], d["slice"], d["payload"])


@dataclasses.dataclass
class Loaded:
  """One loaded image: its instances (label, bool mask [H, W]) and descriptive meta."""

  width: int
  height: int
  instances: list[tuple[str, np.ndarray]]
  region: str
  orientation: str
  vocabulary: tuple[str, ...]  # labels annotated exhaustively for this image (negatives)
  notes: Mapping[str, str] = dataclasses.field(default_factory=dict)  # label -> its look
  skips: Counter = dataclasses.field(default_factory=Counter)  # masks dropped while loading
  skip_image: str = ""  # non-empty: the whole image is unusable, and why


class Source(Protocol):
  name: str

  def refs(self, skips: Counter) -> Iterator[ImageRef]:
    """All references in a fixed order; entries that cannot be used are counted in skips."""

  def load(self, ref: ImageRef) -> Loaded:
    ...

  def image_bytes(self, ref: ImageRef) -> bytes:
    """The encoded image file (PNG) stored in the record."""


def make_id(modality_sub: str, dataset: str, case_id: str, axis: str | None,
            slice_index: int | None) -> str:
  """SA-Med2D-style stem: ``ct_00--Dataset--case--z_0003`` / ``..--2d_none``."""
  tail = "2d_none" if slice_index is None else f"{axis}_{slice_index:04d}"
  return f"{modality_sub}--{dataset}--{case_id}--{tail}"


def stable_seed(*parts: Any) -> int:
  """A 64-bit seed from any printable parts (stable across processes and runs)."""
  h = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8)
  return int.from_bytes(h.digest(), "little")


def stable_unit(*parts: Any) -> float:
  """A number in [0, 1) from any printable parts (stable across processes and runs)."""
  return stable_seed(*parts) / 2.0 ** 64
