"""What the procedural phantoms look like: one spec per modality (pure data).

Every label has its own look (grey value or colour, texture), shape, size and position
prior, so a small model can tell the labels apart from pixels alone. Positions are given in
*field* coordinates ([0, 1] inside the case's field of view: the body, the head, the fundus
disc, ...); the field itself is scaled and shifted per case, which spreads the boxes over
the whole image. 3-D modalities (ct, mr, pet) are volumes: every structure also has a centre
``z`` and a half extent ``zr`` along the case's slices, so structures grow, shrink and vanish
from slice to slice.
"""

from __future__ import annotations

import dataclasses

Range = tuple[float, float]
Region = tuple[float, float, float, float]  # x0, x1, y0, y1 ranges of a centre (field coords)


@dataclasses.dataclass(frozen=True)
class Look:
  value: float | tuple[float, float, float]  # grey level or RGB in [0, 1]
  texture: str = "smooth"  # smooth | grain | mottled | stripes
  contrast: float = 0.0  # texture amplitude
  rim: float | tuple[float, float, float] | None = None  # colour of a rim band, if any
  rim_width: float = 0.25  # rim band, as a fraction of the radius


@dataclasses.dataclass(frozen=True)
class LabelSpec:
  name: str
  look: Look
  note: str  # how it looks (used in region descriptions)
  size: Range  # semi-axis, as a fraction of the field width (or of the parent's radius)
  centers: tuple[Region, ...] = ((0.2, 0.8, 0.2, 0.8),)  # instance i uses centers[i % n]
  aspect: Range = (0.8, 1.2)  # ry / rx
  shape: str = "blob"  # blob | ring | rect
  irregular: float = 0.06  # boundary harmonics amplitude
  rotate: bool = True
  count: tuple[int, int] = (1, 1)
  p: float = 1.0  # probability that a case has this structure
  parent: tuple[str, ...] = ()  # placed inside (or around) an instance of one of these
  layer: int = 0  # paint order
  z: Range = (0.5, 0.5)  # centre along the volume (3-D only)
  zr: Range = (2.0, 2.0)  # half extent along the volume (3-D only)
  overlap_ok: bool = False  # may overlap structures other than its parent


@dataclasses.dataclass(frozen=True)
class ModalitySpec:
  key: str  # one of the 8 modality keys
  sub: str  # SA-Med2D modality prefix of the id
  dataset: str
  region: str
  orientation: str
  volume: bool  # multi-slice cases
  rgb: bool
  background: str  # painter in phantom.py
  field_scale: Range  # field width as a fraction of the image (> 1: a zoomed, cropped view)
  field_aspect: float  # field height / width
  labels: tuple[LabelSpec, ...]
  noise: float = 0.03  # final grain noise
  colormap: str = ""  # "hot": painted in grey, shown through a hot colour map
  z_span: Range = (0.0, 1.0)  # part of the volume the slices of a case cover


CT = ModalitySpec(
    key="ct", sub="ct_00", dataset="PhantomAbdomenCT", region="abdomen", orientation="axial",
    volume=True, rgb=False, background="ct_body", field_scale=(0.65, 1.3), field_aspect=0.78,
    labels=(
        LabelSpec("liver", Look(0.60, "mottled", 0.05),
                  "a large, moderately bright organ with a mottled texture",
                  (0.16, 0.2), ((0.25, 0.32, 0.26, 0.34),), aspect=(0.8, 1.0), irregular=0.10,
                  z=(0.5, 0.65), zr=(0.4, 0.55)),
        LabelSpec("spleen", Look(0.50, "grain", 0.05),
                  "an elongated organ of intermediate density with a grainy texture",
                  (0.08, 0.11), ((0.74, 0.82, 0.28, 0.42),), aspect=(1.4, 1.8),
                  z=(0.45, 0.6), zr=(0.25, 0.35), p=0.9),
        LabelSpec("kidney", Look(0.78, rim=0.95, rim_width=0.2),
                  "a bright oval organ with a brighter cortical rim",
                  (0.065, 0.08), ((0.28, 0.36, 0.62, 0.70), (0.64, 0.72, 0.62, 0.70)),
                  aspect=(1.4, 1.7), count=(2, 2), z=(0.25, 0.4), zr=(0.2, 0.3), p=0.95),
        LabelSpec("aorta", Look(0.88), "a small, very bright round vessel",
                  (0.03, 0.035), ((0.46, 0.54, 0.62, 0.68),), aspect=(0.95, 1.05),
                  irregular=0.0, layer=1),
        LabelSpec("vertebra", Look(0.97, "grain", 0.04, rim=1.0),
                  "a very bright, squarish bony structure",
                  (0.065, 0.075), ((0.46, 0.54, 0.80, 0.86),), aspect=(0.8, 0.9), shape="rect",
                  rotate=False),
        LabelSpec("liver tumor", Look(0.30), "a dark, well-defined round lesion",
                  (0.18, 0.3), count=(1, 2), p=0.5, parent=("liver",), layer=2),
    ))

