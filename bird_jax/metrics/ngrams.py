"""Vectorised n-gram statistics for BLEU and CIDEr over many (reference, candidate) pairs.

Tokens (``str.split()``, as pycocoevalcap) are mapped to integer ids, n-grams of order 1..4 to
ids shared by references and candidates, and each sample's n-gram counts are kept as sorted
``sample * G + gram`` keys with counts, so that clipped matches, document frequencies and
tf-idf vectors are NumPy operations over the whole corpus instead of per-sample dictionaries.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np

NGRAM = 4


@dataclasses.dataclass(frozen=True)
class Counts:
  """Counts of one n-gram order: sorted unique keys (sample * n_grams + gram) and counts."""
  keys: np.ndarray
  counts: np.ndarray
  n_grams: int

  @property
  def sample(self) -> np.ndarray:
    return self.keys // self.n_grams

  @property
  def gram(self) -> np.ndarray:
    return self.keys % self.n_grams


@dataclasses.dataclass(frozen=True)
class NgramStats:
  """Per-order counts of candidates (``hyp``) and references (``ref``) plus token lengths."""
  hyp: list[Counts]
  ref: list[Counts]
  hyp_len: np.ndarray
  ref_len: np.ndarray
  n: int

  def matches(self, k: int) -> tuple[np.ndarray, np.ndarray]:
    """For each candidate n-gram entry of order k: the index of the same (sample, gram) in the
    reference entries and whether it exists."""
    h, r = self.hyp[k], self.ref[k]
    idx = np.searchsorted(r.keys, h.keys)
    idx_c = np.minimum(idx, max(len(r.keys) - 1, 0))
    found = (idx < len(r.keys)) & (r.keys[idx_c] == h.keys) if len(r.keys) else \
      np.zeros(len(h.keys), bool)
    return idx_c, found


def encode(seqs: Sequence[Sequence[str]], vocab: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
  """Token ids (new words numbered in order of first appearance) and lengths per sequence."""
  flat = list(itertools.chain.from_iterable(seqs))
  for w in dict.fromkeys(flat):
    if w not in vocab:
      vocab[w] = len(vocab)
  return (np.fromiter(map(vocab.__getitem__, flat), np.int64, len(flat)),
          np.fromiter(map(len, seqs), np.int64, len(seqs)))


def ngram_stats(refs: Sequence[str], hyps: Sequence[str]) -> NgramStats:
  """N-gram counts of orders 1..4 for every sample of both sides."""
  if len(refs) != len(hyps):
    raise ValueError(f"ngram_stats: {len(refs)} references but {len(hyps)} candidates")
  n = len(refs)
  vocab: dict[str, int] = {}
  h_ids, h_len = encode([t.split() for t in hyps], vocab)
  r_ids, r_len = encode([t.split() for t in refs], vocab)
  ids = np.concatenate([h_ids, r_ids])
  lens = np.concatenate([h_len, r_len])
  owner = np.repeat(np.arange(2 * n), lens)          # samples 0..n-1 = hyps, n..2n-1 = refs
  ends = np.repeat(np.cumsum(lens), lens)
  pos = np.arange(len(ids))
  v = max(len(vocab), 1)
  hyp_out, ref_out = [], []
  gram = ids.copy()                                  # id of the k-gram starting at each position
  valid = np.ones(len(ids), bool)
  for k in range(1, NGRAM + 1):
    if k > 1:
      nxt = np.zeros(len(ids), np.int64)
      ok = pos + k - 1 < len(ids)
      nxt[ok] = ids[pos[ok] + k - 1]
      valid = valid & (pos + k <= ends)
      combined = gram * v + nxt
      gram = np.zeros(len(ids), np.int64)
      if valid.any():
        _, inv = np.unique(combined[valid], return_inverse=True)
        gram[valid] = inv
    g_count = int(gram[valid].max()) + 1 if valid.any() else 1
    keys = owner[valid] * g_count + gram[valid]
    uk, uc = np.unique(keys, return_counts=True)
    split = np.searchsorted(uk, n * g_count)
    hyp_out.append(Counts(uk[:split], uc[:split], g_count))
    ref_out.append(Counts(uk[split:] - n * g_count, uc[split:], g_count))
  return NgramStats(hyp_out, ref_out, h_len, r_len, n)
