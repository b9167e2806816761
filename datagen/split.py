"""Case-level train/test split, stratified by modality.

All slices of a case (key ``dataset--case_id``) land on one side, so no volume leaks across
the split. A case belongs to the modality of most of its images (ties: the first in the
fixed modality order). Inside each modality, cases are visited in a seeded hash order and
one is moved to the test side whenever that brings the modality's test image count closer
to ``round(test_fraction * images)``; a modality with a single case stays in train.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping

from bird_jax.vocabulary import MODALITIES
from datagen.sources.base import stable_unit

TRAIN, TEST = "train", "test"


def split_cases(items: Iterable[tuple[str, str]], test_fraction: float, seed: int
                ) -> dict[str, str]:
  """``items``: (case_key, modality) per image. Returns case_key -> "train" | "test"."""
  if not 0.0 <= test_fraction < 1.0:
    raise ValueError(f"test fraction {test_fraction} must be in [0, 1)")
  per_case: dict[str, Counter] = defaultdict(Counter)
  for case, modality in items:
    per_case[case][modality] += 1
  by_modality: dict[str, list[str]] = defaultdict(list)
  for case, mods in per_case.items():
    top = max(mods.values())
    by_modality[min((m for m in mods if mods[m] == top), key=_mod_order)].append(case)
  side = {case: TRAIN for case in per_case}
  for modality, cases in by_modality.items():
    if len(cases) < 2:
      continue
    sizes = {c: sum(per_case[c].values()) for c in cases}
    target = round(test_fraction * sum(sizes.values()))
    in_test = 0
    for case in sorted(cases, key=lambda c: (stable_unit(seed, "split", c), c)):
      if abs(in_test + sizes[case] - target) < abs(in_test - target):
        side[case] = TEST
        in_test += sizes[case]
    if all(side[c] == TEST for c in cases):  # keep at least one case for training
      side[max(cases, key=lambda c: (sizes[c], c))] = TRAIN
  return side


def _mod_order(m: str) -> int:
  return MODALITIES.index(m) if m in MODALITIES else len(MODALITIES)


def split_counts(items: Iterable[tuple[str, str]], sides: Mapping[str, str]) -> dict:
  """Images and cases per side and modality (for the summary)."""
  images: dict[str, Counter] = {TRAIN: Counter(), TEST: Counter()}
  cases: dict[str, set] = {TRAIN: set(), TEST: set()}
  for case, modality in items:
    images[sides[case]][modality] += 1
    cases[sides[case]].add(case)
  return {s: {"images": sum(images[s].values()), "cases": len(cases[s]),
              "images_per_modality": dict(sorted(images[s].items(),
                                                 key=lambda t: _mod_order(t[0])))}
          for s in (TRAIN, TEST)}