MR = ModalitySpec(
    key="mr", sub="mr_t1c", dataset="PhantomBrainMR", region="head and neck",
    orientation="axial", volume=True, rgb=False, background="mr_head", field_scale=(0.55, 1.05),
    field_aspect=1.18, z_span=(0.2, 0.8),
    labels=(
        LabelSpec("lateral ventricle", Look(0.10), "a dark, elongated fluid-filled space",
                  (0.035, 0.045), ((0.40, 0.45, 0.38, 0.52), (0.55, 0.60, 0.38, 0.52)),
                  aspect=(2.2, 2.8), count=(2, 2), rotate=False, z=(0.5, 0.6), zr=(0.2, 0.3)),
        LabelSpec("enhancing tumor", Look(0.92, "grain", 0.04),
                  "a bright, ring-shaped enhancing lesion",
                  (0.08, 0.12), ((0.18, 0.34, 0.22, 0.78), (0.66, 0.82, 0.22, 0.78)),
                  shape="ring", irregular=0.1, z=(0.3, 0.7), zr=(0.18, 0.3), p=0.85, layer=2),
        LabelSpec("edema", Look(0.66, "mottled", 0.06),
                  "a moderately bright, ill-defined area with a mottled texture",
                  (1.6, 2.0), parent=("enhancing tumor",), irregular=0.15, layer=1,
                  overlap_ok=True),
        LabelSpec("necrotic core", Look(0.22), "a dark, homogeneous centre",
                  (0.45, 0.6), parent=("enhancing tumor",), layer=3),
    ))

XRAY = ModalitySpec(
    key="x", sub="x_ray", dataset="PhantomChestXray", region="chest", orientation="frontal",
    volume=False, rgb=False, background="xray_chest", field_scale=(0.7, 1.3), field_aspect=1.0,
    noise=0.02,
    labels=(
        LabelSpec("right lung", Look(0.22, "stripes", 0.06),
                  "a large dark field crossed by faint rib stripes",
                  (0.15, 0.18), ((0.28, 0.33, 0.42, 0.50),), aspect=(1.6, 1.9), irregular=0.05,
                  rotate=False),
        LabelSpec("left lung", Look(0.22, "stripes", 0.06),
                  "a large dark field crossed by faint rib stripes",
                  (0.13, 0.16), ((0.67, 0.72, 0.42, 0.50),), aspect=(1.7, 2.0), irregular=0.05,
                  rotate=False),
        LabelSpec("heart", Look(0.80), "a bright, rounded silhouette",
                  (0.12, 0.15), ((0.54, 0.60, 0.62, 0.68),), aspect=(0.8, 0.95), layer=1,
                  overlap_ok=True),
        LabelSpec("nodule", Look(0.72), "a small, bright round opacity",
                  (0.13, 0.2), count=(1, 2), p=0.5, parent=("right lung", "left lung"), layer=2),
    ))

PET = ModalitySpec(
    key="pet", sub="pet_00", dataset="PhantomWholeBodyPET", region="whole body",
    orientation="axial", volume=True, rgb=False, background="pet_body", field_scale=(0.65, 1.3),
    field_aspect=0.72, noise=0.025, colormap="hot", z_span=(0.05, 0.95),
    labels=(
        LabelSpec("liver", Look(0.36, "mottled", 0.04), "a large organ with mild, mottled uptake",
                  (0.2, 0.25), ((0.24, 0.34, 0.3, 0.45),), irregular=0.1, z=(0.55, 0.65),
                  zr=(0.3, 0.4)),
        LabelSpec("heart", Look(0.72), "a ring of intense myocardial uptake",
                  (0.1, 0.12), ((0.55, 0.62, 0.32, 0.45),), shape="ring", z=(0.8, 0.85),
                  zr=(0.12, 0.18), p=0.9),
        LabelSpec("bladder", Look(0.95), "a round area of very intense uptake",
                  (0.1, 0.13), ((0.45, 0.55, 0.55, 0.70),), aspect=(0.8, 1.0), z=(0.1, 0.18),
                  zr=(0.1, 0.15), p=0.9),
        LabelSpec("lesion", Look(1.0), "a small, intensely hot focus",
                  (0.035, 0.055), ((0.15, 0.85, 0.2, 0.8),), count=(1, 4), z=(0.1, 0.9),
                  zr=(0.1, 0.2), irregular=0.0, layer=2),
    ))

