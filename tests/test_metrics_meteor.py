"""METEOR's fast paths against their reference code (no Java): the per-token normaliser, the
stemmer's shortcut, the indexed paraphrase filter, the compiled aligner (whole segments) and
the vectorised aggregation."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bird_jax.metrics import meteor as M
from bird_jax.metrics import meteor_data, meteor_native
from bird_jax.metrics.meteor_normalize import TokenCache, normalize, normalized_words, tokens_of
from bird_jax.metrics.ptb_tokenize import tokenize_captions
from bird_jax_testing.captions import corpus

# Characters every rewrite of the normaliser reacts to, plus words that trigger its rules.
_PIECES = list("aAbxyz09.,'`\u2018\u2019\u201c\u201d\"-\u2013()<>/&;:?!$%\u00e9\u00b5\u03a3 \t") + [
  "DOTMULTI", "..", "...", "U.S.", "Mr.", "No.", "n't", "''", "--", "e.g.", "12,34", " ", "  ",
  "\x85", "\u2028", "\u1680", "\u200b", "\u00a0", "\x1c"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=16))
def test_per_token_normaliser_equals_whole_line(pieces):
  line = "".join(pieces)
  assert normalized_words(line, TokenCache()) == tokens_of(normalize(line))


_TOKENS = ["no.", "No.", "5", "12,34", "inc.", "Inc.", "etc.", "u.s.", "e.g.", "a", "B", "x.", "..",
           "...", "DOTMULTI.", "mr.", "'s", "n't", "isn't", ",", "'", "``", "-lrb-", "x-ray", "a.b",
           "Σ.", "σ", "fig.", "1.", "(", "<box>", "\u2019", "\u201c", "\u2013", "--", "-", ""]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_TOKENS), max_size=12))
def test_per_token_normaliser_on_token_lines(tokens):
  cache = TokenCache()
  for line in (" ".join(tokens), "  ".join(tokens), " ".join(reversed(tokens))):
    assert normalized_words(line, cache) == tokens_of(normalize(line))


def test_per_token_normaliser_on_captions():
  _, refs, hyps = corpus(400, seed=5)
  cache = TokenCache()
  for t in refs + hyps + tokenize_captions(refs) + tokenize_captions(hyps):
    assert normalized_words(t, cache) == tokens_of(normalize(t)), t
  assert normalized_words("the U.S. lungs , isn't it ?", cache) == \
      ["the", "us", "lungs", ",", "isn", "'t", "it", "?"]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789,.-/%<>()_+=:;\"\u00e9\u00b5\u0441\u03a3 ?!#@&*[]{}",
               max_size=12))
def test_stemmer_leaves_words_without_letters(word):
  from snowballstemmer.english_stemmer import EnglishStemmer
  assert meteor_data.Stemmer()(word) == EnglishStemmer().stemWord(word) == word


def test_synsets_equal_their_definition():
  from bird_jax.metrics.meteor_match import _morph
  syn = meteor_data.synonyms()
  res = M.Resources()
  rng = random.Random(2)
  words = rng.sample(sorted(syn.raw), 3000) + rng.sample(sorted(syn.word_to_bases), 500)
  words += [w + rng.choice(["s", "es", "ed", "ing", "er", "est", "ful", "x", "1", ",5", "ss"])
            for w in words[:2000]] + ["523,497", "12", "a", "", "ab", "abc", "glasses"]
  for w in words:
    bases = syn.word_to_bases.get(w)
    want = syn.synsets(w) | (frozenset().union(*(syn.synsets(b) for b in bases))
                             if bases is not None else syn.synsets(_morph(w, syn)))
    assert res.synsets(w) == want, w
  assert res.synsets("large") & res.synsets("big")


def test_indexed_paraphrase_filter_equals_full_scan():
  a = meteor_data._paraphrase_arrays()
  words = a["words"]
  rng = random.Random(0)
  vocab = {w.decode() for w in rng.sample(words[:3000], 150) + rng.sample(words, 600)}
  got = meteor_data.paraphrases_for(vocab)
  known = np.zeros(len(words) + 1, bool)
  known[[a["index"][w.encode()] for w in vocab]] = True

  def all_known(ids, off):
    csum = np.concatenate([[0], np.cumsum(known[ids], dtype=np.int64)])
    return csum[off[1:]] - csum[off[:-1]] == np.diff(off)

  keep = np.flatnonzero(all_known(a["ref_ids"], a["ref_off"]) &
                        all_known(a["para_ids"], a["para_off"]))
  assert len(keep) > 50
  def decode(ids, off, k):
    return tuple(words[t].decode() for t in ids[off[k]:off[k + 1]])

  assert got.refs == [decode(a["ref_ids"], a["ref_off"], k) for k in keep]
  assert got.paras == [decode(a["para_ids"], a["para_off"], k) for k in keep]


def _segments() -> list[tuple[str, str]]:
  """(reference, hypothesis) pairs: raw and tokenized synthetic captions, word soups over
  words the paraphrase table knows (multi-word matches), segments longer than 64 words,
  empty and identical segments."""
  _, refs, hyps = corpus(300, seed=9)
  pairs = list(zip(refs, hyps)) + list(zip(tokenize_captions(refs), tokenize_captions(hyps)))
  rng = random.Random(1)
  soup = ("the of a in is are was it this that on at to for with as by an be not no its "
          "large big small little lesion lesions mass masses located situated shows showed "
          "reveals left right side upper lower part region area image seen visible can "
          "may normal abnormal tumor tumour kidney liver in the of the there is it is").split()
  for _ in range(120):
    pairs.append((" ".join(rng.choice(soup) for _ in range(rng.randint(0, 30))),
                  " ".join(rng.choice(soup) for _ in range(rng.randint(0, 30)))))
  long_ref = " ".join(rng.choice(soup) for _ in range(90))
  pairs += [(long_ref, " ".join(rng.sample(long_ref.split(), 70))), ("", ""), ("", "a lesion"),
            ("a small lesion", ""), ("the liver is big", "the liver is big"),
            ("the the the", "the the"), ("big big large", "large big")]
  return [(r, M.clean_hypothesis(h)) for r, h in pairs]


@pytest.fixture(scope="module")
def segments():
  pairs = _segments()
  cache = TokenCache()
  words = {t: normalized_words(t, cache) for p in pairs for t in p}
  res = M.Resources({w for ws in words.values() for w in ws})
  return pairs, words, res


def test_compiled_aligner_equals_python(segments):
  pairs, words, res = segments
  assert meteor_native.library() is not None, "no C compiler: METEOR would run in pure Python"
  assert len(res.paras) > 100
  native = M.pair_stats(pairs, words, res, native=True)
  python = M.pair_stats(pairs, words, res, native=False)
  assert native.shape == (len(pairs), M.STATS_SIZE)
  np.testing.assert_array_equal(native, python)
  assert native[:, 16:20].sum() > 20                 # paraphrase matches were exercised
  assert native[:, 8:12].sum() > 20 and native[:, 12:16].sum() > 20   # stem and synonym


def test_batch_statistics_equal_segment_statistics(segments):
  pairs, _, res = segments
  refs, hyps = [r for r, _ in pairs], [h for _, h in pairs]
  table = M.segment_stats_array(refs, hyps, res)
  for k in range(0, len(pairs), 7):
    assert table[k].tolist() == M.segment_stats(hyps[k], refs[k], res).to_list()


def test_aggregate_array_equals_aggregate(segments):
  pairs, words, res = segments
  table = M.pair_stats(pairs, words, res)
  stats = [M.Stats.from_list(r) for r in table.tolist()]
  assert any(s.perfect() for s in stats)              # perfect segments' chunks are skipped
  assert M.aggregate_array(table).to_list() == M.aggregate(stats).to_list()


def test_a_missing_compiler_is_said_once_with_its_cost(tmp_path, monkeypatch):
  monkeypatch.setenv("BIRD_JAX_CACHE", str(tmp_path))
  monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
  meteor_native.library.cache_clear()
  try:
    with pytest.warns(RuntimeWarning, match=r"compiled aligner is unavailable: .*no-such-cc could "
                                            r"not build it.*same scores with METEOR about 12x"):
      assert meteor_native.library() is None
    monkeypatch.setenv("BIRD_JAX_NO_NATIVE", "1")  # chosen on purpose: no warning
    meteor_native.library.cache_clear()
    with warnings.catch_warnings():
      warnings.simplefilter("error")
      assert meteor_native.library() is None
  finally:
    meteor_native.library.cache_clear()


def test_a_corrupt_or_stale_cached_library_is_rebuilt_never_loaded(tmp_path, monkeypatch):
  import hashlib

  monkeypatch.setenv("BIRD_JAX_CACHE", str(tmp_path))
  monkeypatch.delenv("BIRD_JAX_NO_NATIVE", raising=False)
  loaded = []
  load = meteor_native._load
  monkeypatch.setattr(meteor_native, "_load", lambda data, folder: loaded.append(data) or
                      load(data, folder))
  meteor_native.library.cache_clear()
  try:
    assert meteor_native.library() is not None, "no C compiler: METEOR would run in pure Python"
    [so] = tmp_path.glob("meteor_align_*.so")
    digest = so.with_name(so.name + ".sha256")
    built = so.read_bytes()
    assert digest.read_text() == hashlib.sha256(built).hexdigest() and loaded == [built]
    flipped = built[:-1] + bytes([built[-1] ^ 1])  # still a loadable library, not the one built
    for corrupt in (lambda: so.write_bytes(b"\x7fELF not the aligner"),
                   lambda: so.write_bytes(flipped),
                   lambda: digest.unlink(),  # a cache from before digests: stale
                   lambda: digest.write_text(hashlib.sha256(b"other").hexdigest())):
      corrupt()
      meteor_native.library.cache_clear()
      with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert meteor_native.library() is not None
      now = so.read_bytes()
      assert digest.read_text() == hashlib.sha256(now).hexdigest() and loaded[-1] == now
    assert not [d for d in loaded if d in (b"\x7fELF not the aligner", flipped)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([so.name, digest.name])
  finally:
    meteor_native.library.cache_clear()
