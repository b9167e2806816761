"""BiRD's response post-processing and the ROC recall rule, case by case (docs/evaluation.md)."""

from __future__ import annotations

import pytest

from bird_jax.vocabulary import MODALITIES, modality_of
from bird_jax.metrics.postprocess import postprocess_response
from bird_jax.metrics.roc import roc_correct, roc_recall


@pytest.mark.parametrize("raw, expected", [
  ("The left kidney.<|im_end|>\n<|endoftext|>", "The left kidney."),   # step 1
  ("a.<|im_end|> b.<|im_end|>", "a."),                                 # first occurrence
  ("liver<|im_end|>\nspleen", "liverspleen"),                           # step 2
  ("liver<|im_end|>", "liver<|im_end|>"),                               # no newline: kept
  ("head\nmiddle part\ntail", "middle part"),                           # step 3
  ("a\n\nb", ""),                                                       # between 1st two \n
  ("only one\nnewline", "only one\nnewline"),                           # no second newline
  ("kidney<|endoftext|><|endoftext|>", "kidney"),                       # step 4
  ("  spaced answer \t", "spaced answer"),                              # step 5
  ("<box>(1,2),(3,4)</box>.<|im_end|>\n", "<box>(1,2),(3,4)</box>."),
  ("", ""),
])
def test_postprocess_response(raw, expected):
  assert postprocess_response(raw) == expected


def test_postprocess_step_order_im_end_newline_before_line_extraction():
  # step 2 removes "<|im_end|>\n" first, so step 3 sees only one newline left.
  assert postprocess_response("x<|im_end|>\ny\nz") == "xy\nz"
  assert postprocess_response("x\ny<|im_end|>\nz\nw") == "yz"


@pytest.mark.parametrize("annotation, response, correct", [
  ("kidney", "The left kidneys are visible", True),     # substring, case-insensitive
  ("left kidney", "kidney on the left", True),          # any order
  ("kidney,", "kidney", False),                         # punctuation must appear
  ("", "anything", True),                               # empty annotation
  ("a  b", "b a", True),                                # empty token from double space
  ("<ref>liver</ref>", "liver", False),                 # tags not stripped
  ("Liver", "LIVER", True),
  ("liver mass", "liver", False),
])
def test_roc_correct(annotation, response, correct):
  assert roc_correct(annotation, response) is correct


def test_roc_recall_per_modality_and_both_averages():
  images = ["ct_1", "ct_2", "mr_1", "x_1", "pet_1", "odd_1"]
  ann = ["liver", "spleen", "brain", "lung", "heart", "liver"]
  resp = ["liver", "kidney", "brain stem", "", "heart", "liver"]
  r = roc_recall(images, ann, resp)
  assert r.recall["ct"] == 0.5 and r.recall["mr"] == 1.0 and r.recall["x"] == 0.0
  assert r.recall["pet"] == 1.0 and r.recall["fundus"] is None
  assert r.correct["ct"] == 1 and r.total["ct"] == 2
  assert r.mean_script == pytest.approx((0.5 + 1.0 + 0.0 + 1.0) / 8)
  assert r.mean_paper == pytest.approx((0.5 + 1.0 + 0.0) / 6)   # pet is not a paper modality
  assert r.mean_present == pytest.approx(2.5 / 4)
  assert r.micro == pytest.approx(3 / 5) and r.unknown == 1


def test_modality_of():
  assert [modality_of(f"{m}_0001.png") for m in MODALITIES] == list(MODALITIES)
  assert modality_of("images/ultrasound_12_3.png") == "ultrasound"
  assert modality_of("CT_1.png") is None and modality_of("ct.png") is None
