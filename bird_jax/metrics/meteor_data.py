"""Linguistic resources of METEOR 1.5, read from the files pycocoevalcap installs.

Everything comes from the local pycocoevalcap package; nothing is downloaded:
- ``meteor/meteor-1.5.jar`` (a zip): ``function/english.words`` (function words),
  ``nonbreaking/english.prefixes`` (normaliser), ``synonym/english.synsets`` and
  ``synonym/english.exceptions`` (WordNet synonym sets and irregular forms);
- ``meteor/data/paraphrase-en.gz``: the English paraphrase table (5.27M phrase pairs, in
  groups of three lines: probability, phrase, paraphrase).
The paraphrase table is parsed once into NumPy arrays (``.npy`` files under ``$BIRD_JAX_CACHE``
or ``~/.cache/bird_jax``, memory-mapped; about 15 s the first time), indexed by the rarest word of
each phrase, and filtered per corpus to the entries whose words all occur in that corpus, the only
ones that can ever match.
Stems come from the Snowball English stemmer of snowballstemmer 2.x, the same algorithm
version as the jar's org.tartarus.snowball (checked word by word on the 94k WordNet lemmas).
"""

from __future__ import annotations

import array
import dataclasses
import functools
import gzip
import hashlib
import importlib.util
import os
import pathlib
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Sequence

import numpy as np


def pycocoevalcap_dir() -> pathlib.Path:
  """Directory of the installed pycocoevalcap package (clear error when it is missing)."""
  spec = importlib.util.find_spec("pycocoevalcap")
  if spec is None or not spec.submodule_search_locations:
    raise RuntimeError(
      "METEOR needs the resources shipped with pycocoevalcap (its METEOR 1.5 jar and "
      "paraphrase table): pip install pycocoevalcap")
  return pathlib.Path(list(spec.submodule_search_locations)[0])


def meteor_jar() -> pathlib.Path:
  return pycocoevalcap_dir() / "meteor" / "meteor-1.5.jar"


def paraphrase_file() -> pathlib.Path:
  return pycocoevalcap_dir() / "meteor" / "data" / "paraphrase-en.gz"


def java_hash(s: str) -> int:
  """Java's String.hashCode (32-bit, over UTF-16 code units); METEOR matches on it."""
  h = 0
  for unit in array.array("H", s.encode("utf-16-le")):
    h = (31 * h + unit) & 0xFFFFFFFF
  return h - (1 << 32) if h >= 1 << 31 else h


def java_hashes(words: Sequence[str]) -> np.ndarray:
  """``java_hash`` of many words at once (int32): sum of units x 31^(n-1-k) modulo 2^32."""
  enc = [w.encode("utf-16-le") for w in words]
  lens = np.fromiter(map(len, enc), np.int64, len(enc)) // 2
  units = np.frombuffer(b"".join(enc), np.uint16).astype(np.uint64)
  out = np.zeros(len(enc), np.uint64)
  if len(units):
    pow31 = np.ones(int(lens.max()), np.uint64)
    for e in range(1, len(pow31)):
      pow31[e] = (pow31[e - 1] * np.uint64(31)) & np.uint64(0xFFFFFFFF)
    ends = np.cumsum(lens)
    exponent = np.repeat(ends, lens) - 1 - np.arange(len(units))
    terms = units * pow31[exponent]                   # < 2^48; sums wrap modulo 2^64
    full = lens > 0
    out[full] = np.add.reduceat(terms, (ends - lens)[full])
  return (out & np.uint64(0xFFFFFFFF)).astype(np.uint32).view(np.int32)


@functools.cache
def _jar_text(name: str) -> str:
  with zipfile.ZipFile(meteor_jar()) as z:
    return z.read(name).decode("utf-8")


@functools.cache
def function_words() -> frozenset[str]:
  return frozenset(line for line in _jar_text("function/english.words").split("\n") if line)


@functools.cache
def nonbreaking_prefixes() -> dict[str, int]:
  """Prefix -> 1 (always nonbreaking) or 2 (nonbreaking before a number)."""
  out = {}
  for line in _jar_text("nonbreaking/english.prefixes").splitlines():
    toks = line.split()
    if not toks or toks[0].startswith("#"):
      continue
    out[toks[0]] = 2 if len(toks) > 1 and toks[1] == "#NUMERIC_ONLY#" else 1
  return out


