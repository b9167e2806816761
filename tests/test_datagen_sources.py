"""datagen sources: procedural phantoms (8 modalities, ids, cases, determinism, labels that
differ in pixels, spread boxes), the streaming JSON index, SA-Med2D on a tiny fake folder
with its quirks, and the mricron-data atlas (real when installed, else its message)."""

from __future__ import annotations

import io
import json
import math
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bird_jax.vocabulary import MODALITIES, modality_of
from datagen.config import DEFAULT_ATLAS_DIR, GenConfig
from datagen.jsonstream import JSONStreamError, iter_object
from datagen.meta import instance_boxes, objects_from_instances
from datagen.run import generate
from datagen.sources.atlas import AtlasSource, aal_label
from datagen.sources.base import SourceError
from datagen.sources.phantom import PhantomSource
from datagen.sources.samed2d import SAMed2DSource

# ---- phantoms ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def phantom():
  src = PhantomSource(seed=0, image_size=64, num_images=240, slice_stride=3)
  return src, list(src.refs(Counter()))


def test_phantom_ids_modalities_and_cases(phantom):
  src, refs = phantom
  assert {r.modality for r in refs} == set(MODALITIES)
  for r in refs:
    assert modality_of(r.id + ".png") == r.modality == r.id.split("_")[0]
    sub, dataset, case, tail = r.id.split("--")
    assert dataset == r.dataset and case == r.case_id
    assert tail == "2d_none" if r.slice is None else tail == f"z_{r.slice:04d}"
  assert "ct_00--PhantomAbdomenCT--case0001--z_0003" in {r.id for r in refs}
  per_case = Counter((r.modality, r.case_id) for r in refs)
  for m in ("ct", "mr", "pet"):  # multi-slice cases
    assert {n for (mm, _), n in per_case.items() if mm == m} == {24}
  for m in ("x", "endoscopy", "dermoscopy", "fundus", "ultrasound"):
    assert {n for (mm, _), n in per_case.items() if mm == m} == {1}


def test_phantom_is_deterministic_and_seeded(phantom):
  src, refs = phantom
  pick = refs[5::97]
  again = PhantomSource(seed=0, image_size=64, num_images=240, slice_stride=3)
  other = PhantomSource(seed=1, image_size=64, num_images=240, slice_stride=3)
  for r in pick:
    assert src.image_bytes(r) == again.image_bytes(r)
  assert sum(src.image_bytes(r) != other.image_bytes(r) for r in pick) == len(pick)
  a, b = src.load(pick[0]), again.load(pick[0])
  assert [(l, m.tobytes()) for l, m in a.instances] == [(l, m.tobytes()) for l, m in b.instances]


def test_phantom_labels_look_different_and_boxes_spread(phantom):
  """Per modality, every pair of labels differs in mean colour (over the pixels not covered
  by smaller structures), position or size; the boxes cover the whole image rather than its
  centre."""
  src, refs = phantom
  sig = defaultdict(list)  # (modality, label) -> [(r, g, b, cx, cy, area)]
  centres = []
  labels_per_image = []
  for r in refs[::3]:
    img = np.asarray(Image.open(io.BytesIO(src.image_bytes(r))).convert("RGB"), np.float32) / 255
    loaded = src.load(r)
    objs, _, _ = objects_from_instances(loaded.instances)
    labels_per_image.append(len({o.label for o in objs}))
    for label, m in loaded.instances:
      found, _ = instance_boxes(m)
      others = [mm for ll, mm in loaded.instances if ll != label and mm.sum() < m.sum()]
      own = m & ~np.any(others, axis=0) if others else m
      if not found or own.sum() < 10:
        continue
      (box, area), = found
      cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
      centres.append((cx, cy))
      sig[r.modality, label].append((*img[own].mean(0), cx, cy, math.sqrt(area)))
  for m in MODALITIES:
    labs = [l for mm, l in sig if mm == m]
    assert len(labs) >= 3, (m, labs)
    means = {l: np.mean(sig[m, l], axis=0) for l in labs}
    for i, a in enumerate(labs):
      for b in labs[i + 1:]:
        assert np.abs(means[a] - means[b]).max() > 0.05, (m, a, b, means[a], means[b])
  c = np.array(centres)
  grid, _, _ = np.histogram2d(c[:, 0], c[:, 1], bins=3, range=[[0, 1], [0, 1]])
  assert grid[1, 1] / len(c) < 0.4  # box centres in the central ninth of the image
  assert (grid / len(c)).min() > 0.015  # every ninth, corners included, gets boxes
  assert (np.percentile(c, 95, axis=0) - np.percentile(c, 5, axis=0)).min() > 0.5
  assert np.mean(labels_per_image) > 2.0  # several classes per image


