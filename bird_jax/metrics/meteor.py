"""METEOR 1.5 (English, ``-norm``), as pycocoevalcap runs it, in Python.

pycocoevalcap starts ``meteor-1.5.jar - - -stdio -l en -norm`` and, per image, sends
``SCORE ||| reference ||| hypothesis``, collects the sufficient statistics and finally sends
``EVAL`` with all of them: the corpus score is computed from the summed statistics, not as a
mean of segment scores. This module reproduces each step of the jar:

- normalisation (Moses-style tokenisation, dots dropped from acronyms, dashes between words
  split, contractions split, nonbreaking prefixes) and lower-casing;
- candidate matches by four modules in order: exact, stem (Snowball), synonym (WordNet synsets
  plus base forms from the exception list or suffix rules), paraphrase (phrase table); words are
  compared by Java String.hashCode like the jar;
- the aligner: unambiguous one-to-one matches are fixed, the rest is resolved by a beam search
  (beam 40) ranked by weighted match count (integer arithmetic, weights 1/.5/.5/.5), then chunks,
  then distance, including the jar's quirks (truncated integer sums, distance added to the
  parent path);
- statistics and score with the English ranking-task parameters alpha 0.85, beta 0.20,
  gamma 0.60, delta 0.75 and module weights 1.0 / 0.6 / 0.8 / 0.6.
``meteor_java`` runs the official jar instead, for exact audits.
"""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
from collections.abc import Sequence

from bird_jax.metrics import meteor_data, meteor_native

ALPHA, BETA, GAMMA, DELTA = 0.85, 0.20, 0.60, 0.75
MODULE_WEIGHTS = (1.0, 0.6, 0.8, 0.6)      # scoring: exact, stem, synonym, paraphrase
ALIGN_WEIGHTS = (1.0, 0.5, 0.5, 0.5)       # ranking partial alignments
BEAM_SIZE = 40

# --- normaliser ----------------------------------------------------------------------------
_ALPHA = "A-Za-z\u0160\u017d\u0161\u017e\u0178\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u017e" \
         "\u0400-\u04ff\u0500-\u0527\ua640-\ua66e\ua67e-\ua697\u1d00-\u1d7f"
_ALNUM = "0-9" + _ALPHA
_JAVA_SPACE = " \t\n\x0b\x0c\r"
_SEP_OTHER = re.compile(f"([^{_ALNUM}{_JAVA_SPACE}.'`,\\-\u2018\u2019])")
_NEEDS_SEP = _SEP_OTHER
_MULTI_DOT = re.compile(r"\.([.]+)")
_MULTI_DOT2 = re.compile(r"DOTMULTI\.([^.])")
_COMMA = (re.compile(r"([^0-9]),([^0-9])"), re.compile(r"([0-9]),([^0-9])"),
          re.compile(r"([^0-9]),([0-9])"))
_QUOTE = re.compile("([`\u2018\u2019])")
_QUOTE2 = re.compile("([\u201c\u201d]|'')")
_RM_DASH = re.compile(f"([{_ALNUM}.])-([{_ALNUM}])")
_CONT = (
  (re.compile(f"([^{_ALPHA}])'([^{_ALPHA}])"), r"\1 ' \2"),
  (re.compile(f"([^{_ALPHA}0-9])'([{_ALPHA}])"), r"\1 ' \2"),
  (re.compile(f"([{_ALPHA}])'([^{_ALPHA}])"), r"\1 ' \2"),
  (re.compile(f"([{_ALPHA}])'([{_ALPHA}])"), r"\1 '\2"),
  (re.compile("([0-9])'(s)"), r"\1 '\2"))
_NBP_LETTER = re.compile(f"[{_ALPHA}]")
_WHITE = re.compile("[ \u2000-\u200a\u202f\u205f\u3000\u00a0]+")
_TOKEN_SPLIT = re.compile("[ \t\n\r\x0c]+")


def _java_trim(s: str) -> str:
  start, end = 0, len(s)
  while start < end and s[start] <= " ":
    start += 1
  while end > start and s[end - 1] <= " ":
    end -= 1
  return s[start:end]


def tokens_of(line: str) -> list[str]:
  """Java StringTokenizer split (space, tab, newline, carriage return, form feed)."""
  return [t for t in _TOKEN_SPLIT.split(line) if t]


