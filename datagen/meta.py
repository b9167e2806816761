"""Meta information of one image: instance boxes from masks, modality, region, orientation.

Boxes (docs/datagen.md): tight boxes around the instance's mask pixels, normalised to [0, 1] by
the image size and rounded to 3 decimals. A pixel column ``c`` covers ``[c, c + 1)``, so a
mask spanning columns ``c0..c1`` gives ``x1 = c0 / W`` and ``x2 = (c1 + 1) / W``. Rounding is
half up (``floor(v * 1000 + 0.5) / 1000``), the rule of :func:`bird_jax.boxes.quantize`, so a
meta box and its text form carry the same three digits.

Size threshold: a connected component smaller than ``min_area`` (a fraction of the image
area; default 0.153%, the threshold of SA-Med2D's own preprocessing) is a speck. Components
are 8-connected.

Several components in one instance mask (``components`` rule):
- ``union`` (default): specks are dropped, one box is drawn around all remaining components
  (the instance stays one object, as annotated);
- ``split``: every remaining component becomes its own object with the same label;
- ``largest``: only the largest component is kept.
An instance whose mask is empty, or has only specks, is dropped and counted (``empty_mask``,
``speck``). A box that rounds to zero width or height is dropped (``degenerate_box``).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from scipy import ndimage

from bird_jax.boxes import box_iou, round_to_grid

COMPONENT_RULES = ("union", "split", "largest")
DEFAULT_MIN_AREA = 0.00153  # fraction of the image area (SA-Med2D: 0.153%)
_EIGHT = np.ones((3, 3), dtype=bool)

Box = tuple[float, float, float, float]


def pixel_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
  """``(row0, row1, col0, col1)`` inclusive bounds of the True pixels, or None if empty."""
  rows = np.flatnonzero(mask.any(axis=1))
  if rows.size == 0:
    return None
  cols = np.flatnonzero(mask[rows[0]:rows[-1] + 1].any(axis=0))
  return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def normalised_box(bbox: tuple[int, int, int, int], width: int, height: int) -> Box | None:
  """Inclusive pixel bounds -> normalised 3-decimal box; None when it rounds to zero size."""
  r0, r1, c0, c1 = bbox
  box = (round_to_grid(c0 / width), round_to_grid(r0 / height),
         round_to_grid((c1 + 1) / width), round_to_grid((r1 + 1) / height))
  return box if box[0] < box[2] and box[1] < box[3] else None


@dataclasses.dataclass(frozen=True)
class MetaObject:
  label: str
  box: Box
  area: float  # mask pixels / image pixels (after speck removal)


def instance_boxes(mask: np.ndarray, *, min_area: float = DEFAULT_MIN_AREA,
                   components: str = "union") -> tuple[list[tuple[Box, float]], Counter]:
  """Boxes (with area fractions) of one instance mask under the component rule.

  Returns ``(boxes, skips)``; ``skips`` counts what was dropped (``empty_mask``, ``speck``,
  ``speck_component``, ``degenerate_box``).
  """
  if components not in COMPONENT_RULES:
    raise ValueError(f"components rule {components!r} is not one of {COMPONENT_RULES}")
  mask = np.asarray(mask, dtype=bool)
  if mask.ndim != 2:
    raise ValueError(f"an instance mask must be 2-D, got shape {mask.shape}")
  height, width = mask.shape
  total = float(height * width)
  skips: Counter = Counter()
  bb = pixel_bbox(mask)
  if bb is None:
    skips["empty_mask"] += 1
    return [], skips
  r0, r1, c0, c1 = bb
  crop = mask[r0:r1 + 1, c0:c1 + 1]
  labels, n = ndimage.label(crop, structure=_EIGHT)
  sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
  keep = [i + 1 for i in range(n) if sizes[i] >= min_area * total]
  if n - len(keep):
    skips["speck_component"] += n - len(keep)
  if not keep:
    skips["speck"] += 1
    return [], skips
  if components == "largest":
    keep = [max(keep, key=lambda k: (sizes[k - 1], -k))]
  groups = [keep] if components == "union" else [[k] for k in keep]
  out: list[tuple[Box, float]] = []
  for group in groups:
    sel = labels > 0 if len(group) == n else np.isin(labels, group)
    sb = pixel_bbox(sel)
    assert sb is not None
    box = normalised_box((sb[0] + r0, sb[1] + r0, sb[2] + c0, sb[3] + c0), width, height)
    if box is None:
      skips["degenerate_box"] += 1
      continue
    out.append((box, float(sizes[[k - 1 for k in group]].sum()) / total))
  return out, skips


@dataclasses.dataclass(frozen=True)
class ImageMeta:
  """Everything text generation needs to know about one image (JSON-able, see to_dict)."""

  id: str
  modality: str
  dataset: str
  case_id: str
  slice: int | None
  width: int
  height: int
  region: str
  orientation: str
  objects: tuple[MetaObject, ...]
  present_labels: tuple[str, ...]  # every label with any mask pixel (specks included)
  vocabulary: tuple[str, ...]  # labels the source annotates exhaustively for this image
  notes: Mapping[str, str]  # label -> how it looks (may be empty)
  ref: Mapping[str, Any]  # the source reference (to load the image again)

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["objects"] = [{"label": o.label, "box": list(o.box), "area": o.area} for o in self.objects]
    d["present_labels"], d["vocabulary"] = list(self.present_labels), list(self.vocabulary)
    d["ref"], d["notes"] = dict(self.ref), dict(self.notes)
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "ImageMeta":
    kw = dict(d)
    kw["objects"] = tuple(MetaObject(o["label"], tuple(o["box"]), o["area"]) for o in d["objects"])
    kw["present_labels"], kw["vocabulary"] = tuple(d["present_labels"]), tuple(d["vocabulary"])
    return cls(**kw)

  @property
  def case_key(self) -> str:
    """Unique across datasets (as :attr:`datagen.sources.base.ImageRef.case_key`)."""
    return f"{self.dataset}--{self.case_id}"

  @property
  def labels(self) -> list[str]:
    """Distinct object labels in first-seen order."""
    return list(dict.fromkeys(o.label for o in self.objects))

  def boxes_of(self, label: str) -> list[Box]:
    return [o.box for o in self.objects if o.label == label]


def objects_from_instances(instances: Iterable[tuple[str, np.ndarray]], *,
                           min_area: float = DEFAULT_MIN_AREA, components: str = "union"
                           ) -> tuple[list[MetaObject], list[str], Counter]:
  """Objects of all instances (in input order), the labels present, and the skip counts."""
  objects: list[MetaObject] = []
  present: dict[str, None] = {}
  skips: Counter = Counter()
  for label, mask in instances:
    found, sk = instance_boxes(mask, min_area=min_area, components=components)
    skips.update(sk)
    if found or not sk["empty_mask"]:
      present[label] = None
    objects.extend(MetaObject(label, box, area) for box, area in found)
  return objects, list(present), skips


def near_identical(a: ImageMeta, b: ImageMeta, min_iou: float) -> bool:
  """Same labels with the same instance counts, and every box matched (greedily, per label)
  by a box of the other image with IoU >= ``min_iou``."""
  if Counter(o.label for o in a.objects) != Counter(o.label for o in b.objects):
    return False
  for label in a.labels:
    rest = list(b.boxes_of(label))
    for box in a.boxes_of(label):
      best = max(range(len(rest)), key=lambda i: box_iou(box, rest[i]))
      if box_iou(box, rest[best]) < min_iou:
        return False
      rest.pop(best)
  return True
