"""Host side of the caption metrics: words to integer ids, n-grams to dense ids, padded chunks.

Words are pycocoevalcap's: ``split()`` for BLEU and CIDEr, ``split(" ")`` for ROUGE-L (an
empty caption is one empty token there). A word's id is unique within a scored set. N-grams of
orders 1..4 get dense ids shared by references and candidates (one id space, order after
order) from two sorts of 64-bit keys: (word, next word), then (pair id, pair id two words on).
Dense ids are given in sorted order, so the second sort orders the 4-grams lexicographically
and the 3-gram prefixes are contiguous in it.

Samples are grouped by a length bucket (the smallest power of two, at least ``MIN_BUCKET``,
that holds the longest of their four sequences) and cut into chunks of ``CELLS // bucket**2``
rows (at least one), the last padded with empty rows: a scored set of any size uses one array
shape per bucket. A caption of more than ``MAX_WORDS`` words is refused, naming its sample.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np

from bird_jax.exit_codes import BadInput

NGRAM = 4
MIN_BUCKET = 32
MAX_WORDS = 4096
CELLS = 1 << 18
_NONE = np.uint64(2 ** 32 - 1)      # no word (past the end of a sequence): sorts last


@dataclasses.dataclass(frozen=True)
class Chunk:
  """C samples of one length bucket L, as the JAX kernels take them."""
  rows: np.ndarray       # int64 [C]: the sample of each row, -1 for padding
  grams_h: np.ndarray    # int32 [C, 4, L]: candidate n-gram ids by order, -1 past the end
  grams_r: np.ndarray    # int32 [C, 4, L]: reference n-gram ids
  tokens_h: np.ndarray   # int32 [C, L]: candidate ROUGE token ids, -1 padding
  tokens_r: np.ndarray   # int32 [C, L]: reference ROUGE token ids, -2 padding
  lengths: np.ndarray    # int32 [C, 4]: candidate, reference words; candidate, reference tokens


@dataclasses.dataclass(frozen=True)
class Encoded:
  chunks: list[Chunk]
  n_grams: int           # size of the n-gram id space
  n: int                 # samples


def buckets(lengths: np.ndarray) -> np.ndarray:
  """Length buckets: the smallest power of two >= each length, at least MIN_BUCKET."""
  return np.maximum(MIN_BUCKET, 1 << np.ceil(np.log2(np.maximum(lengths, 1))).astype(np.int64))


def _ids(seqs: list[list[str]], vocab: dict[str, int], start: int = 0
         ) -> tuple[np.ndarray, np.ndarray]:
  """Word ids of ``seqs`` and their lengths. A new word gets the running count of words seen
  (from ``start``): ids are unique, not dense."""
  flat = list(itertools.chain.from_iterable(seqs))
  return (np.fromiter(map(vocab.setdefault, flat, itertools.count(start)), np.int64,
                      len(flat)),
          np.fromiter(map(len, seqs), np.int64, len(seqs)))


def _dense(keys: np.ndarray, *changes) -> list[np.ndarray]:
  """Dense ids in sorted order of ``keys``: for each ``change(sorted keys, order)`` (a
  boolean per adjacent pair), a new id wherever it holds."""
  order = np.argsort(keys)
  s = keys[order]
  out = []
  for change in changes:
    step = np.zeros(len(keys), np.int64)
    step[1:] = change(s, order)
    ids = np.empty(len(keys), np.int64)
    ids[order] = np.cumsum(step)
    out.append(ids)
  return out


def _gram_ids(words: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, int]:
  """Dense ids [4, M] of the n-grams starting at each word (orders 1..4; -1 where the n-gram
  runs past its sequence) and the size of the id space."""
  m = len(words)
  if m == 0:
    return np.zeros((NGRAM, 0), np.int64), 0
  left = np.repeat(lengths, lengths) - (np.arange(m) - np.repeat(np.cumsum(lengths) - lengths,
                                                                 lengths))  # words to the end

  def ahead(values: np.ndarray, q: int, none) -> np.ndarray:
    out = np.full(m, none, values.dtype)
    out[:m - q] = values[q:]
    out[left <= q] = none
    return out

  high = lambda s, _: (s[1:] >> np.uint64(32)) != (s[:-1] >> np.uint64(32))  # noqa: E731
  whole = lambda s, _: s[1:] != s[:-1]                                        # noqa: E731
  w = words.astype(np.uint64)
  one, two = _dense((w << np.uint64(32)) | ahead(w, 1, _NONE), high, whole)
  two_u = two.astype(np.uint64)
  third = ahead(w, 2, _NONE)
  three, four = _dense((two_u << np.uint64(32)) | ahead(two_u, 2, np.uint64(two.max() + 1)),
                       lambda s, o: high(s, o) | (third[o[1:]] != third[o[:-1]]), whole)
  grams = np.stack([one, two, three, four])
  offset = 0
  for k in range(NGRAM):
    size = int(grams[k].max()) + 1
    grams[k] = np.where(left > k, grams[k] + offset, -1)
    offset += size
  return grams, offset


def _words(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """ROUGE token ids and lengths (``split(" ")``), BLEU/CIDEr word ids and lengths
  (``split()``) of ``texts``, ids from one dictionary."""
  vocab: dict[str, int] = {}
  tok, tok_len = _ids([t.split(" ") for t in texts], vocab)
  owner = np.repeat(np.arange(len(texts)), tok_len)
  # split() = split(" ") less empty tokens, except where other whitespace (all of it is
  # unprintable, e.g. the no-break space inside PTB's "5\xa01/2") splits tokens further
  odd = np.flatnonzero(~np.fromiter(map(str.isprintable, texts), bool, len(texts)))
  odd_ids, odd_len = _ids([texts[i].split() for i in odd.tolist()], vocab, len(tok))
  is_odd = np.zeros(len(texts), bool)
  is_odd[odd] = True
  keep = (tok != vocab.get("", -1)) & ~is_odd[owner]
  word_owner = np.concatenate([owner[keep], np.repeat(odd, odd_len)])
  order = np.argsort(word_owner, kind="stable")
  word = np.concatenate([tok[keep], odd_ids])[order]
  return tok, tok_len, word, np.bincount(word_owner, minlength=len(texts))


def _rows(values: np.ndarray, lengths: np.ndarray, shape: tuple[int, ...], fill: int
          ) -> np.ndarray:
  """Sequences laid out one per row from the left, padded with ``fill``: ``values`` [..., M]
  are the sequences' elements in order, ``lengths`` [R] theirs."""
  out = np.full(shape, fill, np.int32)
  inside = np.arange(shape[-1]) < lengths[:, None]
  if values.ndim == 1:
    out[:len(lengths)][inside] = values
  else:
    for k in range(len(values)):
      out[:len(lengths), k][inside] = values[k]
  return out