@dataclasses.dataclass(frozen=True)
class Synonyms:
  """WordNet synonym sets of METEOR's synonym module (a word's set ids are parsed when asked)."""
  raw: dict[str, str]                 # word -> its synset ids, as text
  word_to_bases: dict[str, list[str]]

  def __contains__(self, word: str) -> bool:
    return word in self.raw

  def synsets(self, word: str) -> frozenset[int]:
    text = self.raw.get(word)
    return frozenset(int(t) for t in text.split()) if text else frozenset()


@functools.cache
def synonyms() -> Synonyms:
  lines = _jar_text("synonym/english.synsets").split("\n")
  raw = dict(zip(lines[0::2], lines[1::2]))
  lines = _jar_text("synonym/english.exceptions").split("\n")
  w2b: dict[str, list[str]] = {}
  for i in range(0, len(lines) - 1, 2):
    for form in lines[i + 1].split():
      w2b.setdefault(form, []).append(lines[i])
  return Synonyms(raw, w2b)


_HAS_LETTER = re.compile("[A-Za-z']")


class Stemmer:
  """Snowball English stemmer with a per-word cache. A word without ASCII letters and
  apostrophes is its own stem (every rule of the algorithm needs one), so it skips the
  stemmer."""

  def __init__(self):
    from snowballstemmer.english_stemmer import EnglishStemmer  # the pure-Python 2.x algorithm
    self._stemmer = EnglishStemmer()
    self._cache: dict[str, str] = {}

  def __call__(self, word: str) -> str:
    out = self._cache.get(word)
    if out is None:
      out = self._stemmer.stemWord(word) if _HAS_LETTER.search(word) else word
      self._cache[word] = out
    return out


# --- paraphrase table --------------------------------------------------------------------

def _cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("BIRD_JAX_CACHE", pathlib.Path.home() / ".cache" / "bird_jax"))


def _cache_path(src: pathlib.Path) -> pathlib.Path:
  st = src.stat()
  tag = f"{src.resolve()}:{st.st_size}:{st.st_mtime_ns}:{_FORMAT}"
  key = hashlib.sha1(tag.encode()).hexdigest()[:12]
  return _cache_dir() / f"meteor-paraphrase-en-{key}"


_FORMAT = 2
_ARRAYS = ("vocab", "ref_ids", "ref_off", "para_ids", "para_off", "by_key", "key_off")


def _rarest_word_index(ids: np.ndarray, off: np.ndarray, n_words: int
                       ) -> tuple[np.ndarray, np.ndarray]:
  """Entries grouped by the rarest word of their phrase (ties: the smaller id): the entries
  of word w are ``by_key[key_off[w]:key_off[w + 1]]``, in file order; empty phrases are keyed
  by ``n_words``."""
  lens = np.diff(off)
  freq = np.bincount(ids, minlength=n_words).astype(np.int64)
  code = freq[ids] * (n_words + 1) + ids
  key = np.full(len(lens), n_words, np.int64)
  full = lens > 0
  key[full] = np.minimum.reduceat(code, off[:-1][full]) % (n_words + 1)
  by_key = np.argsort(key, kind="stable").astype(np.int32)
  key_off = np.searchsorted(key[by_key], np.arange(n_words + 2)).astype(np.int64)
  return by_key, key_off


