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
from collections.abc import Sequence

import numpy as np

from bird_jax.metrics import meteor as meteor_lib
from bird_jax.metrics import spice as spice_lib
from bird_jax.metrics.ngrams import NGRAM, NgramStats, encode, ngram_stats
from bird_jax.metrics.modality import group_by_modality, mean_over, mean_present
from bird_jax.vocabulary import MODALITIES
from bird_jax.metrics.ptb_tokenize import tokenize_captions

CIDER_SIGMA = 6.0
ROUGE_BETA = 1.2


# --- BLEU ----------------------------------------------------------------------------------
def bleu(refs: Sequence[str], hyps: Sequence[str], stats: NgramStats | None = None
         ) -> tuple[list[float], np.ndarray]:
  """Corpus BLEU-1..4 and the per-sample values [N, 4] of pycocoevalcap's BleuScorer."""
  tiny, small = 1e-15, 1e-9
  st = stats or ngram_stats(refs, hyps)
  n = st.n
  test_len = st.hyp_len.astype(np.float64)
  ref_len = st.ref_len.astype(np.float64)
  correct = np.zeros((NGRAM, n))
  guess = np.zeros((NGRAM, n))
  for k in range(NGRAM):
    h, r = st.hyp[k], st.ref[k]
    idx, found = st.matches(k)
    clipped = np.where(found, np.minimum(h.counts, r.counts[idx] if len(r.counts) else 0), 0)
    correct[k] = np.bincount(h.sample, weights=clipped, minlength=n)
    guess[k] = np.maximum(0, st.hyp_len - k)
  per_sample = np.zeros((n, NGRAM))
  b = np.ones(n)
  for k in range(NGRAM):
    b = b * ((correct[k] + tiny) / (guess[k] + small))
    per_sample[:, k] = b ** (1.0 / (k + 1))
  ratio = (test_len + tiny) / (ref_len + small)
  short = ratio < 1
  per_sample[short] *= np.exp(1 - 1 / ratio[short])[:, None]
  out = []
  b = 1.0
  for k in range(NGRAM):
    b *= float(int(correct[k].sum()) + tiny) / (int(guess[k].sum()) + small)
    out.append(b ** (1.0 / (k + 1)))
  ratio = (float(test_len.sum()) + tiny) / (float(ref_len.sum()) + small)
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


def lcs_lengths(refs: list[list[str]], hyps: list[list[str]]) -> np.ndarray:
  """``lcs_length`` of every (reference, candidate) pair: the same bit-parallel recurrence,
  vectorised over the pairs whose reference fits in 64 bits (others one by one)."""
  vocab: dict[str, int] = {}
  r_ids, r_len = encode(refs, vocab)
  h_ids, h_len = encode(hyps, vocab)
  n, v_size = len(refs), max(len(vocab), 1)
  out = np.zeros(n, np.int64)
  for s in np.flatnonzero(r_len > 64):
    out[s] = lcs_length(refs[s], hyps[s])
  small = r_len <= 64
  # masks[(sample, word)] = bits of the reference positions holding that word
  r_sample = np.repeat(np.arange(n), r_len)
  r_pos = np.arange(len(r_ids)) - np.repeat(np.cumsum(r_len) - r_len, r_len)
  keep = small[r_sample]
  keys = r_sample[keep] * v_size + r_ids[keep]
  order = np.argsort(keys, kind="stable")
  keys = keys[order]
  bits = np.left_shift(np.uint64(1), r_pos[keep][order].astype(np.uint64))
  starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else keys
  ukeys, masks = keys[starts], np.add.reduceat(bits, starts) if len(keys) else bits
  h_sample = np.repeat(np.arange(n), h_len)
  h_pos = np.arange(len(h_ids)) - np.repeat(np.cumsum(h_len) - h_len, h_len)
  h_keys = h_sample * v_size + h_ids
  at = np.minimum(np.searchsorted(ukeys, h_keys), max(len(ukeys) - 1, 0))
  found = (ukeys[at] == h_keys) & small[h_sample] if len(ukeys) else np.zeros(len(h_keys), bool)
  steps = np.zeros((int(h_len.max()) if n else 0, n), np.uint64)
  steps[h_pos[found], h_sample[found]] = masks[at[found]]
  full = np.where(r_len >= 64, np.uint64(2 ** 64 - 1),
                  np.left_shift(np.uint64(1), np.minimum(r_len, 63).astype(np.uint64))
                  - np.uint64(1))
  v = full.copy()
  for mask in steps:                 # a candidate word missing from the reference: mask 0
    u = v & mask
    v = ((v + u) | (v - u)) & full   # uint64 wrap-around = the Python version's "& full"
  lcs = r_len - np.bitwise_count(v).astype(np.int64)
  out[small] = lcs[small]
  return out


