"""COCO caption metrics as pycocoevalcap computes them: BLEU-1..4, ROUGE-L, CIDEr(-D), METEOR.

Input captions are PTB-tokenized first (``ptb_tokenize.tokenize_captions``, equivalent to
pycocoevalcap's Java PTBTokenizer). Each sample is its own "image" with ONE reference and one
candidate, exactly like BiRD's use of pycocoevalcap:
- BLEU: corpus BLEU from summed clipped n-gram counts, brevity penalty from summed lengths
  (reference length "closest" = the one reference), tiny/small smoothing constants 1e-15/1e-9;
  words from ``str.split()``;
- ROUGE-L: per-sample LCS F-measure with beta 1.2 over ``split(" ")`` tokens, then the mean;
- CIDEr: pycocoevalcap's "CIDEr" (clipped tf-idf cosine per n = 1..4 with the Gaussian length
  penalty sigma 6 computed from bigram counts, x10), document frequencies from the references of
  the scored set; one sample gives 0 (log(1) = 0);
- METEOR: ``meteor.meteor_score`` (METEOR 1.5 in Python) or ``meteor.meteor_java`` (the jar).
``caption_scores_by_modality`` applies BiRD's protocol: each modality scored on its own
(tokenizer, CIDEr IDF, METEOR corpus statistics), values rounded to 6 decimals, unweighted
means over the 8 modalities.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

from bird_jax.metrics import meteor as meteor_lib
from bird_jax.metrics.modality import MODALITIES, group_by_modality, mean_over, mean_present
from bird_jax.metrics.ptb_tokenize import tokenize_captions

NGRAM = 4
CIDER_SIGMA = 6.0
ROUGE_BETA = 1.2


def _ngram_counts(words: list[str]) -> list[Counter]:
  """Counts of 1..4-grams (as tuples) of a token list."""
  return [Counter(zip(*(words[i:] for i in range(k)))) for k in range(1, NGRAM + 1)]


# --- BLEU ----------------------------------------------------------------------------------
def bleu(refs: Sequence[str], hyps: Sequence[str],
         counts: tuple[list, list] | None = None) -> tuple[list[float], np.ndarray]:
  """Corpus BLEU-1..4 and the per-sample values [N, 4] of pycocoevalcap's BleuScorer."""
  tiny, small = 1e-15, 1e-9
  ref_counts, hyp_counts = counts or ([_ngram_counts(r.split()) for r in refs],
                                      [_ngram_counts(h.split()) for h in hyps])
  n = len(refs)
  per_sample = np.zeros((n, NGRAM))
  tot_guess = [0] * NGRAM
  tot_correct = [0] * NGRAM
  tot_test = tot_ref = 0
  for s in range(n):
    test_len = sum(hyp_counts[s][0].values())
    ref_len = sum(ref_counts[s][0].values())
    tot_test += test_len
    tot_ref += ref_len
    b = 1.0
    ratio = (test_len + tiny) / (ref_len + small)
    for k in range(NGRAM):
      guess = max(0, test_len - k)
      rc = ref_counts[s][k]
      correct = sum(min(c, rc[g]) for g, c in hyp_counts[s][k].items() if g in rc)
      tot_guess[k] += guess
      tot_correct[k] += correct
      b *= (float(correct) + tiny) / (float(guess) + small)
      per_sample[s, k] = b ** (1.0 / (k + 1))
    if ratio < 1:
      per_sample[s] *= math.exp(1 - 1 / ratio)
  out = []
  b = 1.0
  for k in range(NGRAM):
    b *= float(tot_correct[k] + tiny) / (tot_guess[k] + small)
    out.append(b ** (1.0 / (k + 1)))
  ratio = (tot_test + tiny) / (tot_ref + small)
  if ratio < 1:
    out = [v * math.exp(1 - 1 / ratio) for v in out]
  return out, per_sample