def normalize(line: str) -> str:
  """METEOR's English normaliser with punctuation kept (``-norm``), then lower-cased.
  (Each rewrite only runs when the characters it needs occur; the result is the same.)"""
  s = " " + line + " "
  if _NEEDS_SEP.search(s):
    s = _SEP_OTHER.sub(r" \1 ", s)
  if ".." in s or "DOTMULTI" in s:
    s = _MULTI_DOT.sub(r" DOTMULTI\1", s)
    while "DOTMULTI." in s:
      s = _MULTI_DOT2.sub(r"DOTDOTMULTI \1", s)
      s = s.replace("DOTMULTI.", "DOTDOTMULTI")
  if "," in s:
    for pattern in _COMMA:
      s = pattern.sub(r"\1 , \2", s)
  if "`" in s or "\u2018" in s or "\u2019" in s:
    s = _QUOTE.sub("'", s)
  if "''" in s or "\u201c" in s or "\u201d" in s:
    s = _QUOTE2.sub(' " ', s)
  if "\u2013" in s or "-" in s:
    s = s.replace("\u2013", "-").replace("--", "-")
    s = _RM_DASH.sub(r"\1 \2", s)
  if "'" in s:
    for pattern, repl in _CONT:
      s = pattern.sub(repl, s)
  words = tokens_of(s)
  nbp = meteor_data.nonbreaking_prefixes()
  out = []
  for i, w in enumerate(words):
    if len(w) > 1 and w.endswith("."):
      pre = w[:-1]
      kind = nbp.get(pre)
      nxt = words[i + 1] if i + 1 < len(words) else None
      if "." in pre and _NBP_LETTER.search(pre):
        out.append(w.replace(".", ""))
      elif kind == 1 or (nxt is not None and "a" <= nxt[0] <= "z"):
        out.append(w)
      elif kind == 2 and nxt is not None and "0" <= nxt[0] <= "9":
        out.append(w)
      else:
        out.append(pre + " .")
    else:
      out.append(w)
    out.append(" ")
  s = "".join(out)
  while "DOTDOTMULTI" in s:
    s = s.replace("DOTDOTMULTI", "DOTMULTI.")
  s = s.replace("DOTMULTI", ".")
  return _java_trim(_WHITE.sub(" ", s)).lower()


# --- matching ------------------------------------------------------------------------------
# A match: (start, length) in the reference (line 2), (match_start, match_length) in the
# hypothesis (line 1), and the module (0 exact, 1 stem, 2 synonym, 3 paraphrase).
Match = tuple[int, int, int, int, int]


class Resources:
  """Stemmer, synonym dictionary and (corpus-filtered) paraphrase trie, with word caches."""

  def __init__(self, vocabulary: set[str] | None = None):
    self.stem = meteor_data.Stemmer()
    self.syn = meteor_data.synonyms()
    self.function_words = meteor_data.function_words()
    self._hash: dict[str, int] = {}
    self._synsets: dict[str, frozenset[int]] = {}
    self.syn_pair: dict[tuple[str, str], bool] = {}
    self.trie: dict = {}
    self.paras: list[tuple[str, ...]] = []
    if vocabulary is not None:
      self.set_vocabulary(vocabulary)

  def set_vocabulary(self, vocabulary: set[str]) -> None:
    """Loads the paraphrase entries that can match within ``vocabulary``."""
    table = meteor_data.paraphrases_for(vocabulary)
    trie: dict = {}   # word -> (children, indices of the entries whose phrase ends here)
    for k, ref in enumerate(table.refs):
      if not ref:
        continue
      node = trie
      for w in ref[:-1]:
        node = node.setdefault(w, ({}, []))[0]
      node.setdefault(ref[-1], ({}, []))[1].append(k)
    self.trie, self.paras = trie, table.paras

  def hash(self, word: str) -> int:
    h = self._hash.get(word)
    if h is None:
      h = self._hash[word] = meteor_data.java_hash(word)
    return h

  def synsets(self, word: str) -> frozenset[int]:
    out = self._synsets.get(word)
    if out is None:
      w2s = self.syn.word_to_synsets
      own = w2s.get(word, frozenset())
      bases = self.syn.word_to_bases.get(word)
      if bases is not None:
        stem_sets = frozenset().union(*(w2s.get(b, frozenset()) for b in bases))
      else:
        stem_sets = w2s.get(_morph(word, w2s), frozenset())
      out = self._synsets[word] = own | stem_sets
    return out

  def reference_paths(self, words: Sequence[str], start: int) -> list[tuple[int, int]]:
    """(phrase length, entry index) of every table phrase that starts at ``words[start]``."""
    out = []
    node = self.trie
    for i in range(len(words) - start):
      nxt = node.get(words[start + i])
      if nxt is None:
        break
      node_children, emit = nxt
      out.extend((i + 1, k) for k in emit)
      node = node_children
    return out