def rouge_l(refs: Sequence[str], hyps: Sequence[str]) -> tuple[float, np.ndarray]:
  """Mean ROUGE-L F (beta 1.2) and per-sample values, tokens from ``split(" ")``."""
  tr = [r.split(" ") for r in refs]
  tc = [h.split(" ") for h in hyps]
  lcs = lcs_lengths(tr, tc)
  prec = lcs / np.fromiter(map(len, tc), np.float64, len(tc))
  rec = lcs / np.fromiter(map(len, tr), np.float64, len(tr))
  ok = (prec != 0) & (rec != 0)
  scores = np.zeros(len(refs))
  p, r = prec[ok], rec[ok]
  scores[ok] = ((1 + ROUGE_BETA ** 2) * p * r) / (r + ROUGE_BETA ** 2 * p)
  return float(np.mean(scores)) if len(refs) else math.nan, scores


# --- CIDEr ---------------------------------------------------------------------------------
def cider(refs: Sequence[str], hyps: Sequence[str], stats: NgramStats | None = None
          ) -> tuple[float, np.ndarray]:
  """pycocoevalcap's CIDEr (CIDEr-D form) with IDF from ``refs``, one reference per sample."""
  st = stats or ngram_stats(refs, hyps)
  n = st.n
  if n == 0:
    return math.nan, np.zeros(0)
  ref_len = np.log(float(n))
  delta = (np.maximum(st.hyp_len - 1, 0) - np.maximum(st.ref_len - 1, 0)).astype(np.float64)
  penalty = np.e ** (-(delta ** 2) / (2 * CIDER_SIGMA ** 2))
  val = np.zeros((NGRAM, n))
  for k in range(NGRAM):
    h, r = st.hyp[k], st.ref[k]
    df = np.bincount(r.gram, minlength=h.n_grams).astype(np.float64)
    idf = ref_len - np.log(np.maximum(1.0, df))
    wh = h.counts * idf[h.gram]
    wr = r.counts * idf[r.gram]
    norm_h = np.sqrt(np.bincount(h.sample, weights=wh ** 2, minlength=n))
    norm_r = np.sqrt(np.bincount(r.sample, weights=wr ** 2, minlength=n))
    idx, found = st.matches(k)
    wr_m = wr[idx[found]]
    overlap = np.bincount(h.sample[found], weights=np.minimum(wh[found], wr_m) * wr_m,
                          minlength=n)
    nz = (norm_h != 0) & (norm_r != 0)
    val[k] = np.where(nz, overlap / np.where(nz, norm_h * norm_r, 1.0), overlap) * penalty
  scores = (((val[0] + val[1]) + val[2]) + val[3]) / NGRAM / 1 * 10.0
  return float(np.mean(scores)), scores


# --- all caption metrics -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CaptionScores:
  """pycocoevalcap metrics of one set of samples (fractions; x100 in BiRD's tables)."""
  bleu: tuple[float, float, float, float]
  meteor: float | None
  rouge_l: float
  cider: float
  count: int
  spice: float | None = None          # official SPICE only
  spice_approx: float | None = None   # spice.APPROX_LABEL, never reported as SPICE

  @property
  def mbmr(self) -> float | None:
    """BiRD's MIA metric: mean(BLEU-4, METEOR, ROUGE-L)."""
    if self.meteor is None:
      return None
    return (self.bleu[3] + self.meteor + self.rouge_l) / 3

  def rounded(self, ndigits: int = 6) -> "CaptionScores":
    r = lambda v: None if v is None else round(v, ndigits)  # noqa: E731
    return CaptionScores(tuple(r(v) for v in self.bleu), r(self.meteor), r(self.rouge_l),
                         r(self.cider), self.count, r(self.spice), r(self.spice_approx))

  def as_dict(self) -> dict[str, float | None]:
    return {"Bleu_1": self.bleu[0], "Bleu_2": self.bleu[1], "Bleu_3": self.bleu[2],
            "Bleu_4": self.bleu[3], "METEOR": self.meteor, "ROUGE_L": self.rouge_l,
            "CIDEr": self.cider, "mBMR": self.mbmr, "SPICE": self.spice,
            spice_lib.APPROX_LABEL: self.spice_approx}


