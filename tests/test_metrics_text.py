"""Caption metrics on hand-computed cases (no Java): BLEU, ROUGE-L, CIDEr, METEOR pieces,
the PTB tokenizer's rules and the per-modality protocol."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bird_jax.metrics import meteor as M
from bird_jax.metrics.meteor_data import java_hash
from bird_jax.metrics.ptb_tokenize import ptb_tokens, tokenize_captions
from bird_jax.metrics.text import bleu, caption_scores_by_modality, cider, rouge_l


def _lcs_dp(a, b):
  t = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
  for i in range(1, len(a) + 1):
    for j in range(1, len(b) + 1):
      t[i][j] = t[i - 1][j - 1] + 1 if a[i - 1] == b[j - 1] else max(t[i - 1][j], t[i][j - 1])
  return t[-1][-1]


def test_rouge_lcs_across_64_bit_words_equals_dynamic_programming():
  rng = random.Random(3)
  refs, hyps = [], []
  for n_ref in [1, 30, 63, 64, 65, 100, 127]:
    refs.append(" ".join(rng.choice("abcdef") for _ in range(n_ref)))
    hyps.append(" ".join(rng.choice("abcdefg") for _ in range(rng.randint(1, 120))))
  got = rouge_l(refs, hyps)[1]
  for r, h, score in zip(refs, hyps, got):
    lcs = _lcs_dp(r.split(" "), h.split(" "))
    p, rec = lcs / len(h.split(" ")), lcs / len(r.split(" "))
    assert score == pytest.approx((1 + 1.44) * p * rec / (rec + 1.44 * p) if lcs else 0.0,
                                  rel=1e-12)


def test_bleu_hand_computed():
  b, per = bleu(["a b c d"], ["a b c d"])
  assert b[3] == pytest.approx(1.0, abs=1e-8)
  b, per = bleu(["a b c d"], ["a b"])              # precision 1, brevity exp(1 - 4/2)
  assert b[0] == pytest.approx(math.exp(-1), rel=1e-8)
  assert b[1] == pytest.approx(math.exp(-1), rel=1e-8)
  assert per[0, 0] == pytest.approx(math.exp(-1), rel=1e-8)
  b, _ = bleu(["a b c d", "e f"], ["a x c d", "e f"])   # corpus sums: 1-grams 5/6, 2-grams 2/4
  assert b[0] == pytest.approx(5 / 6, rel=1e-8)
  assert b[1] == pytest.approx(math.sqrt(5 / 6 * 2 / 4), rel=1e-8)


def test_rouge_l_hand_computed():
  score, per = rouge_l(["a b c d"], ["a c e"])      # LCS 2, P 2/3, R 1/2
  p, r = 2 / 3, 1 / 2
  assert score == pytest.approx((1 + 1.44) * p * r / (r + 1.44 * p), rel=1e-12)
  assert rouge_l(["a b"], ["c d"])[0] == 0.0
  assert rouge_l([""], [""])[0] == 1.0              # pycocoevalcap: [''] vs [''] -> LCS 1


def test_cider_hand_computed():
  assert cider(["a b c"], ["a b c"])[0] == 0.0      # one sample: log(1) = 0 -> no weight
  refs = ["a b c d e", "f g h i j"]                 # disjoint: every idf = log 2
  score, per = cider(refs, refs)
  assert score == pytest.approx(10.0, rel=1e-12)
  score, _ = cider(refs, ["a b c d e", "f g h i"])  # one bigram shorter -> Gaussian penalty
  assert score < 10.0


def test_meteor_normaliser():
  assert M.normalize("The X-ray of U.S. lungs, isn't it?") == "the x ray of us lungs , isn 't it ?"
  assert M.normalize("-lrb- 12,34 -rrb-") == "-lrb- 12,34 -rrb-"


def test_meteor_identical_and_disjoint():
  res = M.Resources()
  assert M.score_stats(M.segment_stats("a small lesion", "a small lesion", res)) == 1.0
  assert M.score_stats(M.segment_stats("qqq zzz", "a small lesion", res)) == 0.0
  st_ = M.segment_stats("", "a small lesion", res)
  assert st_.test_len == 0 and M.score_stats(st_) == 0.0


def test_meteor_stem_and_synonym_matches():
  res = M.Resources()
  st_ = M.segment_stats("the lesions are", "the lesion is", res)
  assert st_.stage[0] == [0, 0, 1, 1]                      # "the": exact, function word
  assert st_.stage[1] == [1, 1, 0, 0]                      # lesions ~ lesion: stem
  assert st_.stage[2] == [0, 0, 1, 1]                      # are ~ is: synonym, function
  # a lone non-exact match with two candidates loses to skipping (the jar's int weights)
  assert M.segment_stats("lesions", "lesion", res).test_total == 0
  st_ = M.segment_stats("large", "big", res)               # WordNet synonyms (index 2)
  assert st_.stage[2][0] == 1


def test_java_hash():
  assert java_hash("hello") == 99162322 and java_hash("Aa") == java_hash("BB") == 2112


@pytest.mark.parametrize("text, tokens", [
  ("The <ref>left kidney</ref><box>(12,34),(56,78)</box>.",
   "the <ref> left kidney </ref> <box> -lrb- 12,34 -rrb- -lrb- 56,78 -rrb- </box>"),
  ("It isn't 3.5cm (approx.) -- about 50%...", "it is n't 3.5 cm -lrb- approx -rrb- about 50 %"),
  ('"Clear" e.g. U.S. x-ray; T1/T2', "clear e.g. u.s. x-ray t1/t2"),
])
def test_ptb_tokenizer_cases(text, tokens):
  # the leading word keeps "``" etc. out of the first-token position
  assert tokenize_captions(["x " + text])[0] == "x " + tokens


def test_ptb_line_breaks_are_sanitised():
  assert tokenize_captions(["a\rb", "c\u2028d", "e"]) == ["a b", "c d", "e"]


def test_ptb_tokens_line_breaks_tabs_and_digits():
  # "\r\n" is one line break for the lexer; tabs separate chunks; digits reuse cached chunks
  assert ptb_tokens("a \r\nb\tc.\nd 12,34\t(5,6)\n", {}) == \
      [["a"], ["b", "c."], ["d", "12,34", "-LRB-", "5,6", "-RRB-"], []]
  assert ptb_tokens("x\u2028y z \r\n\n", {}) == [["x"], ["y", "z"], [], []]
  assert ptb_tokens("Gonna  go\r\n\tcannot.", {}) == [["Gon", "na", "go"], ["can", "not", "."]]
  cache: dict = {}
  assert ptb_tokens("(12,34) (5,6) (12,34)", cache) == ptb_tokens("(12,34) (5,6) (12,34)", {})
  assert ptb_tokens("(98,76) 1/2 3/4 1/2", cache) == \
      [["-LRB-", "98,76", "-RRB-", "1/2", "3/4", "1/2"]]


_PTB_PIECES = [
  "etc.", "e.g.", "U.S.", "u.s.", "Mr.", "No.", "no.", "Inc.", "Jan.", "St.", "A.", "x.", "vs.",
  "al.", "Co.", "Ph.D.", "non-U.S.", "Ark.", "Gen.", "cf.", "Figs.", "Mass.", "a.k.a.", "3.5",
  "0.05", "3.5cm)", "(approx.", "p.m.", ".", "..", "...", "the", "a", "about", "x-ray", "a)",
  "i", "n't", "cannot", "gonna", "y'all", "a@b.com", "The", "About", "According", "He", "<ref>",
  "<b c>", "<", "5", "12", "(555)", "123-4567", "1/2", "(", ")", "'s", "''", '"', "&amp;", "-",
  "--", ",", ";", "?", "caf\u00e9", "\u00bd", " ", " ", "  ", "\n", "\t", "\r\n"]


@pytest.fixture(scope="module")
def ptb_cache():
  return {}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_PTB_PIECES), max_size=24))
def test_ptb_chunk_cache_equals_plain_lexer(ptb_cache, pieces):
  from bird_jax.metrics.ptb_tokenize import _lex
  text = " ".join(pieces) if len(pieces) % 2 else "".join(pieces)
  plain: list[list[str]] = [[]]
  _lex(text, 0, len(text), plain)
  assert ptb_tokens(text, ptb_cache) == plain       # cache shared by all examples


def test_ptb_cache_shared_across_streams():
  from bird_jax_testing.captions import corpus
  _, refs, hyps = corpus(300, seed=4)
  cache: dict = {}
  shared = [tokenize_captions(refs[k::3], cache) for k in range(3)]
  shared += [tokenize_captions(hyps[k::3], cache) for k in range(3)]
  alone = [tokenize_captions(refs[k::3]) for k in range(3)]
  alone += [tokenize_captions(hyps[k::3]) for k in range(3)]
  assert shared == alone and len(cache) > 20


def test_caption_scores_by_modality_rounds_and_averages():
  rng = random.Random(0)
  words = "the liver lesion is small large in left right kidney".split()
  refs = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(12)]
  hyps = [" ".join(rng.choice(words) for _ in range(7)) for _ in range(12)]
  images = [f"ct_{i}.png" for i in range(6)] + [f"mr_{i}.png" for i in range(5)] + ["x_0.png"]
  out = caption_scores_by_modality(images, refs, hyps, meteor="none")
  ct = out.per_modality["ct"]
  b, _ = bleu(tokenize_captions(refs[:6]), tokenize_captions(hyps[:6]))
  assert ct.bleu[3] == round(b[3], 6)
  assert out.per_modality["x"].cider == 0.0                 # one sample -> CIDEr 0
  assert out.per_modality["pet"] is None and out.counts["pet"] == 0
  bleu4 = [out.per_modality[m].bleu[3] for m in ("ct", "mr", "x")]
  assert out.mean["Bleu_4"] == pytest.approx(sum(bleu4) / 8, abs=1e-12)
  assert out.mean_present["Bleu_4"] == pytest.approx(sum(bleu4) / 3, abs=1e-12)
  assert out.mean["METEOR"] is None and out.mean["SPICE"] is None


def test_native_search_equals_python_search():
  from bird_jax.metrics import meteor_native
  from bird_jax_testing.captions import corpus
  assert meteor_native.library() is not None, "no C compiler: METEOR would run in pure Python"
  _, refs, hyps = corpus(150, seed=3)
  refs, hyps = tokenize_captions(refs), tokenize_captions(hyps)
  res = M.Resources(M.vocabulary(refs + hyps))
  for r, h in zip(refs, hyps):
    problem = M.prepare(M.clean_hypothesis(h), r, res)[2]
    assert M.search(problem, native=True) == M.search(problem, native=False)