_SUFFIX = ("s", "ses", "xes", "zes", "ches", "shes", "men", "ies", "s", "ies", "es", "es", "ed",
           "ed", "ing", "ing", "er", "est", "er", "est")
_ADD = ("", "s", "x", "z", "ch", "sh", "man", "y", "", "y", "e", "", "e", "", "e", "", "", "",
        "e", "e")


def _morph(word: str, w2s: dict) -> str:
  """WordNet-style base form used by METEOR's synonym module (its suffix rules, verbatim)."""
  tail = "ful" if word.endswith("ful") else ""
  if word.endswith("ss") or len(word) <= 2:
    return word
  for suf, add in zip(_SUFFIX, _ADD):
    if word.endswith(suf):
      base = word[:len(word) - len(suf)] + add
      if base in w2s:
        return base + tail
  return ""


def candidate_matches(words1: list[str], words2: list[str], res: Resources
                      ) -> tuple[list[list[Match]], list[int], list[int], bool]:
  """All module matches per reference position, plus coverage counts per word."""
  n1, n2 = len(words1), len(words2)
  h1 = [res.hash(w) for w in words1]
  h2 = [res.hash(w) for w in words2]
  matches: list[list[Match]] = [[] for _ in range(n2)]
  cov1, cov2 = [0] * n1, [0] * n2
  identical = h1 == h2
  by_word: dict[int, list[int]] = {}
  for i, h in enumerate(h1):
    by_word.setdefault(h, []).append(i)
  for j in range(n2):
    for i in by_word.get(h2[j], ()):
      matches[j].append((j, 1, i, 1, 0))
      cov1[i] += 1
      cov2[j] += 1
  if identical:
    return matches, cov1, cov2, True
  by_stem: dict[int, list[int]] = {}
  for i, w in enumerate(words1):
    by_stem.setdefault(res.hash(res.stem(w)), []).append(i)
  for j, w in enumerate(words2):
    for i in by_stem.get(res.hash(res.stem(w)), ()):
      if h1[i] != h2[j]:
        matches[j].append((j, 1, i, 1, 1))
        cov1[i] += 1
        cov2[j] += 1
  pos1: dict[str, list[int]] = {}
  for i, w in enumerate(words1):
    pos1.setdefault(w, []).append(i)
  syn_pair = res.syn_pair
  for j, w2 in enumerate(words2):
    if not res.synsets(w2):
      continue
    hits = []
    for w1, where in pos1.items():
      key = (w1, w2)
      hit = syn_pair.get(key)
      if hit is None:
        hit = syn_pair[key] = not res.synsets(w1).isdisjoint(res.synsets(w2))
      if hit:
        hits.extend(where)
    for i in sorted(hits):
      if h1[i] != h2[j]:
        matches[j].append((j, 1, i, 1, 2))
        cov1[i] += 1
        cov2[j] += 1
  if res.trie:
    pos2: dict[str, list[int]] = {}
    for j, w in enumerate(words2):
      pos2.setdefault(w, []).append(j)
    for j in range(n2):
      for length, k in res.reference_paths(words2, j):
        para = res.paras[k]
        size = len(para)
        for i in (pos1.get(para[0], ()) if size else range(n1)):
          if tuple(words1[i:i + size]) == para:
            matches[j].append((j, length, i, size, 3))
            for t in range(size):
              cov1[i + t] += 1
            for t in range(length):
              cov2[j + t] += 1
    for i in range(n1):
      for length, k in res.reference_paths(words1, i):
        para = res.paras[k]
        size = len(para)
        for j in (pos2.get(para[0], ()) if size else range(n2)):
          if tuple(words2[j:j + size]) == para:
            matches[j].append((j, size, i, length, 3))
            for t in range(length):
              cov1[i + t] += 1
            for t in range(size):
              cov2[j + t] += 1
  return matches, cov1, cov2, False


# --- alignment -----------------------------------------------------------------------------
@dataclasses.dataclass
class Problem:
  """One segment's alignment search: candidate matches per reference position, the fixed
  (unambiguous) matches and the words they use as bit sets."""
  n1: int
  n2: int
  matches: list[list[Match]]
  fixed: list[Match | None]
  used1: int
  used2: int


