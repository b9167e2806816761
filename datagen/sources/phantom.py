"""Procedural phantoms: images with instance masks for all 8 modalities (the default source).

    src = PhantomSource(seed=0, image_size=112, num_images=1000, slice_stride=3)
    for ref in src.refs(Counter()): loaded = src.load(ref)

Every case draws its geometry from ``(seed, modality, case)``: a field of view (scaled and
shifted; a large one is a zoomed view cropped by the image border, so boxes spread over the
whole image) and the structures of
:mod:`datagen.sources.phantom_specs` (presence, count, centre, size, rotation, boundary
harmonics; for 3-D modalities also a centre and extent along the volume). A slice is the
cross-section of every structure at its ``z`` plus the modality's background and noise, so
neighbouring slices of a case are alike and structures appear and vanish along the volume.
Structures other than parent/child pairs never overlap (checked on a coarse raster of the
slices). Everything is deterministic given the seed; any slice renders alone.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterator

import numpy as np
from PIL import Image

from bird_jax.data.image import png_bytes
from bird_jax.vocabulary import MODALITIES
from datagen.sources.base import ImageRef, Loaded, make_id, stable_seed
from datagen.sources.phantom_specs import SPECS, LabelSpec, ModalitySpec
from datagen.sources import phantom_paint as paint

SLICES_PER_CASE = 24
_CHECK_RES = 40  # raster size of the overlap check
_CHECK_Z = np.linspace(0.02, 0.98, 9)


@dataclasses.dataclass(frozen=True)
class Inst:
  """One structure of a case, in image coordinates ([0, 1] of the image width/height)."""

  spec: LabelSpec
  cx: float
  cy: float
  rx: float
  ry: float
  angle: float
  harmonics: tuple[tuple[int, float, float], ...]  # (order, amplitude, phase)
  cz: float
  rz: float
  parent: int | None  # index of the parent instance

  @property
  def harmonics_amp(self) -> float:
    return sum(abs(a) for _, a, _ in self.harmonics)


@dataclasses.dataclass(frozen=True)
class Field:
  x0: float
  y0: float
  w: float
  h: float

  def to_image(self, u: float, v: float) -> tuple[float, float]:
    return self.x0 + u * self.w, self.y0 + v * self.h


@dataclasses.dataclass(frozen=True)
class Case:
  spec: ModalitySpec
  field: Field
  insts: tuple[Inst, ...]
  seed: int


def _uniform(rng: np.random.Generator, r: tuple[float, float]) -> float:
  return float(rng.uniform(r[0], r[1]))


def case_geometry(spec: ModalitySpec, seed: int, case: int) -> Case:
  """The structures of one case (deterministic in ``seed``, modality and ``case``)."""
  case_seed = stable_seed("phantom", seed, spec.key, case)
  rng = np.random.default_rng(case_seed)
  w = _uniform(rng, spec.field_scale)
  h = w * spec.field_aspect
  cx, cy = (float(rng.uniform(lo, 1 - lo)) for lo in (min(w / 2 + 0.02, 0.32),
                                                       min(h / 2 + 0.02, 0.32)))
  x0, y0 = cx - w / 2, cy - h / 2
  field = Field(x0, y0, w, h)
  insts: list[Inst] = []
  by_label: dict[str, list[int]] = {}
  rasters: list[list[np.ndarray | None]] = []  # coarse masks of insts (overlap checks)
  present = [ls for ls in spec.labels if rng.random() < ls.p]
  if not any(not ls.parent for ls in present):  # every case shows at least one structure
    present.insert(0, spec.labels[0])
  for ls in present:
    parents = [i for p in ls.parent for i in by_label.get(p, [])]
    if ls.parent and not parents:
      continue
    side = int(rng.integers(len(ls.centers)))  # which centre region the first instance uses
    for k in range(int(rng.integers(ls.count[0], ls.count[1] + 1))):
      for _ in range(30):
        inst = _draw(ls, k + side, field, spec.volume, rng, parents, insts)
        raster = _raster(inst, spec.volume)
        if not _collides(inst, raster, insts, rasters):
          by_label.setdefault(ls.name, []).append(len(insts))
          insts.append(inst)
          rasters.append(raster)
          break
  return Case(spec, field, tuple(insts), case_seed)


def _draw(ls: LabelSpec, k: int, field: Field, volume: bool, rng: np.random.Generator,
          parents: list[int], insts: list[Inst]) -> Inst:
  angle = float(rng.uniform(-0.6, 0.6)) if ls.rotate else 0.0
  harm = tuple((n, float(rng.uniform(0.3, 1.0)) * ls.irregular / (n - 1),
                float(rng.uniform(0, 2 * math.pi))) for n in (2, 3, 4, 5))
  aspect = _uniform(rng, ls.aspect)
  if parents:
    p_i = parents[int(rng.integers(len(parents)))]
    p = insts[p_i]
    s = _uniform(rng, ls.size)
    rx = min(p.rx, p.ry) * s
    reach = (1 - s) * 0.55 if s < 1 else 0.15
    off = rng.uniform(-reach, reach, 2)
    cx, cy = p.cx + off[0] * p.rx, p.cy + off[1] * p.ry
    return Inst(ls, cx, cy, rx, rx * aspect, angle, harm, p.cz, p.rz * min(max(s, 0.5), 1.2),
                p_i)
  region = ls.centers[k % len(ls.centers)]
  cx, cy = field.to_image(_uniform(rng, region[:2]), _uniform(rng, region[2:]))
  rx = _uniform(rng, ls.size) * field.w
  cz, rz = (_uniform(rng, ls.z), _uniform(rng, ls.zr)) if volume else (0.5, 2.0)
  return Inst(ls, cx, cy, rx, rx * aspect, angle, harm, cz, rz, None)


def _ancestors(i: int | None, insts: list[Inst]) -> set[int]:
  out = set()
  while i is not None:
    out.add(i)
    i = insts[i].parent
  return out


def _raster(inst: Inst, volume: bool) -> list[np.ndarray | None]:
  """Coarse masks of ``inst`` at the check slices (one for a 2-D image)."""
  yy, xx = _grid(_CHECK_RES)
  return [shape_mask(inst, yy, xx, z) for z in (_CHECK_Z if volume else [None])]


def _collides(new: Inst, raster: list[np.ndarray | None], insts: list[Inst],
              rasters: list[list[np.ndarray | None]]) -> bool:
  """Overlap of more than 5% with a structure that is not an ancestor (coarse raster)."""
  if new.spec.overlap_ok:
    return False
  ancestors = _ancestors(new.parent, insts)
  for j, other in enumerate(rasters):
    if j in ancestors or insts[j].spec.overlap_ok:
      continue
    for a, b in zip(raster, other):
      if a is not None and b is not None:
        inter = np.count_nonzero(a & b)
        if inter and inter > 0.05 * min(np.count_nonzero(a), np.count_nonzero(b)):
          return True
  return False


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
  c = (np.arange(size, dtype=np.float32) + 0.5) / size
  return c[:, None], c[None, :]


def scale_at(inst: Inst, z: float | None) -> float:
  """Cross-section scale of an ellipsoid at slice ``z`` (1 for 2-D images)."""
  if z is None:
    return 1.0
  t = (z - inst.cz) / inst.rz
  return math.sqrt(1 - t * t) if abs(t) < 1 else 0.0


def shape_mask(inst: Inst, yy: np.ndarray, xx: np.ndarray, z: float | None,
               polar: bool = False):
  """Bool mask of ``inst`` at ``z`` on the grid (``yy`` [H, 1], ``xx`` [1, W]); None if absent.

  With ``polar``, also returns the normalised radius r / rho (for rims and rings).
  """
  k = scale_at(inst, z)
  if k < 0.08:
    return None
  rx, ry = inst.rx * k, inst.ry * k
  height, width = yy.shape[0], xx.shape[1]
  ext = max(rx, ry) * (1 + inst.harmonics_amp) * 1.2
  r0, r1 = max(0, int((inst.cy - ext) * height) - 1), min(height, int((inst.cy + ext) * height) + 2)
  c0, c1 = max(0, int((inst.cx - ext) * width) - 1), min(width, int((inst.cx + ext) * width) + 2)
  mask = np.zeros((height, width), bool)
  rel = np.full((height, width), np.inf, np.float32)
  if r0 >= r1 or c0 >= c1:
    return (mask, rel) if polar else mask
  c, s = math.cos(inst.angle), math.sin(inst.angle)
  dx, dy = xx[:, c0:c1] - inst.cx, yy[r0:r1] - inst.cy
  u = (dx * c + dy * s) / rx
  v = (-dx * s + dy * c) / ry
  theta = np.arctan2(v, u)
  rho = 1.0 + sum(a * np.cos(n * theta + ph) for n, a, ph in inst.harmonics)
  r = (np.abs(u) ** 4 + np.abs(v) ** 4) ** 0.25 if inst.spec.shape == "rect" else np.hypot(u, v)
  crop = r / rho
  inside = crop < 1.0
  if inst.spec.shape == "ring":
    inside &= crop > 0.62
  mask[r0:r1, c0:c1] = inside
  rel[r0:r1, c0:c1] = crop
  return (mask, rel) if polar else mask


def render(case: Case, z: float | None, size: int, noise_seed: int
           ) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
  """The slice at ``z``: uint8 image ([S, S] or [S, S, 3]) and (label, mask) per instance."""
  spec = case.spec
  rng = np.random.default_rng(noise_seed)
  yy, xx = _grid(size)
  tex = paint.Textures(rng, size)
  img = paint.BACKGROUNDS[spec.background](yy, xx, case.field, z, rng, tex, case.insts)
  instances: list[tuple[str, np.ndarray]] = []
  painted: list[tuple[int, Inst, np.ndarray, np.ndarray]] = []
  for inst in case.insts:
    got = shape_mask(inst, yy, xx, z, polar=True)
    if got is None:
      continue
    mask, rel = got
    instances.append((inst.spec.name, mask))
    painted.append((inst.spec.layer, inst, mask, rel))
  for _, inst, mask, rel in sorted(painted, key=lambda t: t[0]):
    paint.paint_structure(img, inst.spec.look, mask, rel, tex)
  img = paint.finish(img, spec, rng)
  return img, instances


class PhantomSource:
  """All 8 modalities, ``cases_per_modality`` sized from ``num_images`` (with a margin for
  slice striding and de-duplication)."""

  name = "phantom"

  def __init__(self, *, seed: int = 0, image_size: int = 112, num_images: int = 1000,
               slice_stride: int = 3, slices_per_case: int = SLICES_PER_CASE,
               modalities: tuple[str, ...] = MODALITIES):
    if image_size < 16:
      raise ValueError(f"phantom image size {image_size} is too small (>= 16 px)")
    if num_images < 1:
      raise ValueError("the phantom source needs --num-images >= 1")
    unknown = sorted(set(modalities) - set(SPECS))
    if unknown:
      raise ValueError(f"unknown phantom modalities {unknown}; known: {list(SPECS)}")
    self.seed, self.size, self.slices = seed, image_size, slices_per_case
    self.modalities = tuple(modalities)
    per_modality = math.ceil(num_images / len(self.modalities))
    kept_per_case = max(1, slices_per_case // max(1, slice_stride))
    self.cases_3d = math.ceil(per_modality * 1.3 / kept_per_case) + 1
    self.cases_2d = math.ceil(per_modality * 1.15) + 1
    self._cases: dict[tuple[str, int], Case] = {}  # recently used case geometries

  def case(self, modality: str, case: int) -> Case:
    key = (modality, case)
    if key not in self._cases:
      if len(self._cases) >= 32:
        self._cases.pop(next(iter(self._cases)))
      self._cases[key] = case_geometry(SPECS[modality], self.seed, case)
    return self._cases[key]

  def __getstate__(self):
    return {**self.__dict__, "_cases": {}}

  def refs(self, skips: Counter) -> Iterator[ImageRef]:
    for key in self.modalities:
      spec = SPECS[key]
      n_cases = self.cases_3d if spec.volume else self.cases_2d
      for case in range(n_cases):
        case_id = f"case{case:04d}"
        for sl in (range(self.slices) if spec.volume else [None]):
          yield ImageRef(make_id(spec.sub, spec.dataset, case_id, "z", sl), key, spec.dataset,
                         case_id, sl, {"case": case})

  def render_ref(self, ref: ImageRef) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    case = self.case(ref.modality, int(ref.payload["case"]))
    spec = case.spec
    z = None if ref.slice is None else (
        spec.z_span[0] + (ref.slice + 0.5) / self.slices * (spec.z_span[1] - spec.z_span[0]))
    return render(case, z, self.size, stable_seed(case.seed, ref.slice))

  def load(self, ref: ImageRef) -> Loaded:
    spec = SPECS[ref.modality]
    _, instances = self.render_ref(ref)
    return Loaded(self.size, self.size, instances, spec.region, spec.orientation,
                  tuple(ls.name for ls in spec.labels), {ls.name: ls.note for ls in spec.labels})

  def image_bytes(self, ref: ImageRef) -> bytes:
    return png_bytes(self.render_ref(ref)[0])


def preview(src: PhantomSource, refs: list[ImageRef], columns: int = 8) -> Image.Image:
  """A contact sheet of rendered refs (for looking at the phantoms)."""
  tiles = []
  for ref in refs:
    img, _ = src.render_ref(ref)
    tiles.append(np.repeat(img[..., None], 3, -1) if img.ndim == 2 else img)
  rows = math.ceil(len(tiles) / columns)
  sheet = np.zeros((rows * src.size, columns * src.size, 3), np.uint8)
  for i, t in enumerate(tiles):
    r, c = divmod(i, columns)
    sheet[r * src.size:(r + 1) * src.size, c * src.size:(c + 1) * src.size] = t
  return Image.fromarray(sheet)