# --- ROUGE-L -------------------------------------------------------------------------------
def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
  """Length of the longest common subsequence (bit-parallel, Hyyro 2004)."""
  if not a or not b:
    return 0
  masks: dict[str, int] = {}
  for i, tok in enumerate(a):
    masks[tok] = masks.get(tok, 0) | (1 << i)
  full = (1 << len(a)) - 1
  v = full
  for tok in b:
    u = v & masks.get(tok, 0)
    v = ((v + u) | (v - u)) & full
  return len(a) - bin(v).count("1")


def rouge_l(refs: Sequence[str], hyps: Sequence[str]) -> tuple[float, np.ndarray]:
  """Mean ROUGE-L F (beta 1.2) and per-sample values, tokens from ``split(" ")``."""
  scores = np.zeros(len(refs))
  for s, (r, h) in enumerate(zip(refs, hyps)):
    tr, tc = r.split(" "), h.split(" ")
    lcs = lcs_length(tr, tc)
    prec, rec = lcs / float(len(tc)), lcs / float(len(tr))
    if prec != 0 and rec != 0:
      scores[s] = ((1 + ROUGE_BETA ** 2) * prec * rec) / float(rec + ROUGE_BETA ** 2 * prec)
  return float(np.mean(scores)) if len(refs) else math.nan, scores


# --- CIDEr ---------------------------------------------------------------------------------
def cider(refs: Sequence[str], hyps: Sequence[str],
          counts: tuple[list, list] | None = None) -> tuple[float, np.ndarray]:
  """pycocoevalcap's CIDEr (CIDEr-D form) with IDF from ``refs``, one reference per sample."""
  ref_counts, hyp_counts = counts or ([_ngram_counts(r.split()) for r in refs],
                                      [_ngram_counts(h.split()) for h in hyps])
  n = len(refs)
  df: Counter = Counter()
  for rc in ref_counts:
    for k in range(NGRAM):
      df.update(rc[k].keys())
  ref_len = np.log(float(n))

  def vec(cnts: list[Counter]) -> tuple[list[dict], list[float], int]:
    v: list[dict] = []
    norm = []
    for k in range(NGRAM):
      d = {}
      sq = 0.0
      for g, tf in cnts[k].items():
        w = float(tf) * (ref_len - np.log(max(1.0, df.get(g, 0.0))))
        d[g] = w
        sq += pow(w, 2)
      v.append(d)
      norm.append(np.sqrt(sq))
    return v, norm, sum(cnts[1].values())

  scores = np.zeros(n)
  for s in range(n):
    vh, nh, lh = vec(hyp_counts[s])
    vr, nr, lr = vec(ref_counts[s])
    delta = float(lh - lr)
    val = np.zeros(NGRAM)
    for k in range(NGRAM):
      acc = 0.0
      ref_k = vr[k]
      for g, w in vh[k].items():
        wr = ref_k.get(g, 0.0)
        acc += min(w, wr) * wr
      val[k] = acc
      if nh[k] != 0 and nr[k] != 0:
        val[k] /= nh[k] * nr[k]
      val[k] *= np.e ** (-(delta ** 2) / (2 * CIDER_SIGMA ** 2))
    scores[s] = np.mean(val) / 1 * 10.0
  return float(np.mean(scores)) if n else math.nan, scores


# --- all caption metrics -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CaptionScores:
  """pycocoevalcap metrics of one set of samples (fractions; x100 in BiRD's tables)."""
  bleu: tuple[float, float, float, float]
  meteor: float | None
  rouge_l: float
  cider: float
  count: int

  @property
  def mbmr(self) -> float | None:
    """BiRD's MIA metric: mean(BLEU-4, METEOR, ROUGE-L)."""
    if self.meteor is None:
      return None
    return (self.bleu[3] + self.meteor + self.rouge_l) / 3

  def rounded(self, ndigits: int = 6) -> "CaptionScores":
    r = lambda v: None if v is None else round(v, ndigits)  # noqa: E731
    return CaptionScores(tuple(r(v) for v in self.bleu), r(self.meteor), r(self.rouge_l),
                         r(self.cider), self.count)

  def as_dict(self) -> dict[str, float | None]:
    return {"Bleu_1": self.bleu[0], "Bleu_2": self.bleu[1], "Bleu_3": self.bleu[2],
            "Bleu_4": self.bleu[3], "METEOR": self.meteor, "ROUGE_L": self.rouge_l,
            "CIDEr": self.cider, "mBMR": self.mbmr}


