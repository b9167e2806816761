"""Real brain MRI with anatomical region labels: Debian's ``mricron-data`` (ch2 + AAL).

``ch2.nii.gz`` (the Colin27 single-subject T1 brain, 1 mm MNI grid) is sliced along the
chosen planes; the matching label volume (AAL: 116 regions with names from ``aal.nii.txt``,
or Brodmann areas) gives one instance mask per region present in a slice. Slices are shown
in radiological convention (patient's right on the image left; anterior or superior up).

    apt-get install mricron-data     # puts the files in /usr/share/mricron/templates

ch2 is one subject: cases are slabs of ``slab`` neighbouring slices of one plane, so the
case-level split separates slabs (orthogonal planes still share voxels), not subjects.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bird_jax.data.image import png_bytes
from datagen.sources.base import ImageRef, Loaded, SourceError, make_id
from datagen.sources.nifti import read_nifti

INSTALL = "apt-get install mricron-data"
DATASET = {"aal": "MricronCh2AAL", "brodmann": "MricronCh2Brodmann"}
PLANE_AXIS = {"sagittal": "x", "coronal": "y", "axial": "z"}
MIN_LABELLED = 0.02  # slices with less labelled area than this are not enumerated

AAL_NAMES = {
    "Precentral": "precentral gyrus", "Frontal_Sup": "superior frontal gyrus",
    "Frontal_Sup_Orb": "superior frontal gyrus, orbital part",
    "Frontal_Mid": "middle frontal gyrus", "Frontal_Mid_Orb": "middle frontal gyrus, orbital part",
    "Frontal_Inf_Oper": "inferior frontal gyrus, opercular part",
    "Frontal_Inf_Tri": "inferior frontal gyrus, triangular part",
    "Frontal_Inf_Orb": "inferior frontal gyrus, orbital part",
    "Rolandic_Oper": "rolandic operculum", "Supp_Motor_Area": "supplementary motor area",
    "Olfactory": "olfactory cortex", "Frontal_Sup_Medial": "medial superior frontal gyrus",
    "Frontal_Med_Orb": "medial orbitofrontal cortex", "Rectus": "gyrus rectus",
    "Insula": "insula", "Cingulum_Ant": "anterior cingulate gyrus",
    "Cingulum_Mid": "middle cingulate gyrus", "Cingulum_Post": "posterior cingulate gyrus",
    "Hippocampus": "hippocampus", "ParaHippocampal": "parahippocampal gyrus",
    "Amygdala": "amygdala", "Calcarine": "calcarine cortex", "Cuneus": "cuneus",
    "Lingual": "lingual gyrus", "Occipital_Sup": "superior occipital gyrus",
    "Occipital_Mid": "middle occipital gyrus", "Occipital_Inf": "inferior occipital gyrus",
    "Fusiform": "fusiform gyrus", "Postcentral": "postcentral gyrus",
    "Parietal_Sup": "superior parietal lobule", "Parietal_Inf": "inferior parietal lobule",
    "SupraMarginal": "supramarginal gyrus", "Angular": "angular gyrus", "Precuneus": "precuneus",
    "Paracentral_Lobule": "paracentral lobule", "Caudate": "caudate nucleus",
    "Putamen": "putamen", "Pallidum": "pallidum", "Thalamus": "thalamus",
    "Heschl": "Heschl's gyrus", "Temporal_Sup": "superior temporal gyrus",
    "Temporal_Pole_Sup": "superior temporal pole", "Temporal_Mid": "middle temporal gyrus",
    "Temporal_Pole_Mid": "middle temporal pole", "Temporal_Inf": "inferior temporal gyrus",
    "Cerebelum_Crus1": "cerebellar crus I", "Cerebelum_Crus2": "cerebellar crus II",
    "Cerebelum_3": "cerebellar lobule III", "Cerebelum_4_5": "cerebellar lobules IV-V",
    "Cerebelum_6": "cerebellar lobule VI", "Cerebelum_7b": "cerebellar lobule VIIb",
    "Cerebelum_8": "cerebellar lobule VIII", "Cerebelum_9": "cerebellar lobule IX",
    "Cerebelum_10": "cerebellar lobule X", "Vermis_1_2": "cerebellar vermis I-II",
    "Vermis_3": "cerebellar vermis III", "Vermis_4_5": "cerebellar vermis IV-V",
    "Vermis_6": "cerebellar vermis VI", "Vermis_7": "cerebellar vermis VII",
    "Vermis_8": "cerebellar vermis VIII", "Vermis_9": "cerebellar vermis IX",
    "Vermis_10": "cerebellar vermis X",
}


def aal_label(code: str) -> str:
  """``Frontal_Sup_Orb_L`` -> ``left superior frontal gyrus, orbital part``."""
  side = {"L": "left ", "R": "right "}.get(code.rsplit("_", 1)[-1], "")
  base = code.rsplit("_", 1)[0] if side else code
  return side + AAL_NAMES.get(base, base.replace("_", " ").lower())


def slice_image(vol: np.ndarray, plane: str, index: int) -> np.ndarray:
  """A 2-D slice of a RAS volume in radiological display orientation ([rows, cols])."""
  if plane == "axial":
    return vol[::-1, ::-1, index].T
  if plane == "coronal":
    return vol[::-1, index, ::-1].T
  if plane == "sagittal":
    return vol[index, ::-1, ::-1].T
  raise ValueError(f"unknown plane {plane!r}; one of {sorted(PLANE_AXIS)}")


class AtlasSource:
  name = "atlas"

  def __init__(self, folder: str, *, labels: str = "aal",
               planes: tuple[str, ...] = ("axial", "coronal", "sagittal"), slab: int = 16):
    self.folder = Path(folder)
    if labels not in DATASET:
      raise ValueError(f"atlas labels {labels!r} is not one of {sorted(DATASET)}")
    bad = [p for p in planes if p not in PLANE_AXIS]
    if bad or not planes:
      raise ValueError(f"atlas planes {list(planes)}: each must be one of {sorted(PLANE_AXIS)}")
    self.labels, self.planes, self.slab = labels, tuple(planes), slab
    self.t1_path = self.folder / "ch2.nii.gz"
    self.label_path = self.folder / f"{labels}.nii.gz"
    missing = [p.name for p in (self.t1_path, self.label_path) if not p.is_file()]
    if missing:
      raise SourceError(f"the atlas source needs {', '.join(missing)} in {self.folder}, from "
                        f"Debian's mricron-data package: install it with `{INSTALL}` (or "
                        "point --atlas-dir at a folder holding these files)")
    self.input_files = (self.t1_path, self.label_path)  # hashed into the run's manifest
    self.names = self._names()
    self._volumes: tuple[np.ndarray, np.ndarray] | None = None
    self._vocab: tuple[str, ...] | None = None

  def __getstate__(self):
    return {**self.__dict__, "_volumes": None}

  def _names(self) -> dict[int, str]:
    if self.labels == "brodmann":
      return {}
    txt = self.folder / "aal.nii.txt"
    if not txt.is_file():
      raise SourceError(f"{txt} is missing (it names the AAL regions; `{INSTALL}`)")
    names = {}
    for line in txt.read_text().splitlines():
      parts = line.split()
      if len(parts) >= 2 and parts[0].isdigit():
        names[int(parts[0])] = aal_label(parts[1])
    return names

  def volumes(self) -> tuple[np.ndarray, np.ndarray]:
    """(T1 as uint8 with a 99.5-percentile stretch, integer labels), both RAS."""
    if self._volumes is None:
      t1, _ = read_nifti(self.t1_path)
      lab, _ = read_nifti(self.label_path)
      if t1.shape != lab.shape:
        raise SourceError(f"{self.t1_path} {t1.shape} and {self.label_path} {lab.shape} are "
                          "not on the same grid")
      t1 = t1.astype(np.float32)
      top = float(np.percentile(t1[t1 > 0], 99.5)) if (t1 > 0).any() else 1.0
      t1 = (np.clip(t1 / top, 0, 1) * 255 + 0.5).astype(np.uint8)
      self._volumes = (t1, lab.astype(np.int32))
    return self._volumes

  def label_name(self, value: int) -> str:
    if self.labels == "brodmann":
      return f"Brodmann area {value}"
    return self.names.get(value, f"region {value}")

  def refs(self, skips: Counter) -> Iterator[ImageRef]:
    _, lab = self.volumes()
    for plane in self.planes:
      axis = "xyz".index(PLANE_AXIS[plane])
      other = tuple(a for a in range(3) if a != axis)
      area = (lab > 0).mean(axis=other)
      for i in range(lab.shape[axis]):
        if area[i] < MIN_LABELLED:
          skips["atlas_slice_without_labels"] += 1
          continue
        case = f"ch2-{plane}-slab{i // self.slab:02d}"
        yield ImageRef(make_id("mr_t1", DATASET[self.labels], case, PLANE_AXIS[plane], i),
                       "mr", DATASET[self.labels], case, i, {"plane": plane})

  def load(self, ref: ImageRef) -> Loaded:
    _, lab = self.volumes()
    sl = slice_image(lab, ref.payload["plane"], ref.slice)
    values = [int(v) for v in np.unique(sl) if v > 0]
    instances = [(self.label_name(v), sl == v) for v in values]
    return Loaded(sl.shape[1], sl.shape[0], instances, "head and neck", ref.payload["plane"],
                  self.vocabulary())

  def vocabulary(self) -> tuple[str, ...]:
    """Every region of the label volume (each is annotated wherever it is)."""
    if self._vocab is None:
      _, lab = self.volumes()
      self._vocab = tuple(self.label_name(int(v)) for v in np.unique(lab) if v > 0)
    return self._vocab

  def image_bytes(self, ref: ImageRef) -> bytes:
    t1, _ = self.volumes()
    return png_bytes(np.ascontiguousarray(slice_image(t1, ref.payload["plane"], ref.slice)))
