"""BLEU, ROUGE-L and CIDEr(-D) arithmetic in JAX over integer arrays (``ngrams.encode``).

Every function is jitted and runs under a scoped ``jax.enable_x64`` (``text.py``): counts are
integers, scores float64, so the values are pycocoevalcap's to the last few ulps. Shapes are
static per (chunk size C, length bucket L, n-gram id space G): a scored set compiles one program
per bucket it uses, whatever its size.

Per chunk, with n-grams as dense ids ([C, 4, L], -1 past the end) and ROUGE tokens as word ids
([C, L]; candidate padding -1, reference padding -2 so that padding never matches):
- ``document_frequency``: each reference n-gram counted once per reference (its first
  occurrence), added into the [G] document frequencies of the scored set;
- ``chunk_scores``: clipped matches (each distinct candidate n-gram: min(count in candidate,
  count in reference)), BLEU per sample (pycocoevalcap's 1e-15 / 1e-9 terms, brevity penalty
  from the one reference's length), the LCS by Hyyro's bit-parallel recurrence (a ``lax.scan``
  over candidate positions, the reference positions as bits of uint64 words), ROUGE-L F
  (beta 1.2), CIDEr-D per sample (tf-idf vectors from counts and ``log N - log max(1, df)``,
  clipped overlap, norms, Gaussian length penalty with sigma 6 on bigram counts, x10); plus
  the running corpus totals;
- ``corpus_scores``: corpus BLEU from the summed counts and lengths, mean ROUGE-L and CIDEr.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

NGRAM = 4
BLEU_TINY, BLEU_SMALL = 1e-15, 1e-9
ROUGE_BETA = 1.2
CIDER_SIGMA = 6.0
TOTALS = 2 * NGRAM + 4   # correct[4], guess[4], candidate words, reference words, ROUGE, CIDEr


def _pair_counts(a: jax.Array, b: jax.Array) -> jax.Array:
  """For each entry of ``a`` [..., L]: how many entries of ``b`` [..., M] equal it."""
  return jnp.sum(a[..., :, None] == b[..., None, :], axis=-1, dtype=jnp.int32)


def _counts_and_first(g: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Count of each n-gram within its own sequence, and whether an entry is its first
  occurrence (a valid entry with no equal one before it). ``g``: [C, 4, L] ids, -1 invalid."""
  eq = g[..., :, None] == g[..., None, :]
  length = g.shape[-1]
  before = jnp.arange(length)[None, :] < jnp.arange(length)[:, None]   # [i, j]: j < i
  first = (g >= 0) & ~jnp.any(eq & before, axis=-1)
  return jnp.sum(eq, axis=-1, dtype=jnp.int32), first


@functools.partial(jax.jit, donate_argnums=0)
def document_frequency(df: jax.Array, grams_r: jax.Array) -> jax.Array:
  """``df`` [G] plus, per reference n-gram id, the number of references of the chunk that
  contain it."""
  _, first = _counts_and_first(grams_r)
  where = jnp.where(first, grams_r, df.shape[0])       # out of range: dropped
  return df.at[where.reshape(-1)].add(1, mode="drop")