# ---- streaming JSON index ------------------------------------------------------------------


def test_iter_object_streams_across_chunk_boundaries(tmp_path):
  data = {f"images/k{i}.png": [f"masks/k{i}--{j:04d}_000.png" for j in range(i % 4)]
          for i in range(50)}
  data["weird \"key\" ü"] = {"nested": [1, 2.5e3, None, True]}
  data["num"] = 12345678
  p = tmp_path / "index.json"
  p.write_text(json.dumps(data, indent=2, ensure_ascii=False))
  for chunk in (1, 7, 64, 1 << 20):
    assert dict(iter_object(p, chunk=chunk)) == data
  (tmp_path / "e.json").write_text(" {} ")
  assert list(iter_object(tmp_path / "e.json")) == []
  bad = {"list.json": "[1, 2]", "cut.json": '{"a": [1, 2', "sep.json": '{"a": 1 "b": 2}',
         "key.json": "{1: 2}"}
  for name, text in bad.items():
    (tmp_path / name).write_text(text)
    with pytest.raises(JSONStreamError, match=name):
      list(iter_object(tmp_path / name, chunk=3))


# ---- SA-Med2D --------------------------------------------------------------------------------


def write_png(path: Path, arr: np.ndarray):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(arr).save(path)


def square_mask(h, w, r0, r1, c0, c1, value=255):
  m = np.zeros((h, w), np.uint8)
  m[r0:r1, c0:c1] = value
  return m