def _build_cache(src: pathlib.Path, dst: pathlib.Path) -> None:
  """Parses the table into ``dst/*.npy`` (word ids and offsets per side, the word list)."""
  from tqdm import tqdm
  steps = tqdm(total=4, desc="METEOR paraphrase table -> cache (once)", unit="step")
  lines = gzip.open(src).read().split(b"\n")
  steps.update()
  if lines and lines[-1] == b"":
    lines.pop()
  refs, paras = lines[1::3], lines[2::3]
  del lines
  vocab: dict[bytes, int] = {}
  ids: list[list[int]] = [[], []]
  offsets = [np.zeros(len(refs) + 1, np.int64), np.zeros(len(refs) + 1, np.int64)]
  for side, phrases in enumerate((refs, paras)):
    flat = ids[side]
    off = offsets[side]
    setdefault = vocab.setdefault
    for k, phrase in enumerate(phrases):
      toks = phrase.split()
      flat.extend(setdefault(t, len(vocab)) for t in toks)
      off[k + 1] = off[k] + len(toks)
    steps.update()
  words = sorted(vocab, key=vocab.__getitem__)
  ref_ids = np.asarray(ids[0], np.int32)
  arrays = (np.frombuffer(b"\n".join(words), np.uint8), ref_ids, offsets[0],
            np.asarray(ids[1], np.int32), offsets[1],
            *_rarest_word_index(ref_ids, offsets[0], len(words)))
  dst.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(dir=dst.parent, prefix=dst.name + ".tmp"))
  os.chmod(tmp, 0o755)
  for name, arr in zip(_ARRAYS, arrays):
    np.save(tmp / f"{name}.npy", arr)
  try:
    os.replace(tmp, dst)
  except OSError:                       # built meanwhile by another process
    shutil.rmtree(tmp, ignore_errors=True)
  steps.update()
  steps.close()


@dataclasses.dataclass(frozen=True)
class ParaphraseTable:
  """Paraphrase entries in file order: ``refs[k]`` may be matched by ``paras[k]``."""
  refs: list[tuple[str, ...]]
  paras: list[tuple[str, ...]]


@functools.cache
def _paraphrase_arrays() -> dict[str, np.ndarray | list[bytes] | list[str] | dict[bytes, int]]:
  src = paraphrase_file()
  dst = _cache_path(src)
  if not all((dst / f"{name}.npy").exists() for name in _ARRAYS):
    _build_cache(src, dst)
  arrays = {name: np.load(dst / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
  words = np.asarray(arrays.pop("vocab")).tobytes().split(b"\n")
  arrays["words"] = words
  arrays["text"] = [w.decode("utf-8", errors="replace") for w in words]
  arrays["index"] = dict(zip(words, range(len(words))))
  return arrays


def _gather(ids: np.ndarray, off: np.ndarray, keep: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
  """The phrases ``keep`` concatenated: word ids and offsets (from 0)."""
  starts = np.asarray(off[keep])
  lens = np.asarray(off[keep + 1]) - starts
  out_off = np.zeros(len(keep) + 1, np.int64)
  np.cumsum(lens, out=out_off[1:])
  pos = np.arange(int(out_off[-1])) + np.repeat(starts - out_off[:-1], lens)
  return np.asarray(ids[pos]), out_off


def _all_known(known: np.ndarray, ids: np.ndarray, off: np.ndarray) -> np.ndarray:
  """Per concatenated phrase: are all its words known? (empty phrases: yes)"""
  lens = np.diff(off)
  out = lens == 0
  if len(ids):
    out[~out] = np.logical_and.reduceat(known[ids], off[:-1][~out])
  return out


def paraphrases_for(vocabulary: Iterable[str]) -> ParaphraseTable:
  """The paraphrase entries whose phrase and paraphrase words all lie in ``vocabulary``
  (candidates: the entries keyed by a known word, see ``_rarest_word_index``)."""
  a = _paraphrase_arrays()
  index, words = a["index"], a["words"]
  n_words = len(words)
  known = np.zeros(n_words + 1, bool)
  for w in vocabulary:
    i = index.get(w.encode("utf-8", errors="surrogateescape"))
    if i is not None:
      known[i] = True
  key_off = np.asarray(a["key_off"])
  groups = list(np.flatnonzero(known[:n_words])) + [n_words]
  keep = np.sort(np.concatenate([np.asarray(a["by_key"][key_off[w]:key_off[w + 1]])
                                 for w in groups])).astype(np.int64)
  ref_ids, ref_off = _gather(a["ref_ids"], a["ref_off"], keep)
  para_ids, para_off = _gather(a["para_ids"], a["para_off"], keep)
  ok = _all_known(known, ref_ids, ref_off) & _all_known(known, para_ids, para_off)
  text = a["text"]

  def phrases(ids: np.ndarray, off: np.ndarray) -> list[tuple[str, ...]]:
    flat = [text[t] for t in ids.tolist()]
    bounds = off.tolist()
    return [tuple(flat[bounds[k]:bounds[k + 1]]) for k in np.flatnonzero(ok).tolist()]

  return ParaphraseTable(phrases(ref_ids, ref_off), phrases(para_ids, para_off))