def _resolve(problem: Problem) -> tuple:
  """The jar's left-to-right beam search over reference positions.

  A path is a tuple (-(matches1 + matches2), chunks, distance, order, idx, last_match_end,
  used1_bits, used2_bits, chosen): the first four fields make Python's tuple order the jar's
  stable sort. matches1/2 are ints in the jar, so a match adds floor(length x weight) to each.
  ``chosen`` is a linked list (match, rest) of the matches picked by the search. The parent
  path's distance grows with each child it spawns, as in the jar.
  """
  n2 = problem.n2
  fixed = problem.fixed
  cands = []
  for row in problem.matches:
    out = []
    for m in row:
      start, length, mstart, mlength, module = m
      w = ALIGN_WEIGHTS[module]
      out.append((int(mlength * w) + int(length * w), mstart, start + length, mstart + mlength,
                  ((1 << mlength) - 1) << mstart, ((1 << length) - 1) << start,
                  abs(start - mstart), m))
    cands.append(out)
  paths = [(0, 0, 0, 0, 0, -1, problem.used1, problem.used2, None)]
  for current in range(n2):
    paths.sort()
    nxt = []
    append = nxt.append
    bit = 1 << current
    order = 0
    row = cands[current]
    for (neg, chunks, dist, _, idx, last, u1, u2, chosen) in paths[:BEAM_SIZE]:
      if u2 & bit:
        if current < idx:
          append((neg, chunks, dist, order, idx, last, u1, u2, chosen))
          order += 1
        else:
          m = fixed[idx]
          if m is not None:
            start, length, mstart, mlength, module = m
            w = ALIGN_WEIGHTS[module]
            if last != -1 and mstart != last:
              chunks += 1
            append((neg - int(mlength * w) - int(length * w), chunks,
                    dist + abs(start - mstart), order, start + length, mstart + mlength, u1, u2,
                    chosen))
            order += 1
        continue
      for inc, mstart, new_idx, new_last, mask1, mask2, absd, m in row:
        if u2 & mask2 or u1 & mask1:
          continue
        append((neg - inc, chunks + 1 if last != -1 and mstart != last else chunks, dist,
                order, new_idx, new_last, u1 | mask1, u2 | mask2, (m, chosen)))
        order += 1
        dist += absd                       # the jar adds it to the parent path
      append((neg, chunks + 1 if last != -1 else chunks, dist, order, idx + 1, -1, u1, u2,
              chosen))
      order += 1
    if not nxt:
      nxt.append(paths[0])
    paths = nxt
  paths.sort()
  final = []
  for order, (neg, chunks, dist, _, idx, last, u1, u2, chosen) in enumerate(paths[:BEAM_SIZE]):
    final.append((neg, chunks + 1 if last != -1 else chunks, dist, order, idx, last, u1, u2,
                  chosen))
  final.sort()
  return final[0]


@dataclasses.dataclass
class Stats:
  """METEOR sufficient statistics of one segment (or a sum of segments)."""
  test_len: float = 0.0
  ref_len: float = 0.0
  test_func: float = 0.0
  ref_func: float = 0.0
  # per module: test content, ref content, test function, ref function matches
  stage: list[list[float]] = dataclasses.field(default_factory=lambda: [[0.0] * 4 for _ in range(4)])
  chunks: float = 0.0
  test_word_matches: float = 0.0
  ref_word_matches: float = 0.0

  def to_list(self) -> list[float]:
    out = [self.test_len, self.ref_len, self.test_func, self.ref_func]
    for row in self.stage:
      out.extend(row)
    return out + [self.chunks, self.test_word_matches, self.ref_word_matches]

  @classmethod
  def from_list(cls, v: Sequence[float]) -> "Stats":
    return cls(v[0], v[1], v[2], v[3], [list(v[4 + 4 * k:8 + 4 * k]) for k in range(4)],
               v[20], v[21], v[22])

  def to_string(self) -> str:
    """The jar's stats line (Java's Double.toString of whole numbers)."""
    return " ".join(repr(float(x)) for x in self.to_list())

  @property
  def test_total(self) -> float:
    return sum(r[0] + r[2] for r in self.stage)

  @property
  def ref_total(self) -> float:
    return sum(r[1] + r[3] for r in self.stage)

  def perfect(self) -> bool:
    return (self.test_total == self.test_len and self.ref_total == self.ref_len
            and self.chunks == 1)


def _div(a: float, b: float) -> float:
  """Java double division (inf / nan instead of exceptions)."""
  if b == 0:
    return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a)
  return a / b


