"""datagen units: boxes from masks (hand-computed), speck and component rules, near-duplicate
slices, sampling quotas and stride, the case-level split, plurals and positions."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from bird_jax.boxes import format_box, round_to_grid
from bird_jax.vocabulary import MODALITIES
from datagen import language as lang
from datagen.meta import ImageMeta, MetaObject, instance_boxes, near_identical
from datagen.meta import objects_from_instances
from datagen.sampling import case_quotas, dedup, select, stride_keep, water_fill
from datagen.sources.base import ImageRef
from datagen.split import TEST, TRAIN, split_cases


def mask(h, w, *rects):
  m = np.zeros((h, w), bool)
  for r0, r1, c0, c1 in rects:  # inclusive pixel bounds
    m[r0:r1 + 1, c0:c1 + 1] = True
  return m


def test_boxes_from_masks_equal_hand_computed_boxes():
  # rows 10..29, cols 20..59 of a 100 x 200 (H x W) image
  (box, area), = instance_boxes(mask(100, 200, (10, 29, 20, 59)))[0]
  assert box == (0.1, 0.1, 0.3, 0.3)  # x1 = 20/200, y1 = 10/100, x2 = 60/200, y2 = 30/100
  assert area == pytest.approx(20 * 40 / 20000)
  # 3-decimal half-up rounding: cols 1..2 of 7 -> 1/7 = 0.142857, 3/7 = 0.428571
  (box, _), = instance_boxes(mask(8, 7, (0, 7, 1, 2)), min_area=0)[0]
  assert box == (0.143, 0.0, 0.429, 1.0)
  assert round_to_grid(0.0625) == 0.063 and round_to_grid(0.0005) == 0.001  # half up, not half even
  assert format_box(box) == "(143,0),(429,999)"
  # the whole image
  (box, area), = instance_boxes(np.ones((3, 5), bool))[0]
  assert box == (0.0, 0.0, 1.0, 1.0) and area == 1.0


def test_specks_empty_masks_and_the_component_rules():
  h = w = 100  # 10,000 px: min_area 0.00153 -> components under 15.3 px are specks
  big = (10, 19, 10, 19)  # 100 px
  other = (60, 69, 70, 79)  # 100 px
  speck = (90, 92, 90, 92)  # 9 px
  boxes, skips = instance_boxes(mask(h, w, big, other, speck))
  assert [b for b, _ in boxes] == [(0.1, 0.1, 0.8, 0.7)]  # union of the two big ones
  assert skips == Counter({"speck_component": 1})
  boxes, _ = instance_boxes(mask(h, w, big, other, speck), components="split")
  assert sorted(b for b, _ in boxes) == [(0.1, 0.1, 0.2, 0.2), (0.7, 0.6, 0.8, 0.7)]
  boxes, _ = instance_boxes(mask(h, w, (10, 29, 10, 19), other), components="largest")
  assert [b for b, _ in boxes] == [(0.1, 0.1, 0.2, 0.3)]
  # diagonal neighbours are one (8-connected) component
  diag = mask(h, w, (0, 7, 0, 7), (8, 15, 8, 15))
  assert len(instance_boxes(diag, components="split")[0]) == 1
  assert instance_boxes(mask(h, w, speck)) == ([], Counter({"speck": 1, "speck_component": 1}))
  assert instance_boxes(np.zeros((h, w), bool))[1] == Counter({"empty_mask": 1})
  objs, present, skips = objects_from_instances(
      [("liver", mask(h, w, big)), ("dot", mask(h, w, speck)), ("none", mask(h, w))])
  assert [o.label for o in objs] == ["liver"] and present == ["liver", "dot"]
  assert skips["speck"] == 1 and skips["empty_mask"] == 1
  with pytest.raises(ValueError, match="components rule"):
    instance_boxes(mask(h, w, big), components="hull")


def meta(i, objs, case="c1", sl=0):
  return ImageMeta(f"ct_00--D--{case}--z_{sl:04d}", "ct", "D", case, sl, 100, 100, "", "",
                   tuple(MetaObject(l, b, 0.01) for l, b in objs), (), (), {}, {})


def test_near_identical_slices_are_dropped_per_case():
  a = meta(0, [("liver", (0.1, 0.1, 0.5, 0.5)), ("kidney", (0.6, 0.6, 0.7, 0.7))], sl=0)
  b = meta(1, [("kidney", (0.6, 0.6, 0.7, 0.7)), ("liver", (0.1, 0.1, 0.51, 0.5))], sl=3)
  c = meta(2, [("liver", (0.1, 0.1, 0.5, 0.5))], sl=6)  # lost the kidney: different
  d = meta(3, [("liver", (0.1, 0.1, 0.5, 0.5))], case="c2", sl=9)  # other case
  assert near_identical(a, b, 0.9) and not near_identical(a, c, 0.9)
  kept, dropped = dedup([a, b, c, d], 0.9)
  assert [m.id for m in kept] == [a.id, c.id, d.id] and dropped == [b.id]
  assert dedup([a, b, c, d], 1.01)[1] == []  # disabled


def test_water_fill_and_hierarchical_quotas():
  assert water_fill({"a": 100, "b": 2, "c": 100}, 10) == {"a": 4, "b": 2, "c": 4}
  assert water_fill({"a": 1, "b": 1}, 10) == {"a": 1, "b": 1}
  assert sum(water_fill({k: 50 for k in "abc"}, 100).values()) == 100
  counts = {("ct", "D1", "c1"): 30, ("ct", "D1", "c2"): 30, ("ct", "D2", "c3"): 5,
            ("x", "D3", "x1"): 1, ("x", "D3", "x2"): 1}
  q = case_quotas(counts, 20, seed=0)
  assert q[("x", "D3", "x1")] == q[("x", "D3", "x2")] == 1  # x has only 2: ct gets the rest
  assert q[("ct", "D2", "c3")] == 5  # a small dataset is taken whole
  assert q[("ct", "D1", "c1")] + q[("ct", "D1", "c2")] == 13
  assert abs(q[("ct", "D1", "c1")] - q[("ct", "D1", "c2")]) <= 1


def refs():
  out = []
  for m in ("ct", "x"):
    for c in range(4):
      for s in (range(12) if m == "ct" else [None]):
        out.append(ImageRef(f"{m}_00--D{m}--case{c}--" + ("2d_none" if s is None else
                                                          f"z_{s:04d}"), m, f"D{m}", f"case{c}", s))
  return out


def test_select_is_streaming_deterministic_diverse_and_strided():
  chosen, counts = select(refs, 8, stride=3, seed=1)
  assert counts == {"candidates": 52, "after_stride": 20, "selected": 8}
  assert chosen == select(refs, 8, stride=3, seed=1)[0]
  assert Counter(r.modality for r in chosen) == {"ct": 4, "x": 4}
  assert Counter(r.case_id for r in chosen if r.modality == "ct") == {f"case{c}": 1
                                                                      for c in range(4)}
  assert all(stride_keep(r, 3) for r in chosen)
  for c in range(4):  # kept slices of a case are `stride` apart
    sl = sorted(r.slice for r in refs() if r.case_id == f"case{c}" and r.modality == "ct"
                and stride_keep(r, 3))
    assert len(sl) == 4 and all(b - a == 3 for a, b in zip(sl, sl[1:]))
  assert select(refs, 8, stride=3, seed=2)[0] != chosen  # the seed picks the slices
  assert len(select(refs, 0, stride=1, seed=0)[0]) == 52  # 0 = everything


def test_split_is_case_level_stratified_and_deterministic():
  rng = np.random.default_rng(0)
  items = []
  for m in MODALITIES:
    for c in range(40):
      items += [(f"{m}-case{c}", m)] * int(rng.integers(1, 9))
  items += [("pet-and-ct", "pet")] * 3 + [("pet-and-ct", "ct")] * 2  # one case, two modalities
  items += [("lonely", "fundus-only")] * 4
  sides = split_cases(items, 0.12, seed=0)
  assert sides == split_cases(items, 0.12, seed=0)
  assert set(sides) == {c for c, _ in items} and set(sides.values()) == {TRAIN, TEST}
  for m in MODALITIES:
    n = sum(1 for c, mm in items if mm == m)
    t = sum(1 for c, mm in items if mm == m and sides[c] == TEST)
    assert abs(t / n - 0.12) < 0.03, (m, t, n)
  assert sides["lonely"] == TRAIN  # a modality with one case stays in train
  assert split_cases(items, 0.12, seed=1) != sides
  assert set(split_cases(items, 0.0, seed=0).values()) == {TRAIN}
  with pytest.raises(ValueError):
    split_cases(items, 1.0, seed=0)


def test_language_helpers():
  assert [lang.plural(x) for x in ("kidney", "nevus", "carotid artery", "lesion", "metastasis",
                                   "left gyrus, orbital part")] == [
      "kidneys", "nevi", "carotid arteries", "lesions", "metastases",
      "instances of left gyrus, orbital part"]
  assert [lang.article(x) for x in ("MRI", "X-ray", "CT", "ultrasound", "edema", "unit")] == [
      "an", "an", "a", "an", "an", "a"]
  assert lang.position((0.0, 0.0, 0.2, 0.2)) == "upper left part"
  assert lang.position((0.4, 0.4, 0.6, 0.6)) == "centre"
  assert lang.position((0.4, 0.8, 0.6, 0.9)) == "lower central part"
  assert lang.position((0.8, 0.4, 0.9, 0.6)) == "right part"
  assert lang.count_phrase("kidney", 2) == "two kidneys"
