"""SA-Med2D-16M (folder ``SAMed2Dv1/``) read from disk.

Layout (docs/datagen.md): ``SAMed2D_v1.json`` maps ``images/<stem>.png`` to its mask paths
``masks/<stem>--CCCC_III.png``; ``SAMed2D_v1_class_mapping_id.json`` maps each dataset to
``{class name: class index}``. A stem is ``<modality_sub>--<dataset>--<case>--<axis>_<slice4>``
(``--2d_none`` for 2-D sources); the modality key is ``stem.split("_")[0]``.

The index is streamed (:mod:`datagen.jsonstream`): enumeration holds one entry at a time, and
only the sampled references (with their mask lists) are kept. The structure is checked as
it is read; an unexpected one stops the run with a message naming the file and entry.

Known quirks handled (each counted in the summary):
- ``ichallenge_adam_task2`` masks are inverted (object = 0): they are inverted back;
- masks whose size differs from their image: skipped (``mask_size_mismatch``);
- "images" that are binary masks (some ``Brain_PTM`` / ``brain-growth`` slices): skipped
  (``binary_image``);
- images whose short side is below ``min_aspect`` of the long side: skipped (``aspect``),
  as SA-Med2D's own preprocessing did;
- composite ``union_...`` classes: skipped (``union_class``; they repeat other masks);
- class indices missing from the mapping: skipped (``unknown_class``);
- names that do not parse: skipped (``bad_image_name``, ``bad_mask_name``).
Region is inferred from the class names (keyword table); orientation from the slice axis
(x sagittal, y coronal, z axial, assuming volumes stored in the usual RAS order). The
vocabulary used for negative questions is the dataset's class list (not ``union_``), on the
assumption that a dataset annotates its classes wherever they appear.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from bird_jax.data.records import ImageRoot
from bird_jax.vocabulary import modality_of
from datagen.jsonstream import JSONStreamError, iter_object
from datagen.sources.base import ImageRef, Loaded, SourceError

INDEX_NAME = "SAMed2D_v1.json"
MAPPING_NAME = "SAMed2D_v1_class_mapping_id.json"
INVERTED_MASK_DATASETS = ("ichallenge_adam_task2",)
AXIS_ORIENTATION = {"x": "sagittal", "y": "coronal", "z": "axial"}
_SLICE = re.compile(r"([xyz])_(\d+)")
_MASK = re.compile(r"--(\d+)_(\d+)\.png$")

# (region, keywords in class names); the region with most matching labels wins.
REGION_KEYWORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("head and neck", ("brain", "glioma", "edema", "enhancing", "necrotic", "hippocamp",
                       "lateral ventricle", "cerebr", "skull", "parotid", "mandible", "thyroid",
                       "cochlea", "optic nerve", "chiasm", "eye", "lens", "pituitary",
                       "brainstem", "white matter", "gray matter", "grey matter", "csf")),
    ("thorax", ("lung", "heart", "atrium", "left ventricle", "right ventricle", "myocard",
                "esophag", "trachea", "pulmonary", "pleura", "rib", "breast", "covid",
                "pneumo", "bronch")),
    ("abdomen", ("liver", "spleen", "kidney", "pancrea", "stomach", "gallbladder", "duoden",
                 "colon", "adrenal", "bowel", "hepatic", "portal", "vena cava", "aorta",
                 "intestine")),
    ("pelvis", ("prostate", "bladder", "uter", "rectum", "femur", "femoral", "ovar",
                "pelvi", "hip")),
)
MODALITY_REGION = {"fundus": "eye", "dermoscopy": "skin"}


def clean_label(name: str) -> str:
  return " ".join(name.replace("_", " ").split())


def infer_region(labels: list[str], modality: str) -> str:
  if modality in MODALITY_REGION:
    return MODALITY_REGION[modality]
  votes: Counter = Counter()
  for label in labels:
    low = label.lower()
    for region, words in REGION_KEYWORDS:
      if any(w in low for w in words):
        votes[region] += 1
        break
  return votes.most_common(1)[0][0] if votes else ""


class SAMed2DSource:
  name = "samed2d"

  def __init__(self, root: str, *, index: str | None = None, mapping: str | None = None,
               min_aspect: float = 0.5, inverted: tuple[str, ...] = INVERTED_MASK_DATASETS):
    self.root = Path(root)
    if not self.root.is_dir():
      raise SourceError(f"SA-Med2D folder {self.root} does not exist (give the SAMed2Dv1 "
                        "folder with --root)")
    self.index = Path(index) if index else self._find(INDEX_NAME, "SAMed2D*.json",
                                                      exclude="class_mapping")
    self.mapping_path = Path(mapping) if mapping else self._find(MAPPING_NAME,
                                                                 "*class_mapping*.json")
    self.classes = load_class_mapping(self.mapping_path)
    self.input_files = (self.index, self.mapping_path)  # hashed into the run's manifest (the
    #                                                     images are not: too many)
    self.min_aspect, self.inverted = min_aspect, tuple(inverted)
    self.files = ImageRoot(str(self.root))

  def _find(self, name: str, pattern: str, exclude: str = "") -> Path:
    if (self.root / name).is_file():
      return self.root / name
    found = sorted(p for p in self.root.glob(pattern) if not exclude or exclude not in p.name)
    if len(found) == 1:
      return found[0]
    listing = sorted(p.name for p in self.root.iterdir())[:20]
    raise SourceError(f"{self.root}: cannot find {name} (nor exactly one {pattern}); the folder "
                      f"holds {listing}")

  def refs(self, skips: Counter) -> Iterator[ImageRef]:
    try:
      for key, masks in iter_object(self.index):
        ref = self._ref(key, masks, skips)
        if ref is not None:
          yield ref
    except JSONStreamError as e:
      raise SourceError(f"SA-Med2D index: {e}") from None

  def _ref(self, key: str, masks, skips: Counter) -> ImageRef | None:
    if not isinstance(masks, list) or not all(isinstance(m, str) for m in masks):
      raise SourceError(f"{self.index}: entry {key!r}: expected a list of mask paths, got "
                        f"{type(masks).__name__} (the index format differs from "
                        '{"images/<stem>.png": ["masks/<stem>--CCCC_III.png", ...]})')
    stem = Path(key).stem
    parts = stem.split("--")
    if len(parts) != 4 or not key.endswith(".png"):
      skips["bad_image_name"] += 1
      return None
    _, dataset, case, tail = parts
    modality = modality_of(stem)
    if modality is None:
      skips["unknown_modality"] += 1
      return None
    if tail == "2d_none":
      axis, sl = "", None
    else:
      m = _SLICE.fullmatch(tail)
      if m is None:
        skips["bad_image_name"] += 1
        return None
      axis, sl = m.group(1), int(m.group(2))
    if dataset not in self.classes:
      skips["dataset_not_in_mapping"] += 1
      return None
    if not masks:
      skips["no_masks"] += 1
      return None
    return ImageRef(stem, modality, dataset, case, sl, {"image": key, "masks": masks,
                                                        "axis": axis})

  def _open(self, rel: str) -> Image.Image:
    try:
      im = Image.open(self.files.resolve(rel))
      im.load()
      return im
    except (OSError, ValueError) as e:
      raise SourceError(f"{self.root / rel}: cannot read: {e}") from None

  def load(self, ref: ImageRef) -> Loaded:
    p = ref.payload
    im = self._open(p["image"])
    width, height = im.size
    vocab = self.vocabulary(ref.dataset)
    loaded = Loaded(width, height, [], "", AXIS_ORIENTATION.get(p.get("axis", ""), ""), vocab)
    if min(width, height) < self.min_aspect * max(width, height):
      loaded.skip_image = "aspect"
      return loaded
    if np.count_nonzero(np.bincount(np.asarray(im.convert("L")).ravel(), minlength=256)) <= 2:
      loaded.skip_image = "binary_image"
      return loaded
    stem = ref.id
    names = self.classes[ref.dataset]
    for rel in p["masks"]:
      base = Path(rel).name
      m = _MASK.search(base)
      if m is None or not base.startswith(stem + "--"):
        loaded.skips["bad_mask_name"] += 1
        continue
      name = names.get(int(m.group(1)))
      if name is None:
        loaded.skips["unknown_class"] += 1
        continue
      if name.startswith("union_"):
        loaded.skips["union_class"] += 1
        continue
      try:
        mim = self._open(rel)
      except SourceError:
        loaded.skips["unreadable_mask"] += 1
        continue
      if mim.size != (width, height):
        loaded.skips["mask_size_mismatch"] += 1
        continue
      arr = np.asarray(mim)
      mask = (arr[..., 0] if arr.ndim == 3 else arr) > 0
      if ref.dataset in self.inverted:
        mask = ~mask
      loaded.instances.append((clean_label(name), mask))
    loaded.region = infer_region([label for label, _ in loaded.instances], ref.modality)
    return loaded

  def vocabulary(self, dataset: str) -> tuple[str, ...]:
    return tuple(clean_label(n) for n in self.classes[dataset].values()
                 if not n.startswith("union_"))

  def image_bytes(self, ref: ImageRef) -> bytes:
    return self.files.read(ref.payload["image"])


def load_class_mapping(path: Path) -> dict[str, dict[int, str]]:
  """``{dataset: {class index: class name}}`` from the mapping file (checked)."""
  try:
    with open(path, encoding="utf-8") as f:
      raw = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise SourceError(f"{path}: cannot read the class mapping: {e}") from None
  if not isinstance(raw, Mapping):
    raise SourceError(f"{path}: expected {{dataset: {{class name: index}}}}, got "
                      f"{type(raw).__name__}")
  out: dict[str, dict[int, str]] = {}
  for dataset, classes in raw.items():
    if not isinstance(classes, Mapping):
      raise SourceError(f"{path}: dataset {dataset!r}: expected {{class name: index}}, got "
                        f"{type(classes).__name__}")
    inv: dict[int, str] = {}
    for name, idx in classes.items():
      try:
        inv[int(idx)] = str(name)
      except (TypeError, ValueError):
        raise SourceError(f"{path}: dataset {dataset!r}, class {name!r}: index {idx!r} is not "
                          "a number") from None
    out[str(dataset)] = inv
  return out
