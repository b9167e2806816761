"""VG Recall@0.5: every BiRD rule of docs/evaluation.md on hand-computed cases, plus the corrected
variant (IoU >= 0.5, one-to-one matching, micro averages)."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from bird_jax.metrics.grounding import (
  iou_matrix, one_to_one_hits, pad_boxes, vg_recall, vg_recall_from_text)
from bird_jax.vocabulary import MODALITIES


def box(x1, y1, x2, y2):
  return f"<box>({x1},{y1}),({x2},{y2})</box>"


def test_iou_matrix_values():
  target = jnp.asarray([[[0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 10.0, 10.0]]])
  pred = jnp.asarray([[[0.0, 0.0, 1.0, 1.0], [5.0, 5.0, 15.0, 15.0]]])
  iou = np.asarray(iou_matrix(pred, target))
  assert iou.shape == (1, 2, 2)
  np.testing.assert_allclose(iou[0, 0], [0.5, 0.0])                # inter 1 / union 2
  np.testing.assert_allclose(iou[0, 1], [0.01, 25.0 / 175.0])      # 1/100 and 25/(100+100-25)


def test_iou_exactly_half_is_a_miss_for_bird_and_a_hit_when_corrected():
  r = vg_recall(["ct_1.png"], [[(0, 0, 2, 1)]], [[(0, 0, 1, 1)]])
  assert r.hits["ct"] == 0 and r.strict_hits["ct"] == 1
  r = vg_recall(["ct_1.png"], [[(0, 0, 2, 1)]], [[(0, 0, 1.1, 1)]])   # IoU 0.55
  assert r.hits["ct"] == 1


def test_inverted_boxes_and_zero_union_are_misses():
  inverted = vg_recall(["ct_1"], [[(0, 0, 10, 10)]], [[(10, 10, 0, 0)]])
  assert inverted.hits["ct"] == 0
  iou = float(iou_matrix(jnp.asarray([[10.0, 0.0, 0.0, 10.0]]),
                         jnp.asarray([[0.0, 0.0, 10.0, 10.0]]))[0, 0])
  assert math.isnan(iou)                                           # union 100 - 100 - 0 = 0
  zero_union = vg_recall(["ct_1"], [[(0, 0, 10, 10)]], [[(10, 0, 0, 10)]])
  assert zero_union.hits["ct"] == 0 and zero_union.strict_hits["ct"] == 0


def test_boxes_with_spaces_no_box_fallback_and_unparseable():
  images = ["mr_a.png"] * 4
  ann = [box(0, 0, 10, 10)] * 4
  resp = ["<box>(0, 0),(10, 10)</box>",       # spaces inside the box still parse
          "no box at all",                     # nothing predicted -> miss
          "it is at (0,0),(10,10)",            # bare coordinates: BiRD's fallback
          "<box>(a,b),(c,d)</box>"]            # unparseable -> IoU 0
  r = vg_recall_from_text(images, ann, resp)
  np.testing.assert_array_equal(r.sample_hits, [1, 0, 1, 0])
  assert r.targets["mr"] == 4 and r.hits["mr"] == 2
  assert r.recall["mr"] == pytest.approx(2 / (4 + 1e-8), rel=0, abs=1e-15)


def test_fallback_only_applies_to_responses():
  r = vg_recall_from_text(["x_1.png"], ["(0,0),(10,10)"], ["<box>(0,0),(10,10)</box>"])
  assert r.skipped["x"] == 1 and r.samples["x"] == 0 and r.targets["x"] == 0


def test_several_targets_one_prediction_may_match_all():
  ann = box(0, 0, 10, 10) + " and " + box(0, 0, 10, 10) + box(50, 50, 60, 60)
  resp = box(0, 0, 10, 10)
  r = vg_recall_from_text(["endoscopy_1.jpg"], [ann], [resp])
  assert r.targets["endoscopy"] == 3
  assert r.hits["endoscopy"] == 2            # BiRD: one prediction satisfies both equal targets
  assert r.strict_hits["endoscopy"] == 1     # corrected: one-to-one
  assert r.strict_recall["endoscopy"] == pytest.approx(1 / 3)


def test_first_hit_is_order_independent_for_counting():
  a = vg_recall(["ct_1"], [[(0, 0, 10, 10)]], [[(50, 50, 60, 60), (0, 0, 10, 10)]])
  b = vg_recall(["ct_1"], [[(0, 0, 10, 10)]], [[(0, 0, 10, 10), (50, 50, 60, 60)]])
  assert a.hits["ct"] == b.hits["ct"] == 1


def test_samples_without_reference_boxes_are_skipped_and_empty_modalities_count_zero():
  images = ["ct_1.png", "ct_2.png", "fundus_3.png", "weird_4.png"]
  ann = [box(0, 0, 10, 10), "no boxes here", box(0, 0, 10, 10), box(0, 0, 10, 10)]
  resp = [box(0, 0, 10, 10), box(0, 0, 10, 10), box(20, 20, 30, 30), box(0, 0, 10, 10)]
  r = vg_recall_from_text(images, ann, resp)
  assert r.samples["ct"] == 1 and r.skipped["ct"] == 1
  assert r.recall["ct"] == pytest.approx(1 / (1 + 1e-8), abs=1e-15)
  assert r.recall["fundus"] == 0.0 and r.recall["pet"] == 0.0
  assert r.unknown == 1
  assert r.mean == pytest.approx(r.recall["ct"] / 8, abs=1e-15)   # 8 modalities, empty = 0
  assert r.strict_recall["pet"] is None
  assert r.strict_mean_present == pytest.approx(0.5)               # ct 1.0, fundus 0.0
  assert r.strict_micro == pytest.approx(0.5)


def test_modality_key_is_the_file_name_prefix():
  r = vg_recall([f"{m}_0001.png" for m in MODALITIES] + ["data/ct_2.png"],
                [[(0, 0, 1, 1)]] * 9, [[(0, 0, 1, 1)]] * 9)
  assert all(r.samples[m] == 1 for m in MODALITIES if m != "ct") and r.samples["ct"] == 2
  assert r.mean == pytest.approx(1 / (1 + 1e-8) * 7 / 8 + 2 / (2 + 1e-8) / 8, abs=1e-12)


def test_one_to_one_prefers_highest_iou_pairs():
  # target 0 overlaps both predictions; target 1 only prediction 1.
  target = pad_boxes([[(0, 0, 10, 10), (2, 0, 12, 10)]])
  pred = pad_boxes([[(0, 0, 10, 10), (1, 0, 11, 10)]])
  iou = iou_matrix(jnp.asarray(pred.boxes), jnp.asarray(target.boxes))
  hits = one_to_one_hits(iou, jnp.asarray(target.present), jnp.asarray(pred.present))
  np.testing.assert_array_equal(np.asarray(hits), [[True, True]])


def test_length_mismatch_is_a_clear_error():
  with pytest.raises(ValueError, match="same length"):
    vg_recall(["ct_1"], [[]], [])


def test_grounding_probe_on_known_boxes():
  from bird_jax.metrics.grounding import MISSING_CENTRE_ERROR, grounding_probe

  targets = [(100, 100, 300, 300), (500, 500, 700, 700), (0, 0, 100, 100), (800, 0, 900, 100)]
  preds = [(100, 100, 300, 300),  # exact: hit, centre error 0
           (540, 500, 740, 700),  # shifted 40: IoU 160/240 = 0.667, hit, error 40
           (0, 0, 100, 50),  # half the box: IoU exactly 0.5 is a miss (BiRD's > 0.5), error 25
           None]  # no box read: a miss at the grid's diagonal
  s = grounding_probe(targets, preds)
  assert (s.recall, s.unreadable, s.questions) == (0.5, 1, 4)
  assert s.median_centre_error == pytest.approx((25 + 40) / 2)
  assert MISSING_CENTRE_ERROR == pytest.approx(1414.2136, abs=1e-4)
  far = grounding_probe([(0, 0, 10, 10)], [(990, 990, 1000, 1000)])
  assert far.recall == 0 and far.median_centre_error == pytest.approx(990 * 2 ** 0.5)
  with pytest.raises(ValueError, match="2 targets and 1 predictions"):
    grounding_probe(targets[:2], preds[:1])