@pytest.fixture(scope="module")
def samed2d_root(tmp_path_factory):
  """A tiny SAMed2Dv1 folder with the quirks of docs/datagen.md."""
  root = tmp_path_factory.mktemp("SAMed2Dv1")
  rng = np.random.default_rng(0)
  index: dict[str, list[str]] = {}

  def image(stem, h=64, w=64, rgb=False, arr=None):
    if arr is None:
      arr = rng.integers(0, 255, (h, w, 3) if rgb else (h, w), dtype=np.uint8)
    write_png(root / "images" / f"{stem}.png", arr)
    index[f"images/{stem}.png"] = []

  def mask(stem, cls, inst, arr):
    name = f"masks/{stem}--{cls:04d}_{inst:03d}.png"
    write_png(root / name, arr)
    index[f"images/{stem}.png"].append(name)

  for z in range(6):  # a CT volume: liver + two kidneys (instances 000/001) + a speck
    s = f"ct_00--AbdomenCT1K--Case_00011--z_{z:04d}"
    image(s)
    mask(s, 1, 0, square_mask(64, 64, 8 + z, 40, 4, 30))
    mask(s, 2, 0, square_mask(64, 64, 40, 56, 36, 44))
    mask(s, 2, 1, square_mask(64, 64, 40, 56, 50, 58))
    mask(s, 3, 0, square_mask(64, 64, 0, 2, 0, 2))  # 4 px < 0.153% of 4096: speck
  s = "mr_t2--BraTS--BraTS_001--x_0040"
  image(s)
  mask(s, 1, 0, square_mask(64, 64, 10, 30, 10, 30))
  mask(s, 9, 0, square_mask(64, 64, 10, 30, 10, 30))  # index not in the mapping
  mask(s, 4, 0, square_mask(64, 64, 10, 30, 10, 30))  # union_ class
  s = "fundus_photography--ichallenge_adam_task2--A0001--2d_none"  # inverted masks
  image(s, rgb=True)
  mask(s, 1, 0, 255 - square_mask(64, 64, 20, 30, 40, 52))
  s = "dermoscopy_00--isic2018_task1--ISIC_0014156--2d_none"
  image(s, rgb=True)
  mask(s, 1, 0, square_mask(32, 32, 5, 20, 5, 20))  # size differs from the image
  mask(s, 1, 1, square_mask(64, 64, 30, 60, 30, 60))
  image("mr_00--Brain_PTM--case1--z_0001", arr=square_mask(64, 64, 10, 50, 10, 50))
  mask("mr_00--Brain_PTM--case1--z_0001", 1, 0, square_mask(64, 64, 10, 50, 10, 50))
  image("ultrasound_00--thin--c1--2d_none", h=20, w=64)  # short side < half the long side
  mask("ultrasound_00--thin--c1--2d_none", 1, 0, square_mask(20, 64, 2, 18, 2, 30))
  index["images/histo_00--Other--c--2d_none.png"] = ["masks/x--0001_000.png"]
  index["images/not-a-stem.png"] = []
  mapping = {
      "AbdomenCT1K": {"liver": 1, "kidney": "2", "right_adrenal_gland": 3},
      "BraTS": {"edema": 1, "union_whole_tumor": 4},
      "ichallenge_adam_task2": {"fovea": 1},
      "isic2018_task1": {"skin lesion": 1},
      "Brain_PTM": {"tract": 1}, "thin": {"nodule": 1}, "Other": {"x": 1}}
  (root / "SAMed2D_v1.json").write_text(json.dumps(index))
  (root / "SAMed2D_v1_class_mapping_id.json").write_text(json.dumps(mapping))
  return root


def test_samed2d_reader_parses_names_and_handles_quirks(samed2d_root):
  src = SAMed2DSource(str(samed2d_root))
  skips = Counter()
  refs = {r.id: r for r in src.refs(skips)}
  assert skips == {"unknown_modality": 1, "bad_image_name": 1}
  ct = refs["ct_00--AbdomenCT1K--Case_00011--z_0003"]
  assert (ct.modality, ct.dataset, ct.case_id, ct.slice) == ("ct", "AbdomenCT1K", "Case_00011", 3)
  assert refs["fundus_photography--ichallenge_adam_task2--A0001--2d_none"].slice is None
  loaded = src.load(ct)
  assert [l for l, _ in loaded.instances] == ["liver", "kidney", "kidney", "right adrenal gland"]
  assert (loaded.region, loaded.orientation) == ("abdomen", "axial")
  objs, present, sk = objects_from_instances(loaded.instances)
  assert [(o.label, o.box) for o in objs] == [
      ("liver", (0.063, 0.172, 0.469, 0.625)), ("kidney", (0.563, 0.625, 0.688, 0.875)),
      ("kidney", (0.781, 0.625, 0.906, 0.875))]
  assert sk["speck"] == 1 and "right adrenal gland" in present  # a speck is not absent
  brats = src.load(refs["mr_t2--BraTS--BraTS_001--x_0040"])
  assert [l for l, _ in brats.instances] == ["edema"] and brats.orientation == "sagittal"
  assert brats.skips == {"unknown_class": 1, "union_class": 1}
  assert src.vocabulary("BraTS") == ("edema",)
  fundus = src.load(refs["fundus_photography--ichallenge_adam_task2--A0001--2d_none"])
  (box, _), = [(o.box, o.area) for o in objects_from_instances(fundus.instances)[0]]
  assert box == (0.625, 0.313, 0.813, 0.469) and fundus.region == "eye"  # inverted back
  derm = src.load(refs["dermoscopy_00--isic2018_task1--ISIC_0014156--2d_none"])
  assert derm.skips == {"mask_size_mismatch": 1} and len(derm.instances) == 1
  assert src.load(refs["mr_00--Brain_PTM--case1--z_0001"]).skip_image == "binary_image"
  assert src.load(refs["ultrasound_00--thin--c1--2d_none"]).skip_image == "aspect"
  assert src.image_bytes(ct) == (samed2d_root / "images" / f"{ct.id}.png").read_bytes()


