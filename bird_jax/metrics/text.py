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
BLEU, ROUGE-L and CIDEr are computed together (``text_scores``): integer ids on the host
(``ngrams``), the arithmetic in jitted JAX (``text_kernels``).
``caption_scores_by_modality`` applies BiRD's protocol: each modality scored on its own
(tokenizer, CIDEr IDF, METEOR corpus statistics), values rounded to 6 decimals, unweighted
means over the 8 modalities.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bird_jax.exit_codes import BadInput
from bird_jax.metrics import meteor as meteor_lib
from bird_jax.metrics import spice as spice_lib
from bird_jax.metrics import text_kernels as K
from bird_jax.metrics.modality import group_by_modality, mean_over, mean_present
from bird_jax.metrics.ngrams import encode
from bird_jax.metrics.ptb_tokenize import tokenize_captions
from bird_jax.vocabulary import MODALITIES

MIN_GRAM_SPACE = 1 << 16       # smallest n-gram id space: small sets share one program
Timings = dict[str, float]


@contextlib.contextmanager
def _cyclic_gc_paused():
  """Pauses Python's cyclic garbage collector: scoring allocates millions of small objects
  (tokens, word lists) and no reference cycles, so its passes over them are pure cost."""
  enabled = gc.isenabled()
  gc.disable()
  try:
    yield
  finally:
    if enabled:
      gc.enable()


def _add_time(timings: Timings | None, phase: str, since: float) -> float:
  now = time.perf_counter()
  if timings is not None:
    timings[phase] = timings.get(phase, 0.0) + now - since
  return now


@dataclasses.dataclass(frozen=True)
class TextScores:
  """BLEU-1..4, ROUGE-L and CIDEr of one scored set: the set's values and each sample's."""
  bleu: list[float]
  bleu_per_sample: np.ndarray     # [N, 4]
  rouge_l: float
  rouge_l_per_sample: np.ndarray  # [N]
  cider: float
  cider_per_sample: np.ndarray    # [N]


def text_scores(refs: Sequence[str], hyps: Sequence[str], ids: Sequence | None = None,
                timings: Timings | None = None) -> TextScores:
  """BLEU, ROUGE-L and CIDEr of tokenized captions, one reference per candidate: integer
  chunks from ``ngrams.encode``, then the ``text_kernels`` programs. ``ids`` name the samples
  in refusals (default: their index); ``timings`` (when given) gets the seconds spent in
  "ids" (host) and "jax" (kernels, compilation included) added."""
  t = time.perf_counter()
  enc = encode(refs, hyps, ids)
  t = _add_time(timings, "ids", t)
  n = enc.n
  if n == 0:
    return TextScores([math.nan] * 4, np.zeros((0, 4)), math.nan, np.zeros(0), math.nan,
                      np.zeros(0))
  space = max(MIN_GRAM_SPACE, 1 << max(enc.n_grams - 1, 0).bit_length())
  with jax.enable_x64(True):
    df = jnp.asarray(np.zeros(space, np.int32))
    for ch in enc.chunks:
      df = K.document_frequency(df, ch.grams_r)
    count = np.float64(n)
    idf = K.inverse_document_frequency(df, count)
    totals = np.zeros(K.TOTALS, np.float64)
    parts = []
    for ch in enc.chunks:
      b, r, c, totals = K.chunk_scores(ch.grams_h, ch.grams_r, ch.tokens_h, ch.tokens_r,
                                       ch.lengths, idf, totals)
      parts.append((ch.rows, b, r, c))
    corpus = [np.asarray(v) for v in K.corpus_scores(totals, count)]
    bleu, rouge, cider = np.zeros((n, 4)), np.zeros(n), np.zeros(n)
    for rows, b, r, c in parts:
      keep = rows >= 0
      bleu[rows[keep]] = np.asarray(b)[keep]
      rouge[rows[keep]] = np.asarray(r)[keep]
      cider[rows[keep]] = np.asarray(c)[keep]
  _add_time(timings, "jax", t)
  return TextScores(corpus[0].tolist(), bleu, float(corpus[1]), rouge, float(corpus[2]), cider)


def bleu(refs: Sequence[str], hyps: Sequence[str]) -> tuple[list[float], np.ndarray]:
  """Corpus BLEU-1..4 and the per-sample values [N, 4] of pycocoevalcap's BleuScorer."""
  s = text_scores(refs, hyps)
  return s.bleu, s.bleu_per_sample


def rouge_l(refs: Sequence[str], hyps: Sequence[str]) -> tuple[float, np.ndarray]:
  """Mean ROUGE-L F (beta 1.2) and per-sample values, tokens from ``split(" ")``."""
  s = text_scores(refs, hyps)
  return s.rouge_l, s.rouge_l_per_sample


def cider(refs: Sequence[str], hyps: Sequence[str]) -> tuple[float, np.ndarray]:
  """pycocoevalcap's CIDEr (CIDEr-D form) with IDF from ``refs``, one reference per sample."""
  s = text_scores(refs, hyps)
  return s.cider, s.cider_per_sample


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


def _refuse_unencodable(refs: Sequence[str], hyps: Sequence[str], ids: Sequence | None
                        ) -> None:
  """Refuses a caption that is not Unicode text UTF-8 can encode (a lone surrogate, as a JSON
  "\\udc80" escape or bytes decoded with "surrogateescape" leave): pycocoevalcap's tokenizer
  fails on it."""
  for side, texts in (("reference", refs), ("candidate", hyps)):
    try:
      "".join(texts).encode()
    except UnicodeEncodeError:
      for i, text in enumerate(texts):
        try:
          text.encode()
        except UnicodeEncodeError as e:
          raise BadInput(f"sample {(ids[i] if ids is not None else i)!r}: its {side} is not "
                         f"Unicode text ({e.reason}: {text[e.start]!r} at character {e.start})"
                         ) from None