def caption_scores(refs: Sequence[str], hyps: Sequence[str], *, meteor: str = "python",
                   spice: str = "none", meteor_resources: meteor_lib.Resources | None = None,
                   tokenized: bool = False) -> CaptionScores:
  """All metrics for one set of samples, tokenizing references and candidates separately
  like COCOEvalCap. ``meteor``: "python" (ours), "java" (the official jar) or "none".
  ``spice``: "java" (official, needs CoreNLP 3.6.0), "approx" (labelled approximation),
  "auto" (java when available, else approx) or "none"."""
  if len(refs) != len(hyps):
    raise ValueError(f"caption_scores: {len(refs)} references but {len(hyps)} candidates")
  if not tokenized:
    refs, hyps = tokenize_captions(refs), tokenize_captions(hyps)
  stats = ngram_stats(refs, hyps)
  b, _ = bleu(refs, hyps, stats)
  r, _ = rouge_l(refs, hyps)
  c, _ = cider(refs, hyps, stats)
  if meteor == "python":
    m = meteor_lib.meteor_score(refs, hyps, meteor_resources)[0]
  elif meteor == "java":
    m = meteor_lib.meteor_java(refs, hyps)[0]
  elif meteor == "none":
    m = None
  else:
    raise ValueError(f"caption_scores: meteor must be 'python', 'java' or 'none', got {meteor!r}")
  sp = sp_approx = None
  if spice == "auto":
    spice = "java" if spice_lib.spice_status().available else "approx"
  if spice == "java":
    sp = spice_lib.spice_java(refs, hyps)[0]
  elif spice == "approx":
    sp_approx = spice_lib.spice_approx(refs, hyps, meteor_resources)[0]
  elif spice != "none":
    raise ValueError(f"caption_scores: spice must be 'java', 'approx', 'auto' or 'none', "
                     f"got {spice!r}")
  return CaptionScores(tuple(b), m, r, c, len(refs), sp, sp_approx)


@dataclasses.dataclass(frozen=True)
class ModalityCaptionScores:
  """Per-modality caption metrics (rounded to 6 decimals, None = no samples) and averages.

  ``mean`` follows BiRD (unweighted over the 8 modalities, a modality without samples counting
  0); ``mean_present`` averages only modalities that have samples. ``unknown`` counts samples
  whose image prefix is not one of the 8 modalities (BiRD's RC/MIA scripts drop them silently).
  """
  per_modality: dict[str, CaptionScores | None]
  mean: dict[str, float | None]
  mean_present: dict[str, float]
  counts: dict[str, int]
  unknown: int
  spice_status: str


def caption_scores_by_modality(images: Sequence[str], refs: Sequence[str],
                               hyps: Sequence[str], *, meteor: str = "python",
                               spice: str = "none", workers: int = 1) -> ModalityCaptionScores:
  """BiRD's RC/MIA scoring: each modality scored separately, then averaged. ``workers`` > 1
  computes METEOR's per-segment statistics in that many processes."""
  if not len(images) == len(refs) == len(hyps):
    raise ValueError(
      f"caption_scores_by_modality: images ({len(images)}), references ({len(refs)}) and "
      f"candidates ({len(hyps)}) must have the same length")
  groups = group_by_modality(images)
  tokenized = {}
  cache: dict = {}          # chunk tokens do not depend on the stream: shared across modalities
  for m in MODALITIES:
    idx = groups.indices[m]
    if idx:
      tokenized[m] = (tokenize_captions([refs[i] for i in idx], cache),
                      tokenize_captions([hyps[i] for i in idx], cache))
  status = spice_lib.spice_status()
  if spice == "auto":
    spice = "java" if status.available else "approx"
  # SPICE-approx uses stems and synsets only; METEOR's resources come with its statistics.
  res = meteor_lib.Resources() if spice == "approx" else None
  meteor_stats = {}
  if meteor == "python":
    all_refs = [t for m in tokenized for t in tokenized[m][0]]
    all_hyps = [t for m in tokenized for t in tokenized[m][1]]
    stats = meteor_lib.segment_stats_array(all_refs, all_hyps, workers=workers)
    k = 0
    for m in tokenized:
      meteor_stats[m] = stats[k:k + len(tokenized[m][0])]
      k += len(tokenized[m][0])
  per: dict[str, CaptionScores | None] = {}
  for m in MODALITIES:
    if m not in tokenized:
      per[m] = None
      continue
    r, h = tokenized[m]
    scores = caption_scores(r, h, meteor="none" if meteor == "python" else meteor,
                            spice=spice, meteor_resources=res, tokenized=True)
    if meteor == "python":
      value = meteor_lib.score_stats(meteor_lib.aggregate_array(meteor_stats[m]))
      scores = dataclasses.replace(scores, meteor=value)
    per[m] = scores.rounded(6)
  keys = ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "mBMR",
          "SPICE", spice_lib.APPROX_LABEL]
  table = {k: {m: (None if per[m] is None else per[m].as_dict()[k]) for m in MODALITIES}
           for k in keys}
  return ModalityCaptionScores(
    per_modality=per,
    mean={k: mean_over(table[k]) if any(v is not None for v in table[k].values()) else None
          for k in keys},
    mean_present={k: mean_present(table[k]) for k in keys},
    counts={m: groups.count(m) for m in MODALITIES}, unknown=len(groups.unknown),
    spice_status=status.reason)