def caption_scores(refs: Sequence[str], hyps: Sequence[str], *, meteor: str = "python",
                   meteor_resources: meteor_lib.Resources | None = None,
                   tokenized: bool = False) -> CaptionScores:
  """All metrics for one set of samples, tokenizing references and candidates separately
  like COCOEvalCap. ``meteor``: "python" (ours), "java" (the official jar) or "none"."""
  if len(refs) != len(hyps):
    raise ValueError(f"caption_scores: {len(refs)} references but {len(hyps)} candidates")
  if not tokenized:
    refs, hyps = tokenize_captions(refs), tokenize_captions(hyps)
  counts = ([_ngram_counts(r.split()) for r in refs], [_ngram_counts(h.split()) for h in hyps])
  b, _ = bleu(refs, hyps, counts)
  r, _ = rouge_l(refs, hyps)
  c, _ = cider(refs, hyps, counts)
  if meteor == "python":
    m = meteor_lib.meteor_score(refs, hyps, meteor_resources)[0]
  elif meteor == "java":
    m = meteor_lib.meteor_java(refs, hyps)[0]
  elif meteor == "none":
    m = None
  else:
    raise ValueError(f"caption_scores: meteor must be 'python', 'java' or 'none', got {meteor!r}")
  return CaptionScores(tuple(b), m, r, c, len(refs))


@dataclasses.dataclass(frozen=True)
class ModalityCaptionScores:
  """Per-modality caption metrics (rounded to 6 decimals, None = no samples) and averages.

  ``mean`` follows BiRD (unweighted over the 8 modalities, a modality without samples counting
  0); ``mean_present`` averages only modalities that have samples. ``unknown`` counts samples
  whose image prefix is not one of the 8 modalities (BiRD's RC/MIA scripts drop them silently).
  """
  per_modality: dict[str, CaptionScores | None]
  mean: dict[str, float]
  mean_present: dict[str, float]
  counts: dict[str, int]
  unknown: int


def caption_scores_by_modality(images: Sequence[str], refs: Sequence[str],
                               hyps: Sequence[str], *, meteor: str = "python"
                               ) -> ModalityCaptionScores:
  """BiRD's RC/MIA scoring: each modality scored separately, then averaged."""
  if not len(images) == len(refs) == len(hyps):
    raise ValueError(
      f"caption_scores_by_modality: images ({len(images)}), references ({len(refs)}) and "
      f"candidates ({len(hyps)}) must have the same length")
  groups = group_by_modality(images)
  tokenized = {}
  for m in MODALITIES:
    idx = groups.indices[m]
    if idx:
      tokenized[m] = (tokenize_captions([refs[i] for i in idx]),
                      tokenize_captions([hyps[i] for i in idx]))
  res = None
  if meteor == "python":
    texts = [t for r, h in tokenized.values() for t in r + [meteor_lib.clean_hypothesis(x)
                                                            for x in h]]
    res = meteor_lib.Resources(meteor_lib.vocabulary(texts))
  per: dict[str, CaptionScores | None] = {}
  for m in MODALITIES:
    if m not in tokenized:
      per[m] = None
      continue
    r, h = tokenized[m]
    per[m] = caption_scores(r, h, meteor=meteor, meteor_resources=res,
                            tokenized=True).rounded(6)
  keys = ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "mBMR"]
  table = {k: {m: (None if per[m] is None else per[m].as_dict()[k]) for m in MODALITIES}
           for k in keys}
  return ModalityCaptionScores(
    per_modality=per, mean={k: mean_over(table[k]) for k in keys},
    mean_present={k: mean_present(table[k]) for k in keys},
    counts={m: groups.count(m) for m in MODALITIES}, unknown=len(groups.unknown))