def score_stats(st: Stats) -> float:
  """The jar's computeMetrics: Fmean with fragmentation penalty (0 when undefined)."""
  test_wlen = DELTA * (st.test_len - st.test_func) + (1.0 - DELTA) * st.test_func
  ref_wlen = DELTA * (st.ref_len - st.ref_func) + (1.0 - DELTA) * st.ref_func
  test_w = ref_w = 0.0
  for k, w in enumerate(MODULE_WEIGHTS):
    test_w += st.stage[k][0] * w * DELTA
  for k, w in enumerate(MODULE_WEIGHTS):
    ref_w += st.stage[k][1] * w * DELTA
  for k, w in enumerate(MODULE_WEIGHTS):
    test_w += st.stage[k][2] * w * (1.0 - DELTA)
  for k, w in enumerate(MODULE_WEIGHTS):
    ref_w += st.stage[k][3] * w * (1.0 - DELTA)
  precision = _div(test_w, test_wlen)
  recall = _div(ref_w, ref_wlen)
  fmean = _div(1.0, _div(1.0 - ALPHA, precision) + _div(ALPHA, recall))
  if st.perfect():
    frag = 0.0
  else:
    frag = _div(st.chunks, (st.test_word_matches + st.ref_word_matches) / 2)
  penalty = GAMMA * (math.nan if math.isnan(frag) else (math.inf if math.isinf(frag)
                                                          else frag ** BETA))
  score = fmean * (1.0 - penalty)
  return 0.0 if math.isnan(score) else max(score, 0.0)


def prepare(test: str, ref: str, res: Resources
            ) -> tuple[list[str], list[str], Problem]:
  """Normalised words and the alignment search problem of one segment."""
  words1 = tokens_of(normalize(test))
  words2 = tokens_of(normalize(ref))
  matches, cov1, cov2, _ = candidate_matches(words1, words2, res)
  n1, n2 = len(words1), len(words2)
  fixed: list[Match | None] = [None] * n2
  used1 = used2 = 0
  for j in range(n2):
    if len(matches[j]) == 1:
      m = matches[j][0]
      j0, length, i0, mlength, _ = m
      if all(cov2[j0 + t] == 1 for t in range(length)) and \
          all(cov1[i0 + t] == 1 for t in range(mlength)):
        fixed[j] = m
        used2 |= ((1 << length) - 1) << j0
        used1 |= ((1 << mlength) - 1) << i0
  return words1, words2, Problem(n1, n2, matches, fixed, used1, used2)


def search(problem: Problem, native: bool = True) -> list[Match | None]:
  """Final matches per reference position (the chosen ones plus the fixed ones), by the
  compiled search when available (``meteor_native``), else in Python."""
  if native:
    final = meteor_native.resolve(problem, BEAM_SIZE, ALIGN_WEIGHTS)
    if final is not None:
      return final
  best = _resolve(problem)
  final = problem.fixed[:]
  node = best[-1]
  while node is not None:
    final[node[0][0]] = node[0]
    node = node[1]
  return final


def segment_stats(test: str, ref: str, res: Resources) -> Stats:
  """Statistics of one hypothesis (``test``) against one reference, both normalised here."""
  words1, words2, problem = prepare(test, ref, res)
  return finish(words1, words2, search(problem), res)


def finish(words1: list[str], words2: list[str], final: list[Match | None], res: Resources
           ) -> Stats:
  """Statistics from the chosen alignment (function/content words per module, chunks)."""
  n1, n2 = len(words1), len(words2)
  fw = res.function_words
  func1 = [w in fw for w in words1]
  func2 = [w in fw for w in words2]
  st = Stats(float(n1), float(n2), float(sum(func1)), float(sum(func2)))
  for m in final:
    if m is None:
      continue
    j0, length, i0, mlength, module = m
    row = st.stage[module]
    for t in range(mlength):
      row[2 if func1[i0 + t] else 0] += 1
    for t in range(length):
      row[3 if func2[j0 + t] else 1] += 1
  chunks, idx, last_end = 0, 0, -1
  while idx < n2:
    m = final[idx]
    if m is None:
      if last_end != -1:
        chunks += 1
        last_end = -1
      idx += 1
    else:
      if last_end != -1 and m[2] != last_end:
        chunks += 1
      idx = m[0] + m[1]
      last_end = m[2] + m[3]
  if last_end != -1:
    chunks += 1
  st.chunks = float(chunks)
  st.test_word_matches = st.test_total
  st.ref_word_matches = st.ref_total
  return st


