"""BiRD's per-modality grouping and averaging (the modalities: bird_jax/vocabulary.py).

The modality of a sample is the prefix of its image file name before the first "_"
(``ct_0001.png`` -> ``ct``). BiRD reports every task per modality in a fixed order and
averages the 8 modality scores without weights, counting a modality that has no
samples as 0. Names whose prefix is not one of the 8 keys are reported, not dropped.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence

from bird_jax.vocabulary import MODALITIES, modality_of


@dataclasses.dataclass(frozen=True)
class Grouped:
  """Sample indices per modality plus the indices whose modality is unknown."""
  indices: dict[str, list[int]]
  unknown: list[int]

  def count(self, modality: str) -> int:
    return len(self.indices[modality])


def group_by_modality(images: Sequence[str]) -> Grouped:
  """Indices of the samples of each modality (all 8 keys present, possibly empty)."""
  indices: dict[str, list[int]] = {m: [] for m in MODALITIES}
  unknown: list[int] = []
  for i, image in enumerate(images):
    m = modality_of(image)
    (indices[m] if m is not None else unknown).append(i)
  return Grouped(indices=indices, unknown=unknown)


def modality_vector(images: Sequence[str]) -> list[int]:
  """Index into MODALITIES for every sample; -1 for an unknown prefix."""
  out = []
  for image in images:
    m = modality_of(image)
    out.append(MODALITIES.index(m) if m is not None else -1)
  return out


def mean_over(scores: Mapping[str, float | None], keys: Iterable[str] = MODALITIES) -> float:
  """BiRD's average: unweighted mean over ``keys``; an absent score (None) counts as 0."""
  keys = tuple(keys)
  return sum(0.0 if scores.get(k) is None else float(scores[k]) for k in keys) / len(keys)


def mean_present(scores: Mapping[str, float | None], keys: Iterable[str] = MODALITIES) -> float:
  """Unweighted mean over the modalities that have a score (NaN when none has)."""
  values = [float(scores[k]) for k in keys if scores.get(k) is not None]
  return sum(values) / len(values) if values else math.nan