def _lcs(tokens_h: jax.Array, tokens_r: jax.Array, len_r: jax.Array) -> jax.Array:
  """LCS length of each (candidate, reference) token row pair [C, L] (Hyyro 2004): V holds
  one bit per reference position; each candidate token updates it with V = (V + U) | (V - U),
  U = V & match mask, the addition carried across 64-bit words."""
  c, length = tokens_r.shape
  words = -(-length // 64)
  eq = tokens_h[:, :, None] == tokens_r[:, None, :]                   # [C, Lh, Lr]
  eq = jnp.pad(eq, ((0, 0), (0, 0), (0, words * 64 - length)))
  bit = jnp.left_shift(jnp.uint64(1), jnp.arange(64, dtype=jnp.uint64))
  masks = jnp.sum(jnp.where(eq.reshape(c, -1, words, 64), bit, jnp.uint64(0)), axis=-1,
                  dtype=jnp.uint64)                                      # [C, Lh, W]
  n_bits = jnp.clip(len_r[:, None] - 64 * jnp.arange(words)[None, :], 0, 64)
  ones = jnp.uint64(2 ** 64 - 1)
  full = jnp.where(n_bits == 64, ones,
                   jnp.left_shift(jnp.uint64(1), n_bits.astype(jnp.uint64)) - jnp.uint64(1))

  def step(v, mask):
    u = v & mask
    carry = jnp.zeros((c,), jnp.uint64)
    total = []
    for w in range(words):                        # v + u, word by word with the carry
      s = v[:, w] + u[:, w]
      out = s + carry
      carry = ((s < v[:, w]) | (out < s)).astype(jnp.uint64)
      total.append(out)
    v = (jnp.stack(total, axis=1) | (v & ~u)) & full    # v - u = v & ~u, as u is within v
    return v, None

  v, _ = lax.scan(step, full, jnp.swapaxes(masks, 0, 1))
  zeros = jnp.sum(lax.population_count(v), axis=1, dtype=jnp.int32)
  return len_r - zeros


def _bleu(correct: jax.Array, guess: jax.Array, len_h: jax.Array, len_r: jax.Array
          ) -> jax.Array:
  """pycocoevalcap's BLEU-1..4 [..., 4] from clipped matches and guesses [..., 4] and lengths."""
  ratio = (correct + BLEU_TINY) / (guess + BLEU_SMALL)
  prod = [ratio[..., 0]]
  for k in range(1, NGRAM):                     # the running product, in pycocoevalcap's order
    prod.append(prod[-1] * ratio[..., k])
  scores = jnp.stack([p ** (1.0 / (k + 1)) for k, p in enumerate(prod)], axis=-1)
  length_ratio = (len_h + BLEU_TINY) / (len_r + BLEU_SMALL)
  brevity = jnp.where(length_ratio < 1, jnp.exp(1 - 1 / length_ratio), 1.0)
  return scores * brevity[..., None]


@jax.jit
def inverse_document_frequency(df: jax.Array, n: jax.Array) -> jax.Array:
  """pycocoevalcap's idf [G]: log(N) - log(max(1, df)) for N references."""
  return jnp.log(n) - jnp.log(jnp.maximum(1.0, df.astype(jnp.float64)))


@jax.jit
def chunk_scores(grams_h: jax.Array, grams_r: jax.Array, tokens_h: jax.Array,
                 tokens_r: jax.Array, lengths: jax.Array, idf: jax.Array,
                 totals: jax.Array) -> tuple[jax.Array, ...]:
  """Per-sample BLEU [C, 4], ROUGE-L [C] and CIDEr [C] of one chunk, and ``totals`` [12]
  plus the chunk's (see ``TOTALS``). ``lengths`` [C, 4]: candidate and reference words (BLEU,
  CIDEr), candidate and reference tokens (ROUGE-L; 0 marks a padding row)."""
  len_h, len_r, tok_h, tok_r = (lengths[:, k] for k in range(4))
  cnt_h, first_h = _counts_and_first(grams_h)
  cnt_r, first_r = _counts_and_first(grams_r)
  cnt_rh = _pair_counts(grams_h, grams_r)            # reference count of each candidate n-gram
  correct = jnp.sum(jnp.where(first_h, jnp.minimum(cnt_h, cnt_rh), 0), axis=-1)   # [C, 4]
  guess = jnp.maximum(len_h[:, None] - jnp.arange(NGRAM), 0)
  bleu = _bleu(correct, guess, len_h, len_r)
  # CIDEr-D
  idf_h = idf[jnp.maximum(grams_h, 0)]
  vec_h = cnt_h * idf_h
  vec_rh = cnt_rh * idf_h                            # the reference's value of that n-gram
  vec_r = cnt_r * idf[jnp.maximum(grams_r, 0)]
  norm_h = jnp.sqrt(jnp.sum(jnp.where(first_h, vec_h ** 2, 0.0), axis=-1))
  norm_r = jnp.sqrt(jnp.sum(jnp.where(first_r, vec_r ** 2, 0.0), axis=-1))
  overlap = jnp.sum(jnp.where(first_h, jnp.minimum(vec_h, vec_rh) * vec_rh, 0.0), axis=-1)
  nonzero = (norm_h != 0) & (norm_r != 0)
  val = jnp.where(nonzero, overlap / jnp.where(nonzero, norm_h * norm_r, 1.0), overlap)
  delta = (jnp.maximum(len_h - 1, 0) - jnp.maximum(len_r - 1, 0)).astype(jnp.float64)
  val = val * jnp.power(np.e, -(delta ** 2) / (2 * CIDER_SIGMA ** 2))[:, None]
  cider = (((val[:, 0] + val[:, 1]) + val[:, 2]) + val[:, 3]) / NGRAM * 10.0
  # ROUGE-L
  lcs = _lcs(tokens_h, tokens_r, tok_r).astype(jnp.float64)
  real = tok_h > 0
  prec = lcs / jnp.where(real, tok_h, 1)
  rec = lcs / jnp.where(real, tok_r, 1)
  beta2 = ROUGE_BETA ** 2
  ok = (prec != 0) & (rec != 0)
  rouge = jnp.where(ok, ((1 + beta2) * prec * rec) / jnp.where(ok, rec + beta2 * prec, 1.0),
                    0.0)
  part = jnp.concatenate([
    jnp.sum(correct, axis=0).astype(jnp.float64), jnp.sum(guess, axis=0).astype(jnp.float64),
    jnp.stack([jnp.sum(len_h), jnp.sum(len_r)]).astype(jnp.float64),
    jnp.stack([jnp.sum(rouge), jnp.sum(cider)])])
  return bleu, rouge, cider, totals + part


@jax.jit
def corpus_scores(totals: jax.Array, n: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Corpus BLEU-1..4 [4], mean ROUGE-L and mean CIDEr of a scored set from its ``totals``."""
  correct, guess = totals[:NGRAM], totals[NGRAM:2 * NGRAM]
  len_h, len_r = totals[2 * NGRAM], totals[2 * NGRAM + 1]
  return (_bleu(correct, guess, len_h, len_r), totals[2 * NGRAM + 2] / n,
          totals[2 * NGRAM + 3] / n)
