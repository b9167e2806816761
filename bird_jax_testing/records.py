"""Small synthetic records with real PNG images, for tests and loader benchmarks.

Deterministic in ``index``: a random-looking but reproducible image, one object, and up to
three Q/A turns (VG, ROC, MIA) whose boxes are written by :mod:`bird_jax.boxes`.
"""

from __future__ import annotations

import numpy as np

from bird_jax import boxes as boxes_lib
from bird_jax.data.image import png_bytes
from bird_jax.data.records import Object, Provenance, Record, Turn
from bird_jax.vocabulary import MODALITIES

LABELS = ("liver", "left kidney", "tumor", "edema", "optic disc", "lesion", "polyp", "heart")


def synthetic_pixels(index: int, size: int, gray: bool = False) -> np.ndarray:
  """Smooth gradients plus noise and a bright rectangle: compresses like a real scan."""
  rng = np.random.default_rng(index)
  y, x = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
  base = 80 + 60 * np.sin(6.28 * (x * rng.uniform(0.5, 2) + y * rng.uniform(0.5, 2)))
  chans = 1 if gray else 3
  img = base[..., None] + rng.normal(0, 12, (size, size, chans))
  a, b = sorted(rng.integers(0, size, 2)), sorted(rng.integers(0, size, 2))
  img[b[0]:b[1] + 1, a[0]:a[1] + 1] += 70
  img = np.clip(img, 0, 255).astype(np.uint8)
  return img[..., 0] if gray else img


def synthetic_record(index: int, *, image_size: int = 64, n_turns: int = 3, embed: bool = True,
                     gray: bool = False) -> Record:
  """Record ``index``: one image, one object, ``n_turns`` (1-3) Q/A pairs (VG, ROC, MIA)."""
  rng = np.random.default_rng(10_000 + index)
  modality = MODALITIES[index % len(MODALITIES)]
  rid = f"{modality}_{index:06d}"
  image = rid + ".png"
  label = LABELS[index % len(LABELS)]
  x1, y1 = rng.uniform(0.0, 0.6, 2).round(3)
  x2, y2 = (x1 + rng.uniform(0.1, 0.39)).round(3), (y1 + rng.uniform(0.1, 0.39)).round(3)
  box = (float(x1), float(y1), float(x2), float(y2))
  qa = [
      ("vg", f"Where is the {label} in the image?",
       f"The {boxes_lib.ref_span(label, [box])} is located there."),
      ("roc", f"What is the object at {boxes_lib.box_span(box)}?", f"{label.capitalize()}."),
      ("mia", "Can you provide a general interpretation of this image?",
       f"A {modality} image showing the {label}."),
  ][:n_turns]
  turns: list[Turn] = []
  for k, (_, q, a) in enumerate(qa):
    prefix = f"Picture 1: <img>{image}</img>\n" if k == 0 else ""
    turns += [Turn("user", prefix + q), Turn("assistant", a)]
  data = png_bytes(synthetic_pixels(index, image_size, gray)) if embed else None
  return Record(id=rid, image=image, modality=modality, conversations=tuple(turns),
                tasks=tuple(t for t, _, _ in qa), width=image_size, height=image_size,
                region="abdomen", orientation="axial", dataset="synthetic",
                case_id=f"case_{index // 4}", objects=(Object(label, box),),
                caption=f"A synthetic {modality} image.",
                provenance=Provenance("synthetic", "", "1"), image_bytes=data).validate()
