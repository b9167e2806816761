"""BLEU / ROUGE-L / CIDEr from the JAX kernels against pycocoevalcap's own scorers (its Python
code, no Java), the shapes they compile for, and bad input: empty and punctuation-only
captions, a caption longer than any bucket, text that is not Unicode, undecodable bytes in a
predictions file."""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from bird_jax.evaluation.predictions import PredictionFileError, read_predictions
from bird_jax.evaluation.scoring import score_task
from bird_jax.exit_codes import BadInput
from bird_jax.metrics import ngrams, text_kernels
from bird_jax.metrics.ptb_tokenize import tokenize_captions
from bird_jax.metrics.text import caption_scores_by_modality, text_scores
from bird_jax_testing.captions import corpus

# Tokenized captions that exercise the word rules: empty, repeated n-grams (clipping), a PTB
# token holding a no-break space (split() cuts it, split(" ") does not), double and edge
# spaces and a tab (raw strings, for the split rules alone).
EDGE_REFS = ["", "the liver the liver the liver", "a 5\xa01/2 cm lesion", "", "a  b c ",
             "x\ty z", "one"]
EDGE_HYPS = ["", "the liver the liver", "a 5\xa01/2 cm mass", "some words", " a b c",
             "x y z", ""]


def pycocoevalcap_scores(refs, hyps):
  gts = {i: [r] for i, r in enumerate(refs)}
  res = {i: [h] for i, h in enumerate(hyps)}
  b, b_per = Bleu(4).compute_score(gts, res, verbose=0)
  r, r_per = Rouge().compute_score(gts, res)
  c, c_per = Cider().compute_score(gts, res)
  return b, np.asarray(b_per).T, r, r_per, c, c_per


def assert_close(ours, theirs):
  np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-300)


def test_equal_to_pycocoevalcap_scorers():
  _, refs, hyps = corpus(120, seed=11)
  refs = tokenize_captions(refs) + EDGE_REFS
  hyps = tokenize_captions(hyps) + EDGE_HYPS
  ours = text_scores(refs, hyps)
  b, b_per, r, r_per, c, c_per = pycocoevalcap_scores(refs, hyps)
  assert_close(ours.bleu, b)
  assert_close(ours.bleu_per_sample, b_per)
  assert_close(ours.rouge_l, r)
  assert_close(ours.rouge_l_per_sample, r_per)
  assert_close(ours.cider, c)
  assert_close(ours.cider_per_sample, c_per)


def test_a_large_set_uses_one_shape_per_length_bucket():
  _, refs, hyps = corpus(3000, seed=2)
  enc = ngrams.encode(tokenize_captions(refs), tokenize_captions(hyps))
  shapes = {c.grams_h.shape for c in enc.chunks}
  assert len(shapes) <= 3 and len(enc.chunks) > len(shapes)
  assert all(c.grams_h.shape[0] * c.grams_h.shape[2] ** 2 == ngrams.CELLS for c in enc.chunks)


def test_kernels_have_no_host_callbacks():
  with jax.enable_x64(True):
    enc = ngrams.encode(["a b c"], ["a b d"])
    ch = enc.chunks[0]
    df = np.zeros(1 << 10, np.int32)
    jaxprs = [jax.make_jaxpr(text_kernels.document_frequency)(df, ch.grams_r),
              jax.make_jaxpr(text_kernels.chunk_scores)(
                ch.grams_h, ch.grams_r, ch.tokens_h, ch.tokens_r, ch.lengths,
                df.astype(np.float64), np.zeros(text_kernels.TOTALS))]
  assert not any("callback" in str(j) for j in jaxprs)


def test_empty_and_punctuation_only_captions_score_as_pycocoevalcap():
  images = ["ct_a.png", "ct_b.png", "ct_c.png", "mr_a.png"]
  refs = ["A small lesion.", "...", "", "The liver."]
  hyps = ["", "! ?", "A lesion, small.", "... --"]
  out = caption_scores_by_modality(images, refs, hyps, meteor="python")
  tok_r, tok_h = tokenize_captions(refs[:3]), tokenize_captions(hyps[:3])
  assert tok_r[1:] == ["", ""] and tok_h[:2] == ["", ""]
  b, _, r, _, c, _ = pycocoevalcap_scores(tok_r, tok_h)
  ct = out.per_modality["ct"]
  assert ct.bleu == tuple(round(v, 6) for v in b)
  assert (ct.rouge_l, ct.cider) == (round(r, 6), round(c, 6))
  mr = out.per_modality["mr"]                         # an empty candidate: all zero, no NaN
  assert mr.bleu == (0.0,) * 4 and (mr.rouge_l, mr.cider, mr.meteor) == (0.0, 0.0, 0.0)
  assert not any(isinstance(v, float) and math.isnan(v) for v in out.mean.values())


def test_a_caption_longer_than_any_bucket_is_refused_with_its_id():
  images = ["ct_1.png", "ct_2.png"]
  long = " ".join(["word"] * (ngrams.MAX_WORDS + 1))
  with pytest.raises(BadInput, match=rf"sample 'q-2': its candidate has "
                                     rf"{ngrams.MAX_WORDS + 1} words, more than the"):
    caption_scores_by_modality(images, ["a b", "c d"], ["a b", long], meteor="none",
                               ids=["q-1", "q-2"])
  assert ngrams.buckets(np.asarray([ngrams.MAX_WORDS])).item() == ngrams.MAX_WORDS


def test_text_that_is_not_unicode_is_refused_with_its_id():
  with pytest.raises(BadInput, match=r"sample 'b': its candidate is not Unicode text "
                                     r"\(surrogates not allowed: '\\udcff' at character 2\)"):
    caption_scores_by_modality(["ct_1.png", "x_1.png"], ["a", "b"], ["a", "ab\udcffc"],
                               meteor="none", ids=["a", "b"])


def test_prediction_files_with_undecodable_bytes_or_lone_surrogates(tmp_path):
  line = lambda rid, response: json.dumps(  # noqa: E731
    {"id": rid, "image": "ct_1.png", "question": "q", "annotation": "a lesion",
     "response": response}).encode()
  path = tmp_path / "bytes.jsonl"
  path.write_bytes(line("ok", "a lesion") + b"\n" + line("bad", "a XX lesion").replace(
    b"XX", b"\xff\xfe") + b"\n")
  with pytest.raises(PredictionFileError, match=r"bytes.jsonl:2 \(id 'bad'\): not UTF-8"):
    read_predictions(path)
  path = tmp_path / "escape.jsonl"
  path.write_bytes(line("ok", "a lesion") + b"\n" + line("esc", "a \udcff lesion") + b"\n")
  preds = read_predictions(path).predictions
  with pytest.raises(BadInput, match=r"sample 'esc': its candidate is not Unicode text"):
    score_task("mia", preds)
