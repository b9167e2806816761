"""Pixels of the phantoms: textures, one background painter per modality, structure paint.

Painters work in float32 on a [0, 1] scale (grey [H, W] or RGB [H, W, 3]) and take the grid
``yy`` [H, 1] / ``xx`` [1, W] of pixel centres in [0, 1], the case's field of view, the slice
``z`` (None for 2-D images), a random generator, the image's textures and the case's
structures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from datagen.sources.phantom_specs import Look, ModalitySpec


class Textures:
  """Texture fields of one image, each with zero mean and unit-ish amplitude."""

  def __init__(self, rng: np.random.Generator, size: int):
    self.grain = rng.standard_normal((size, size), dtype=np.float32)
    cells = max(4, size // 10)
    low = Image.fromarray(rng.standard_normal((cells, cells), dtype=np.float32), mode="F")
    self.mottled = np.asarray(low.resize((size, size), Image.BILINEAR), dtype=np.float32)
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    phi = float(rng.uniform(0, math.pi))
    self.stripes = np.sin(2 * math.pi * 14 * (c[None, :] * math.cos(phi) + c[:, None]
                                              * math.sin(phi))).astype(np.float32)

  def get(self, name: str) -> np.ndarray | None:
    return {"grain": self.grain, "mottled": self.mottled, "stripes": self.stripes}.get(name)


def _ellipse_r(yy, xx, field, scale: float = 1.0) -> np.ndarray:
  cx, cy = field.x0 + field.w / 2, field.y0 + field.h / 2
  return np.hypot((xx - cx) / (field.w / 2 * scale), (yy - cy) / (field.h / 2 * scale))


def _rgb(shape: tuple[int, int], color: Sequence[float]) -> np.ndarray:
  return np.broadcast_to(np.asarray(color, np.float32), (*shape, 3)).copy()


def ct_body(yy, xx, field, z, rng, tex, insts) -> np.ndarray:
  r = _ellipse_r(yy, xx, field)
  img = np.where(r < 1.0, 0.40 + 0.03 * tex.mottled, 0.0).astype(np.float32)
  img[(r > 0.9) & (r < 1.0)] = 0.27
  return img


def mr_head(yy, xx, field, z, rng, tex, insts) -> np.ndarray:
  k = 1.0 if z is None else math.sqrt(max(0.3, 1 - ((z - 0.5) / 0.8) ** 2))
  r = _ellipse_r(yy, xx, field, k)
  img = np.zeros(r.shape, np.float32)
  img[r < 1.0] = 0.70  # scalp fat
  img[r < 0.95] = 0.10  # skull
  img[r < 0.89] = 0.22  # CSF
  brain = r < 0.86
  img[brain] = 0.46 + 0.04 * tex.mottled[brain]
  return img


def xray_chest(yy, xx, field, z, rng, tex, insts) -> np.ndarray:
  cx, cy = field.x0 + field.w / 2, field.y0 + field.h / 2
  u, v = np.abs(xx - cx) / (field.w / 2), np.abs(yy - cy) / (field.h / 2)
  body = u ** 3 + v ** 3 < 1.0
  img = np.where(body, 0.50 + 0.03 * tex.mottled + 0.08 * (yy - cy), 0.06).astype(np.float32)
  img[body & (u < 0.07)] = 0.68  # spine
  return img


def pet_body(yy, xx, field, z, rng, tex, insts) -> np.ndarray:
  r = _ellipse_r(yy, xx, field)
  return np.where(r < 1.0, 0.13 + 0.03 * tex.mottled, 0.0).astype(np.float32)


def endo_colon(yy, xx, field, z, rng, tex, insts) -> np.ndarray:
  img = _rgb((yy.shape[0], xx.shape[1]), (0.82, 0.42, 0.36))
  img += 0.05 * tex.mottled[..., None]
  lx, ly = rng.uniform(0.3, 0.7, 2)
  d = np.hypot(xx - lx, yy - ly)
  lumen = float(rng.uniform(0.1, 0.18))
  img *= (1 - 0.85 * np.exp(-(d / lumen) ** 2))[..., None]
  for radius in (0.3, 0.45, 0.62):  # folds around the lumen
    img[np.abs(d - radius) < 0.012] *= 0.72
  centre = np.hypot(xx - 0.5, yy - 0.5)
  img *= np.clip(1 - 0.6 * (centre / 0.72) ** 2, 0.15, 1)[..., None]
  for _ in range(int(rng.integers(2, 6))):  # specular highlights
    hx, hy = rng.uniform(0.1, 0.9, 2)
    img[np.hypot(xx - hx, yy - hy) < 0.012] = 1.0
  return img


def derm_skin(yy, xx, field, z, rng, tex, insts) -> np.ndarray:
  img = _rgb((yy.shape[0], xx.shape[1]), (0.86, 0.68, 0.58))
  img += 0.04 * tex.mottled[..., None]
  for _ in range(int(rng.integers(0, 4))):  # hairs
    a, off = rng.uniform(0, math.pi), rng.uniform(0.1, 0.9)
    dist = np.abs((xx - off) * math.sin(a) - (yy - 0.5) * math.cos(a))
    img[dist < 0.005] = (0.16, 0.11, 0.09)
  img[_ellipse_r(yy, xx, field) > 1.0] = 0.02  # dermatoscope vignette
  return img


def fundus_eye(yy, xx, field, z, rng, tex, insts) -> np.ndarray:
  r = _ellipse_r(yy, xx, field)
  img = _rgb(r.shape, (0.78, 0.33, 0.12)) * (1 - 0.35 * np.minimum(r, 1) ** 2)[..., None]
  img += 0.02 * tex.mottled[..., None]
  disc = next((i for i in insts if i.spec.name == "optic disc"), None)
  if disc is not None:
    d = np.hypot(xx - disc.cx, yy - disc.cy) + 1e-6
    ang = np.arctan2(yy - disc.cy, xx - disc.cx)
    for _ in range(7):  # vessels leaving the disc
      a, curl = rng.uniform(-math.pi, math.pi), rng.uniform(-2.5, 2.5)
      off = np.angle(np.exp(1j * (ang - a - curl * d)))
      img[(np.abs(off) * d < 0.006) & (d > disc.rx * 0.6)] = (0.50, 0.09, 0.05)
  img[r > 1.0] = 0.0
  return img


def us_fan(yy, xx, field, z, rng, tex, insts) -> np.ndarray:
  apex_x, apex_y = field.x0 + field.w / 2, field.y0
  d = np.hypot(xx - apex_x, yy - apex_y)
  ang = np.arctan2(xx - apex_x, yy - apex_y)
  sector = (d < field.h * 1.05) & (np.abs(ang) < 0.75) & (d > 0.03)
  depth = d / (field.h * 1.05)
  img = np.where(sector, 0.30 * (1 - 0.4 * depth), 0.0).astype(np.float32)
  img[sector & (depth < 0.16)] = 0.46  # skin and muscle layers
  return img


BACKGROUNDS: dict[str, Callable[..., np.ndarray]] = {
    f.__name__: f for f in (ct_body, mr_head, xray_chest, pet_body, endo_colon, derm_skin,
                            fundus_eye, us_fan)}


def paint_structure(img: np.ndarray, look: Look, mask: np.ndarray, rel: np.ndarray,
                    tex: Textures) -> None:
  """Paints one structure (and its rim) into ``img`` in place."""
  t = tex.get(look.texture)
  value = np.asarray(look.value, np.float32)
  if t is None or look.contrast == 0:
    img[mask] = value
  else:
    vals = t[mask] * look.contrast
    img[mask] = value + (vals[:, None] if img.ndim == 3 else vals)
  if look.rim is not None:
    img[mask & (rel > 1 - look.rim_width)] = np.asarray(look.rim, np.float32)


def finish(img: np.ndarray, spec: ModalitySpec, rng: np.random.Generator) -> np.ndarray:
  """Speckle (ultrasound), noise, colour map; -> uint8."""
  if spec.background == "us_fan":
    img = img * (rng.rayleigh(1.0, img.shape).astype(np.float32) / 1.2533)
  if spec.noise:
    img = img + spec.noise * rng.standard_normal(img.shape, dtype=np.float32)
  if spec.colormap == "hot":
    img = np.stack([3 * img, 3 * img - 1, 3 * img - 2], axis=-1)
  return (np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