ENDOSCOPY = ModalitySpec(
    key="endoscopy", sub="endoscopy_00", dataset="PhantomColonoscopy", region="colon",
    orientation="", volume=False, rgb=True, background="endo_colon", field_scale=(1.0, 1.0),
    field_aspect=1.0,
    labels=(
        LabelSpec("polyp", Look((0.93, 0.62, 0.50), "mottled", 0.05, rim=(0.62, 0.22, 0.2),
                                rim_width=0.15),
                  "a raised pinkish mass with a darker red margin",
                  (0.08, 0.15), ((0.12, 0.88, 0.12, 0.88),), count=(1, 2), irregular=0.12),
        LabelSpec("surgical instrument", Look((0.72, 0.74, 0.78), "stripes", 0.05),
                  "a grey metallic elongated object",
                  (0.22, 0.3), ((0.12, 0.3, 0.15, 0.85), (0.7, 0.88, 0.15, 0.85)),
                  aspect=(0.16, 0.22), shape="rect", p=0.45, layer=2),
        LabelSpec("bleeding", Look((0.42, 0.02, 0.05), "mottled", 0.04),
                  "an irregular dark red area",
                  (0.05, 0.08), ((0.15, 0.85, 0.15, 0.85),), count=(1, 2), irregular=0.25,
                  p=0.35),
    ))

DERMOSCOPY = ModalitySpec(
    key="dermoscopy", sub="dermoscopy_00", dataset="PhantomDermoscopy", region="skin",
    orientation="", volume=False, rgb=True, background="derm_skin", field_scale=(0.9, 1.0),
    field_aspect=1.0,
    labels=(
        LabelSpec("melanoma", Look((0.24, 0.13, 0.09), "mottled", 0.16),
                  "a large, irregular, dark and variegated pigmented lesion",
                  (0.16, 0.24), ((0.22, 0.78, 0.22, 0.78),), irregular=0.22, p=0.45),
        LabelSpec("nevus", Look((0.62, 0.42, 0.30)), "a small, round, evenly light-brown lesion",
                  (0.07, 0.11), ((0.12, 0.88, 0.12, 0.88),), irregular=0.02, count=(1, 2), p=0.8),
        LabelSpec("seborrheic keratosis", Look((0.56, 0.50, 0.40), "stripes", 0.12),
                  "a tan, squarish lesion with a striped, cerebriform pattern",
                  (0.09, 0.13), ((0.14, 0.86, 0.14, 0.86),), shape="rect", aspect=(0.7, 1.0),
                  p=0.35),
    ))

FUNDUS = ModalitySpec(
    key="fundus", sub="fundus_photography", dataset="PhantomFundus", region="eye",
    orientation="", volume=False, rgb=True, background="fundus_eye", field_scale=(0.75, 1.05),
    field_aspect=1.0,
    labels=(
        LabelSpec("optic disc", Look((0.98, 0.84, 0.52)),
                  "a bright yellowish round area where the vessels converge",
                  (0.075, 0.09), ((0.22, 0.3, 0.42, 0.58), (0.7, 0.78, 0.42, 0.58)),
                  aspect=(1.0, 1.15), irregular=0.02, layer=1),
        LabelSpec("optic cup", Look((1.0, 0.98, 0.88)),
                  "a whitish central depression inside the optic disc",
                  (0.4, 0.6), parent=("optic disc",), irregular=0.0, layer=2),
        LabelSpec("macula", Look((0.42, 0.13, 0.05)),
                  "a dark round area in the centre of the retina",
                  (0.07, 0.085), ((0.46, 0.54, 0.46, 0.54),), irregular=0.0),
        LabelSpec("hemorrhage", Look((0.36, 0.02, 0.02)), "a small, irregular dark red spot",
                  (0.03, 0.045), ((0.2, 0.8, 0.2, 0.8),), count=(1, 3), irregular=0.25, p=0.5,
                  layer=1),
        LabelSpec("hard exudate", Look((0.97, 0.92, 0.30)), "a small, bright yellow deposit",
                  (0.028, 0.04), ((0.2, 0.8, 0.2, 0.8),), count=(1, 3), irregular=0.15, p=0.5,
                  layer=1),
    ))

ULTRASOUND = ModalitySpec(
    key="ultrasound", sub="ultrasound_00", dataset="PhantomThyroidUS", region="neck",
    orientation="transverse", volume=False, rgb=False, background="us_fan",
    field_scale=(0.75, 1.2), field_aspect=0.85, noise=0.0,
    labels=(
        LabelSpec("thyroid gland", Look(0.58), "a wide, bright and finely speckled oval structure",
                  (0.26, 0.32), ((0.42, 0.58, 0.36, 0.46),), aspect=(0.38, 0.48),
                  irregular=0.05),
        LabelSpec("thyroid nodule", Look(0.16, rim=0.85, rim_width=0.18),
                  "a dark, hypoechoic oval with a bright halo",
                  (0.22, 0.32), count=(1, 2), parent=("thyroid gland",), layer=1, p=0.85),
        LabelSpec("carotid artery", Look(0.02), "a round anechoic (black) vessel",
                  (0.055, 0.07), ((0.16, 0.24, 0.56, 0.66), (0.76, 0.84, 0.56, 0.66)),
                  count=(1, 2), irregular=0.0, p=0.9),
    ))

SPECS: dict[str, ModalitySpec] = {s.key: s for s in (CT, MR, XRAY, PET, ENDOSCOPY, DERMOSCOPY,
                                                     FUNDUS, ULTRASOUND)}