def test_samed2d_run_and_format_errors(samed2d_root, tmp_path):
  cfg = GenConfig(out=str(tmp_path / "out"), source="samed2d", samed2d_root=str(samed2d_root),
                  num_images=0, slice_stride=1, dedup_iou=1.01, workers=1, progress=False,
                  test_fraction=0.0)
  s = generate(cfg)
  assert s["images"]["written"] == 6 + 1 + 1 + 1
  assert s["skips"]["meta"]["binary_image"] == 1 and s["skips"]["meta"]["aspect"] == 1
  assert s["skips"]["source"] == {"unknown_modality": 1, "bad_image_name": 1}
  assert not (tmp_path / "out" / "images").exists()  # samed2d images stay where they are
  entries = json.loads((tmp_path / "out" / "medgrit" / "train.json").read_text())
  assert {e["id"] for e in entries} >= {"mr_t2--BraTS--BraTS_001--x_0040"}
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "SAMed2D_v1.json").write_text('{"images/a.png": "masks/a--0001_000.png"}')
  (bad / "SAMed2D_v1_class_mapping_id.json").write_text("{}")
  with pytest.raises(SourceError, match="expected a list of mask paths"):
    list(SAMed2DSource(str(bad)).refs(Counter()))
  (bad / "SAMed2D_v1_class_mapping_id.json").write_text('{"D": {"liver": "one"}}')
  with pytest.raises(SourceError, match="'liver': index 'one' is not a number"):
    SAMed2DSource(str(bad))
  with pytest.raises(SourceError, match="does not exist"):
    SAMed2DSource(str(tmp_path / "nowhere"))


# ---- atlas -----------------------------------------------------------------------------------


def test_atlas_missing_package_says_how_to_install(tmp_path):
  with pytest.raises(SourceError, match=r"apt-get install mricron-data"):
    AtlasSource(str(tmp_path))
  assert aal_label("Frontal_Sup_Orb_L") == "left superior frontal gyrus, orbital part"
  assert aal_label("Vermis_4_5") == "cerebellar vermis IV-V"


def test_atlas_source_real_data_or_message():
  """With mricron-data installed: real slices and AAL names; without it, the message."""
  if not (Path(DEFAULT_ATLAS_DIR) / "ch2.nii.gz").is_file():
    with pytest.raises(SourceError, match="apt-get install mricron-data"):
      AtlasSource(DEFAULT_ATLAS_DIR)
    return
  src = AtlasSource(DEFAULT_ATLAS_DIR, planes=("axial", "coronal"))
  skips = Counter()
  refs = list(src.refs(skips))
  assert 250 < len(refs) < 398 and skips["atlas_slice_without_labels"] > 0
  assert {r.id.split("--")[-1][0] for r in refs} == {"z", "y"}
  r = next(r for r in refs if r.payload["plane"] == "coronal" and r.slice == 126)
  loaded = src.load(r)
  assert (loaded.width, loaded.height) == (181, 181) and len(src.vocabulary()) == 116
  objs, _, _ = objects_from_instances(loaded.instances)
  by = {o.label: o.box for o in objs}
  # radiological display: the patient's left is on the image right
  assert by["left precentral gyrus"][0] > 0.5 > by["right precentral gyrus"][2]
  assert by["left supplementary motor area"][1] < 0.3  # superior is up
  img = np.asarray(Image.open(io.BytesIO(src.image_bytes(r))))
  assert img.shape == (181, 181) and img.std() > 20
