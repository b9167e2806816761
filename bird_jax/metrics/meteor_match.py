"""METEOR 1.5's matching modules: exact, Snowball stem, WordNet synonym, paraphrase.

Candidate matches are collected per reference position in the jar's order (module by module;
within a module reference position outer, hypothesis position inner), comparing words by Java
``String.hashCode`` like the jar; coverage counts per word decide which matches are
unambiguous.
"""

from __future__ import annotations

from collections.abc import Sequence

from bird_jax.metrics import meteor_data

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
    self._trie: dict | None = {}
    self.refs: list[tuple[str, ...]] = []
    self.paras: list[tuple[str, ...]] = []
    self.native: dict = {}             # compiled matcher's word table (meteor_native)
    if vocabulary is not None:
      self.set_vocabulary(vocabulary)

  def set_vocabulary(self, vocabulary: set[str]) -> None:
    """Loads the paraphrase entries that can match within ``vocabulary``."""
    table = meteor_data.paraphrases_for(vocabulary)
    self._trie, self.refs, self.paras = None, table.refs, table.paras
    self.native.pop("trie", None)

  @property
  def trie(self) -> dict:
    """The entries' phrases as a trie: word -> (children, indices of the entries whose phrase
    ends here); built when first used (the compiled aligner keeps its own)."""
    if self._trie is None:
      self._trie = {}
      for k, ref in enumerate(self.refs):
        if not ref:
          continue
        node = self._trie
        for w in ref[:-1]:
          node = node.setdefault(w, ({}, []))[0]
        node.setdefault(ref[-1], ({}, []))[1].append(k)
    return self._trie

  def hash(self, word: str) -> int:
    h = self._hash.get(word)
    if h is None:
      h = self._hash[word] = meteor_data.java_hash(word)
    return h

  def synsets(self, word: str) -> frozenset[int]:
    out = self._synsets.get(word)
    if out is None:
      syn = self.syn
      if (len(word) > 2 and word[-1] not in _SUFFIX_ENDS and word not in syn.raw
          and word not in syn.word_to_bases):       # no own sets, base form "" (_morph)
        out = self._synsets[word] = syn.synsets("")
        return out
      own = syn.synsets(word)
      bases = syn.word_to_bases.get(word)
      if bases is not None:
        stem_sets = frozenset().union(*(syn.synsets(b) for b in bases))
      else:
        stem_sets = syn.synsets(_morph(word, syn))
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
_SUFFIX_ENDS = frozenset(suf[-1] for suf in _SUFFIX)


def _morph(word: str, w2s: meteor_data.Synonyms) -> str:
  """WordNet-style base form used by METEOR's synonym module (its suffix rules, verbatim)."""
  tail = "ful" if word.endswith("ful") else ""
  if word.endswith("ss") or len(word) <= 2:
    return word
  if word[-1] not in _SUFFIX_ENDS:
    return ""
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
  with_syn = [(res.synsets(w), where) for w, where in pos1.items() if res.synsets(w)]
  if with_syn:
    for j, w2 in enumerate(words2):
      y2 = res.synsets(w2)
      if not y2:
        continue
      hits = []
      for y1, where in with_syn:
        if not y1.isdisjoint(y2):
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