def encode(refs: Sequence[str], hyps: Sequence[str], ids: Sequence | None = None
           ) -> Encoded:
  """Integer chunks of (reference, candidate) pairs for ``text_kernels``; ``ids`` name the
  samples in the message of a refused caption (default: their index)."""
  if len(refs) != len(hyps):
    raise ValueError(f"caption metrics: {len(refs)} references but {len(hyps)} candidates")
  n = len(refs)
  tok, tok_len, word, word_len = _words(list(hyps) + list(refs))   # candidates, then refs
  longest = np.maximum(np.maximum(word_len[:n], word_len[n:]),
                       np.maximum(tok_len[:n], tok_len[n:]))
  if n and longest.max() > MAX_WORDS:
    s = int(np.argmax(longest))
    side = "reference" if max(word_len[n + s], tok_len[n + s]) == longest[s] else "candidate"
    raise BadInput(f"sample {(ids[s] if ids is not None else s)!r}: its {side} has "
                   f"{longest[s]} words, more than the {MAX_WORDS} the caption metrics score")
  grams, n_grams = _gram_ids(word, word_len)
  size_of = buckets(longest)
  word_bucket = np.repeat(np.concatenate([size_of, size_of]), word_len)
  tok_bucket = np.repeat(np.concatenate([size_of, size_of]), tok_len)
  chunks = []
  for size in np.unique(size_of).tolist():
    members = np.flatnonzero(size_of == size)
    per = max(1, CELLS // (size * size))
    rows = -(-len(members) // per) * per
    sample = np.full(rows, -1, np.int64)
    sample[:len(members)] = members
    words_in, toks_in = word_bucket == size, tok_bucket == size   # members' sequences, in order
    n_words = np.count_nonzero(words_in[:np.sum(word_len[:n])])
    n_toks = np.count_nonzero(toks_in[:np.sum(tok_len[:n])])
    g, t = grams[:, words_in], tok[toks_in]
    gh = _rows(g[:, :n_words], word_len[members], (rows, NGRAM, size), -1)
    gr = _rows(g[:, n_words:], word_len[n + members], (rows, NGRAM, size), -1)
    th = _rows(t[:n_toks], tok_len[members], (rows, size), -1)
    tr = _rows(t[n_toks:], tok_len[n + members], (rows, size), -2)
    ln = np.zeros((rows, 4), np.int32)
    ln[:len(members)] = np.stack([word_len[members], word_len[n + members], tok_len[members],
                                  tok_len[n + members]], axis=1)
    for s in range(0, rows, per):
      cut = slice(s, s + per)
      chunks.append(Chunk(sample[cut], gh[cut], gr[cut], th[cut], tr[cut], ln[cut]))
  return Encoded(chunks, n_grams, n)