def aggregate(stats: Sequence[Stats]) -> Stats:
  """The jar's EVAL sum: chunks of perfectly matched segments are not added."""
  total = Stats()
  for st in stats:
    total.test_len += st.test_len
    total.ref_len += st.ref_len
    total.test_func += st.test_func
    total.ref_func += st.ref_func
    for k in range(4):
      for c in range(4):
        total.stage[k][c] += st.stage[k][c]
    if not st.perfect():
      total.chunks += st.chunks
    total.test_word_matches += st.test_word_matches
    total.ref_word_matches += st.ref_word_matches
  return total


def clean_hypothesis(hyp: str) -> str:
  """pycocoevalcap's edit of a hypothesis before sending it to the jar."""
  return hyp.replace("|||", "").replace("  ", " ")


def vocabulary(texts: Sequence[str]) -> set[str]:
  """Normalised words of ``texts`` (for filtering the paraphrase table)."""
  out: set[str] = set()
  for t in texts:
    out.update(tokens_of(normalize(t)))
  return out


_WORKER: dict[str, Resources] = {}


def _init_worker(vocab: set[str]) -> None:
  _WORKER["res"] = Resources(vocab)


def _stats_batch(pairs: Sequence[tuple[str, str]], res: Resources) -> list[Stats]:
  """Statistics of (reference, hypothesis) pairs."""
  return [segment_stats(h, r, res) for r, h in pairs]


def _worker_stats(pairs: list[tuple[str, str]]) -> list[Stats]:
  return _stats_batch(pairs, _WORKER["res"])


def segment_stats_many(refs: Sequence[str], hyps: Sequence[str], res: Resources | None = None,
                       workers: int = 1) -> list[Stats]:
  """Statistics of every (reference, hypothesis) pair; identical pairs are aligned once, and
  ``workers`` > 1 spreads the unique pairs over that many processes (spawned: JAX-safe)."""
  if len(refs) != len(hyps):
    raise ValueError(f"meteor: {len(refs)} references but {len(hyps)} hypotheses")
  hyps = [clean_hypothesis(h) for h in hyps]
  unique = list(dict.fromkeys(zip(refs, hyps)))
  if workers > 1 and len(unique) > 2000:
    import concurrent.futures
    import multiprocessing
    vocab = vocabulary([t for pair in unique for t in pair])
    chunks = [unique[k::workers * 4] for k in range(workers * 4)]
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
        initargs=(vocab,)) as pool:
      done = dict(zip(range(len(chunks)), pool.map(_worker_stats, chunks)))
    by_pair = {}
    for k, chunk in enumerate(chunks):
      by_pair.update(zip(chunk, done[k]))
  else:
    if res is None:
      res = Resources(vocabulary([t for pair in unique for t in pair]))
    by_pair = dict(zip(unique, _stats_batch(unique, res)))
  return [by_pair[pair] for pair in zip(refs, hyps)]


def meteor_score(refs: Sequence[str], hyps: Sequence[str], res: Resources | None = None,
                 workers: int = 1) -> tuple[float, list[float]]:
  """Corpus METEOR and per-segment scores, one reference per hypothesis (pycocoevalcap)."""
  stats = segment_stats_many(refs, hyps, res, workers)
  return score_stats(aggregate(stats)), [score_stats(st) for st in stats]


def meteor_java(refs: Sequence[str], hyps: Sequence[str], java: str = "java"
                ) -> tuple[float, list[float]]:
  """The official METEOR 1.5 jar run exactly as pycocoevalcap runs it (for audits)."""
  jar = meteor_data.meteor_jar()
  lines = [" ||| ".join(("SCORE", r, clean_hypothesis(h))) for r, h in zip(refs, hyps)]
  proc = subprocess.Popen([java, "-jar", "-Xmx2G", jar.name, "-", "-", "-stdio", "-l", "en",
                           "-norm"], cwd=jar.parent, stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  try:
    stats = []
    for line in lines:
      proc.stdin.write((line + "\n").encode())
      proc.stdin.flush()
      stats.append(proc.stdout.readline().decode().strip())
    proc.stdin.write(("EVAL ||| " + " ||| ".join(stats) + "\n").encode())
    proc.stdin.flush()
    scores = [float(proc.stdout.readline().strip()) for _ in stats]
    final = float(proc.stdout.readline().strip())
  finally:
    proc.stdin.close()
    proc.kill()
    proc.wait()
  return final, scores
