"""Generic synthetic grounding scenes: plain shapes, colours and textures (no medical labels).

    src = ShapesSource(seed=0, image_size=112, num_images=20000, max_labels=5)

The pre-training data of the demo's base model (the role Qwen-VL's generic grounding data
plays for BiRD). Every scene is its own case: a background (flat, gradient, mottled, speckled
or a large backdrop field, sometimes crossed by thin lines) and 1..``max_labels`` labelled
kinds of object. A label either describes the look, ``[texture] colour shape`` ("red
circle", "striped dark gray oval"), or names an object category with a fixed look and size
("coin", "brick": an arbitrary name bound to a look, as an anatomical name is). Every
instance of a label looks the same, and no two labels of a scene share colour, shape and
texture. A label may have several instances (a multi-box grounding answer) and an object
may sit inside another one (its mask is then inside the parent's mask, as a lesion inside an
organ). Half of the scenes are grey only. Unrelated objects never overlap. Instance masks
are full shape masks, clipped by the image border. Scenes are spread evenly over the 8
modality keys (only so that records and evaluation tables have their usual form); the key
does not change the picture.

Everything is a pure function of ``(seed, scene index)``.
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

SHAPES = ("circle", "oval", "square", "rectangle", "ring", "triangle", "blob")
GREYS = {"white": (0.96,) * 3, "light gray": (0.74,) * 3, "gray": (0.52,) * 3,
         "dark gray": (0.30,) * 3, "black": (0.05,) * 3}
COLOURS = {"red": (0.86, 0.12, 0.10), "orange": (0.96, 0.55, 0.10),
           "yellow": (0.95, 0.90, 0.20), "green": (0.18, 0.68, 0.25),
           "cyan": (0.25, 0.82, 0.88), "blue": (0.15, 0.28, 0.86),
           "purple": (0.55, 0.20, 0.70), "pink": (0.96, 0.62, 0.76),
           "brown": (0.50, 0.30, 0.14)}
TEXTURES = ("plain", "striped", "spotted", "grainy")
STYLES = ("full", "plain", "bare")  # scene styles, easiest last (make_scene)
BACKGROUNDS = ("flat", "gradient", "mottled", "speckle", "field")
DATASET = "Shapes"
_ELONGATED = ("oval", "rectangle")
_CHECK = 48  # raster of the overlap check


@dataclasses.dataclass(frozen=True)
class Look:
  colour: str
  shape: str
  texture: str
  rim: str | None  # colour name of a rim band (not part of a descriptive label)
  name: str = ""  # a category name; empty: the label describes the look

  @property
  def label(self) -> str:
    if self.name:
      return self.name
    words = ([] if self.texture == "plain" else [self.texture]) + [self.colour, self.shape]
    return " ".join(words)


# Object categories: a name bound to a look (colour, shape, texture, rim) and a size range
# (semi-axis as a fraction of the image side).
CATEGORIES: dict[str, tuple[Look, tuple[float, float]]] = {
    name: (Look(colour, shape, texture, rim, name), size) for name, colour, shape, texture, rim,
    size in (
        ("coin", "yellow", "circle", "plain", "brown", (0.04, 0.07)),
        ("button", "black", "circle", "spotted", None, (0.03, 0.05)),
        ("pebble", "gray", "blob", "grainy", None, (0.04, 0.08)),
        ("plate", "white", "circle", "plain", "light gray", (0.14, 0.22)),
        ("cookie", "brown", "circle", "spotted", None, (0.06, 0.1)),
        ("melon", "green", "circle", "striped", None, (0.14, 0.2)),
        ("egg", "white", "oval", "plain", None, (0.05, 0.08)),
        ("bean", "dark gray", "oval", "plain", None, (0.03, 0.05)),
        ("lemon", "yellow", "oval", "grainy", None, (0.06, 0.1)),
        ("pillow", "light gray", "oval", "grainy", "white", (0.15, 0.22)),
        ("brick", "red", "rectangle", "grainy", None, (0.07, 0.12)),
        ("book", "blue", "rectangle", "plain", "white", (0.1, 0.16)),
        ("plank", "light gray", "rectangle", "striped", None, (0.16, 0.26)),
        ("tile", "dark gray", "square", "plain", "black", (0.05, 0.09)),
        ("crate", "brown", "square", "striped", None, (0.12, 0.2)),
        ("stamp", "pink", "square", "spotted", "white", (0.04, 0.07)),
        ("window", "cyan", "square", "plain", "dark gray", (0.1, 0.16)),
        ("kite", "purple", "triangle", "plain", None, (0.08, 0.14)),
        ("sail", "white", "triangle", "striped", None, (0.14, 0.22)),
        ("flag", "orange", "triangle", "plain", None, (0.05, 0.09)),
        ("donut", "pink", "ring", "plain", None, (0.06, 0.1)),
        ("tire", "black", "ring", "grainy", None, (0.1, 0.16)),
        ("bracelet", "light gray", "ring", "plain", None, (0.04, 0.07)),
        ("cloud", "white", "blob", "grainy", None, (0.12, 0.2)),
        ("pond", "blue", "blob", "plain", None, (0.12, 0.22)),
        ("island", "green", "blob", "spotted", "yellow", (0.1, 0.18)),
        ("stone", "dark gray", "blob", "spotted", None, (0.06, 0.11)),
        ("puddle", "black", "blob", "plain", None, (0.08, 0.16)),
        ("sponge", "yellow", "square", "spotted", None, (0.06, 0.1)),
        ("mirror", "light gray", "oval", "plain", "black", (0.08, 0.14)),
    )}


@dataclasses.dataclass(frozen=True)
class Obj:
  look: Look
  cx: float
  cy: float
  rx: float
  ry: float
  angle: float
  wobble: tuple[tuple[int, float, float], ...]  # boundary harmonics (order, amplitude, phase)
  parent: int | None


@dataclasses.dataclass(frozen=True)
class Scene:
  grey: bool
  background: str
  bg_colours: tuple[tuple[float, float, float], ...]
  objects: tuple[Obj, ...]
  absent: tuple[str, ...]  # labels of the vocabulary that the scene does not show
  seed: int
  style: str = "full"  # make_scene(style=...)

  @property
  def plain(self) -> bool:
    return self.style != "full"


def _rgb(name: str) -> np.ndarray:
  return np.asarray(GREYS.get(name) or COLOURS[name], np.float32)


def _distance(a, b) -> float:
  return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max())


def palette(grey: bool) -> list[str]:
  return list(GREYS) + ([] if grey else list(COLOURS))


def random_look(rng: np.random.Generator, grey: bool, avoid: list[np.ndarray],
                used: set[tuple[str, str, str]], p_category: float = 0.4, plain: bool = False
                ) -> tuple[Look, tuple[float, float] | None] | None:
  """A look (and its category's size range) whose colour stands out from every colour in
  ``avoid`` and whose (colour, shape, texture) is not in ``used``; None if none was found.
  ``plain``: a colour and a shape only (no category, texture or rim)."""
  names = palette(grey)
  categories = [c for c in CATEGORIES.values() if c[0].colour in names]
  for _ in range(40):
    if plain:
      colour, shape = names[int(rng.integers(len(names)))], SHAPES[int(rng.integers(len(SHAPES)))]
      look, size = Look(colour, shape, TEXTURES[0], None), None
    elif rng.random() < p_category:
      look, size = categories[int(rng.integers(len(categories)))]
    else:
      colour, shape = names[int(rng.integers(len(names)))], SHAPES[int(rng.integers(len(SHAPES)))]
      plain = rng.random() < 0.55
      texture = TEXTURES[0] if plain else TEXTURES[int(rng.integers(1, len(TEXTURES)))]
      rim = None
      if rng.random() < 0.2 and shape != "ring":
        rims = [n for n in names if _distance(_rgb(n), _rgb(colour)) >= 0.3]
        rim = rims[int(rng.integers(len(rims)))]
      look, size = Look(colour, shape, texture, rim), None
    if any(_distance(_rgb(look.colour), c) < 0.25 for c in avoid):
      continue
    if (look.colour, look.shape, look.texture) not in used:
      return look, size
  return None


def _draw_obj(rng: np.random.Generator, look: Look, size: float, parent: Obj | None,
              parent_index: int | None, field: tuple[float, float, float, float]) -> Obj:
  if look.shape in _ELONGATED:
    aspect = float(rng.uniform(0.4, 0.7))
  else:
    aspect = float(rng.uniform(0.9, 1.1))
  rotate = look.shape in ("oval", "rectangle", "triangle", "blob")
  angle = float(rng.uniform(-math.pi, math.pi)) if rotate else 0.0
  amp = 0.12 if look.shape == "blob" else 0.0
  wobble = tuple((n, float(rng.uniform(0.3, 1.0)) * amp / (n - 1), float(rng.uniform(0, 2 * math.pi)))
                 for n in (2, 3, 4, 5))
  if parent is not None:
    rx = min(parent.rx, parent.ry) * float(rng.uniform(0.3, 0.55))
    reach = 1 - rx / min(parent.rx, parent.ry) - 0.15
    off = rng.uniform(-reach, reach, 2) * 0.6
    return Obj(look, parent.cx + off[0] * parent.rx, parent.cy + off[1] * parent.ry, rx,
               rx * aspect, angle, wobble, parent_index)
  x0, y0, x1, y1 = field
  rx = size * float(rng.uniform(0.9, 1.1))
  cx, cy = float(rng.uniform(x0, x1)), float(rng.uniform(y0, y1))
  return Obj(look, cx, cy, rx, rx * aspect, angle, wobble, None)


def shape_mask(obj: Obj, yy: np.ndarray, xx: np.ndarray, polar: bool = False,
               filled: bool = False):
  """Bool mask of ``obj`` on the grid (``yy`` [H, 1], ``xx`` [1, W]); with ``polar`` also the
  normalised radius (< 1 inside) for rims; ``filled``: a ring without its hole."""
  c, s = math.cos(obj.angle), math.sin(obj.angle)
  dx, dy = xx - obj.cx, yy - obj.cy
  u = (dx * c + dy * s) / obj.rx
  v = (-dx * s + dy * c) / obj.ry
  shape = obj.look.shape
  if shape in ("square", "rectangle"):
    r = np.maximum(np.abs(u), np.abs(v))
  elif shape == "triangle":  # equilateral, pointing up in its own frame
    r = np.maximum(np.maximum(v * 1.0, -0.5 * v + 0.866 * u), -0.5 * v - 0.866 * u) * 2.0
  else:
    r = np.hypot(u, v)
  if obj.wobble and shape == "blob":
    theta = np.arctan2(v, u)
    r = r / (1.0 + sum(a * np.cos(n * theta + ph) for n, a, ph in obj.wobble))
  inside = r < 1.0
  if shape == "ring" and not filled:
    inside &= r > 0.6
  return (inside, r) if polar else inside


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
  c = (np.arange(size, dtype=np.float32) + 0.5) / size
  return c[:, None], c[None, :]


def _collides(mask: np.ndarray, others: list[np.ndarray]) -> bool:
  return any(np.count_nonzero(mask & o) > 0 for o in others)


def check_style(style: str) -> None:
  if style not in STYLES:
    raise ValueError(f"shapes style {style!r} is not one of {STYLES}")


def make_scene(seed: int, index: int, max_labels: int, style: str = "full") -> Scene:
  """The scene ``index`` (deterministic in ``seed`` and ``index``). ``style`` "plain": an
  easier scene: colours, a flat or gradient background without lines, labels that name a
  colour and a shape, one object per label, none inside another; "bare": such objects on a
  flat black background without noise (the easiest: anything not black is an object)."""
  check_style(style)
  plain = style != "full"
  scene_seed = stable_seed("shapes", seed, index)
  rng = np.random.default_rng(scene_seed)
  grey = bool(rng.random() < 0.5) and not plain
  names = palette(grey)
  background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
  if plain and background != "gradient":
    background = "flat"
  bg = [tuple(float(v) for v in _rgb(names[int(rng.integers(len(names)))]) * rng.uniform(0.7, 1.0))]
  if style == "bare":
    background, bg = "flat", [(0.0, 0.0, 0.0)]
  field = (0.12, 0.12, 0.88, 0.88)
  if background == "gradient":
    bg.append(tuple(float(v) for v in _rgb(names[int(rng.integers(len(names)))])))
  elif background == "field":  # a large backdrop shape on a dark surround; objects inside
    bg.append(tuple(float(v) for v in _rgb(names[int(rng.integers(len(names)))])))
    bg[0] = (0.03, 0.03, 0.03)
    field = (0.25, 0.25, 0.75, 0.75)
  avoid = [np.asarray(c, np.float32) for c in bg]
  n_labels = int(rng.integers(1, max_labels + 1))
  yy, xx = _grid(_CHECK)
  objs: list[Obj] = []
  rasters: list[np.ndarray] = []
  used: set[tuple[str, str, str]] = set()
  for _ in range(n_labels):
    got = random_look(rng, grey, avoid, used, plain=plain)
    if got is None:
      continue
    look, size_range = got
    parents = [i for i, o in enumerate(objs) if o.parent is None and min(o.rx, o.ry) > 0.08
               and o.look.shape != "ring"
               and _distance(_rgb(look.colour), _rgb(o.look.colour)) >= 0.25]
    if parents and not plain and rng.random() < 0.25:
      p = parents[int(rng.integers(len(parents)))]
      inside = shape_mask(objs[p], yy, xx)
      siblings = [rasters[j] for j, o in enumerate(objs) if o.parent == p]
      for _ in range(25):
        child = _draw_obj(rng, look, 0.0, objs[p], p, field)
        margin = dataclasses.replace(child, rx=child.rx * 1.25, ry=child.ry * 1.25)
        raster = shape_mask(margin, yy, xx, filled=True)
        if raster.any() and not (raster & ~inside).any() and not _collides(raster, siblings):
          objs.append(child)
          rasters.append(raster)
          used.add((look.colour, look.shape, look.texture))
          break
      continue
    count = 1 if plain or rng.random() < 0.7 else int(rng.integers(2, 4))
    if size_range is None:
      size_range = (0.035, 0.24 if count == 1 else 0.12)
    size = float(np.exp(rng.uniform(math.log(size_range[0]), math.log(size_range[1]))))
    placed = 0
    for _ in range(count):
      for _ in range(25):
        obj = _draw_obj(rng, look, size, None, None, field)
        margin = dataclasses.replace(obj, rx=obj.rx * 1.15, ry=obj.ry * 1.15)
        raster = shape_mask(margin, yy, xx, filled=True)
        top = [r for r, o in zip(rasters, objs) if o.parent is None]
        if raster.any() and not _collides(raster, top):
          objs.append(obj)
          rasters.append(raster)
          placed += 1
          break
    if placed:
      used.add((look.colour, look.shape, look.texture))
  absent: list[str] = []
  labels = {o.look.label for o in objs}
  for _ in range(6):
    got = random_look(rng, grey, [], used, plain=plain)
    if got is not None and got[0].label not in labels | set(absent):
      absent.append(got[0].label)
  return Scene(grey, background, tuple(bg), tuple(objs), tuple(absent), scene_seed, style)


def render(scene: Scene, size: int) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
  """uint8 RGB image [S, S, 3] and one (label, mask) per object."""
  rng = np.random.default_rng(stable_seed(scene.seed, "pixels", size))
  yy, xx = _grid(size)
  img = _background(scene, yy, xx, rng)
  instances: list[tuple[str, np.ndarray]] = []
  stripes_phase = float(rng.uniform(0, math.pi))
  for obj in scene.objects:  # parents come before their children
    mask, r = shape_mask(obj, yy, xx, polar=True)
    instances.append((obj.look.label, mask))
    _paint(img, obj, mask, r, yy, xx, rng, stripes_phase)
  if scene.style != "bare":
    img = img + float(rng.uniform(0.0, 0.04)) * rng.standard_normal(img.shape, dtype=np.float32)
  if scene.grey:
    img = np.repeat(img.mean(-1, keepdims=True), 3, axis=-1)
  return (np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8), instances


def _background(scene: Scene, yy, xx, rng) -> np.ndarray:
  shape = (yy.shape[0], xx.shape[1], 3)
  base = np.asarray(scene.bg_colours[0], np.float32)
  img = np.broadcast_to(base, shape).copy()
  if scene.background == "gradient":
    a = float(rng.uniform(0, 2 * math.pi))
    t = np.clip(0.5 + (xx - 0.5) * math.cos(a) + (yy - 0.5) * math.sin(a), 0, 1)[..., None]
    img = (1 - t) * img + t * np.asarray(scene.bg_colours[1], np.float32) * 0.8
  elif scene.background == "mottled":
    cells = int(rng.integers(4, 10))
    low = Image.fromarray(rng.standard_normal((cells, cells)).astype(np.float32), mode="F")
    smooth = np.asarray(low.resize(shape[:2], Image.BILINEAR), np.float32)
    img = img + 0.08 * smooth[..., None]
  elif scene.background == "speckle":
    speckle = rng.rayleigh(1.0, shape[:2]).astype(np.float32) / 1.2533
    img = img * (0.5 + 0.5 * speckle)[..., None]
  elif scene.background == "field":
    cx, cy = rng.uniform(0.4, 0.6, 2)
    w, h = rng.uniform(0.42, 0.62, 2)
    inside = np.hypot((xx - cx) / w, (yy - cy) / h) < 1.0
    img[inside] = np.asarray(scene.bg_colours[1], np.float32)
  if rng.random() < 0.3 and not scene.plain:  # unlabelled thin lines (vessels, hairs, ribs)
    names = palette(scene.grey)
    for _ in range(int(rng.integers(1, 5))):
      a, off = float(rng.uniform(0, math.pi)), float(rng.uniform(0.05, 0.95))
      dist = np.abs((xx - off) * math.sin(a) - (yy - 0.5) * math.cos(a))
      img[dist < 0.006] = _rgb(names[int(rng.integers(len(names)))]) * 0.8
  return img


def _paint(img, obj: Obj, mask, r, yy, xx, rng, stripes_phase: float) -> None:
  colour = _rgb(obj.look.colour)
  texture = obj.look.texture
  if texture == "plain":
    img[mask] = colour
  else:
    if texture == "striped":
      t = np.sin(2 * math.pi * 9 * (xx * math.cos(stripes_phase) + yy * math.sin(stripes_phase)))
      t = np.broadcast_to(t, mask.shape)
    elif texture == "spotted":
      t = np.where(rng.random(mask.shape) < 0.12, -1.0, 0.2)
    else:
      t = rng.standard_normal(mask.shape).astype(np.float32) * 0.6
    shade = 0.22 * (1.0 if colour.mean() < 0.6 else -1.0)
    img[mask] = colour + (t[mask] * shade)[:, None]
  if obj.look.rim is not None:
    img[mask & (r > 0.78)] = _rgb(obj.look.rim)


class ShapesSource:
  """``num_images`` scenes (with a margin for the ones without usable objects), spread evenly
  over the modality keys."""

  name = "shapes"

  def __init__(self, *, seed: int = 0, image_size: int = 112, num_images: int = 1000,
               max_labels: int = 5, style: str = "full"):
    if image_size < 16:
      raise ValueError(f"shapes image size {image_size} is too small (>= 16 px)")
    if num_images < 1:
      raise ValueError("the shapes source needs --num-images >= 1")
    if not 1 <= max_labels <= 8:
      raise ValueError(f"--max-labels {max_labels} must be in 1..8")
    check_style(style)
    self.seed, self.size, self.max_labels, self.style = seed, image_size, max_labels, style
    self.per_modality = math.ceil(num_images * 1.05 / len(MODALITIES)) + 1

  def refs(self, skips: Counter) -> Iterator[ImageRef]:
    for m, key in enumerate(MODALITIES):
      for k in range(self.per_modality):
        index = k * len(MODALITIES) + m
        case_id = f"scene{index:06d}"
        yield ImageRef(make_id(f"{key}_shapes", DATASET, case_id, None, None), key, DATASET,
                       case_id, None, {"scene": index})

  def scene(self, ref: ImageRef) -> Scene:
    return make_scene(self.seed, int(ref.payload["scene"]), self.max_labels, self.style)

  def load(self, ref: ImageRef) -> Loaded:
    scene = self.scene(ref)
    _, instances = render(scene, self.size)
    present = tuple(dict.fromkeys(label for label, _ in instances))
    return Loaded(self.size, self.size, instances, "", "", present + scene.absent, {})

  def image_bytes(self, ref: ImageRef) -> bytes:
    return png_bytes(render(self.scene(ref), self.size)[0])