def caption_scores(refs: Sequence[str], hyps: Sequence[str], *, meteor: str = "python",
                   spice: str = "none", meteor_resources: meteor_lib.Resources | None = None,
                   tokenized: bool = False, ids: Sequence | None = None,
                   timings: Timings | None = None) -> CaptionScores:
  """All metrics for one set of samples, tokenizing references and candidates separately
  like COCOEvalCap. ``meteor``: "python" (ours), "java" (the official jar) or "none".
  ``spice``: "java" (official, needs CoreNLP 3.6.0), "approx" (labelled approximation),
  "auto" (java when available, else approx) or "none". ``ids`` name the samples in refusals;
  ``timings`` gets seconds per phase added (see ``caption_scores_by_modality``)."""
  if len(refs) != len(hyps):
    raise ValueError(f"caption_scores: {len(refs)} references but {len(hyps)} candidates")
  if not tokenized:
    _refuse_unencodable(refs, hyps, ids)
    t = time.perf_counter()
    refs, hyps = tokenize_captions(refs), tokenize_captions(hyps)
    _add_time(timings, "tokenize", t)
  text = text_scores(refs, hyps, ids, timings)
  t = time.perf_counter()
  if meteor == "python":
    m = meteor_lib.meteor_score(refs, hyps, meteor_resources)[0]
  elif meteor == "java":
    m = meteor_lib.meteor_java(refs, hyps)[0]
  elif meteor == "none":
    m = None
  else:
    raise ValueError(f"caption_scores: meteor must be 'python', 'java' or 'none', got {meteor!r}")
  _add_time(timings, "meteor", t)
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
  return CaptionScores(tuple(text.bleu), m, text.rouge_l, text.cider, len(refs), sp, sp_approx)


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
                               spice: str = "none", workers: int = 1,
                               ids: Sequence | None = None,
                               timings: Timings | None = None) -> ModalityCaptionScores:
  """BiRD's RC/MIA scoring: each modality scored separately, then averaged. ``workers`` > 1
  computes METEOR's per-segment statistics in that many processes. ``ids`` name the samples
  in refusals (default: their index): a caption that is not Unicode text, or longer than
  ``ngrams.MAX_WORDS`` words, raises ``BadInput``. ``timings``, when given, gets the seconds
  spent per phase added: "tokenize", "ids" (words and n-grams to integers), "jax" (the BLEU,
  ROUGE-L and CIDEr kernels, compilation included), "meteor" (normalising, word features and
  the wait for the aligner, which runs in threads during "ids" and "jax")."""
  if not len(images) == len(refs) == len(hyps):
    raise ValueError(
      f"caption_scores_by_modality: images ({len(images)}), references ({len(refs)}) and "
      f"candidates ({len(hyps)}) must have the same length")
  if ids is not None and len(ids) != len(refs):
    raise ValueError(f"caption_scores_by_modality: {len(ids)} ids for {len(refs)} samples")
  _refuse_unencodable(refs, hyps, ids)
  with _cyclic_gc_paused():
    return _by_modality(images, refs, hyps, meteor, spice, workers, ids, timings)


def _by_modality(images: Sequence[str], refs: Sequence[str], hyps: Sequence[str], meteor: str,
                 spice: str, workers: int, ids: Sequence | None, timings: Timings | None
                 ) -> ModalityCaptionScores:
  t = time.perf_counter()
  groups = group_by_modality(images)
  tokenized = {}
  cache: dict = {}          # chunk tokens do not depend on the stream: shared across modalities
  for m in MODALITIES:
    idx = groups.indices[m]
    if idx:
      tokenized[m] = (tokenize_captions([refs[i] for i in idx], cache),
                      tokenize_captions([hyps[i] for i in idx], cache))
  _add_time(timings, "tokenize", t)
  status = spice_lib.spice_status()
  if spice == "auto":
    spice = "java" if status.available else "approx"
  # SPICE-approx uses stems and synsets only; METEOR's resources come with its statistics.
  res = meteor_lib.Resources() if spice == "approx" else None
  if meteor == "python":                 # its aligner runs in threads beside the next phases
    t = time.perf_counter()
    all_refs = [x for m in tokenized for x in tokenized[m][0]]
    all_hyps = [x for m in tokenized for x in tokenized[m][1]]
    meteor_stats = meteor_lib.segment_stats_later(all_refs, all_hyps, workers=workers)
    _add_time(timings, "meteor", t)
  scores = {}
  for m, (r, h) in tokenized.items():
    idx = groups.indices[m]
    scores[m] = caption_scores(r, h, meteor="none" if meteor == "python" else meteor,
                               spice=spice, meteor_resources=res, tokenized=True,
                               ids=[ids[i] for i in idx] if ids is not None else idx,
                               timings=timings)
  if meteor == "python":
    t = time.perf_counter()
    stats = meteor_stats()
    k = 0
    for m in tokenized:
      value = meteor_lib.score_stats(meteor_lib.aggregate_array(
        stats[k:k + len(tokenized[m][0])]))
      scores[m] = dataclasses.replace(scores[m], meteor=value)
      k += len(tokenized[m][0])
    _add_time(timings, "meteor", t)
  per = {m: scores[m].rounded(6) if m in scores else None for m in MODALITIES}
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
