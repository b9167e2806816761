"""Linguistic resources of METEOR 1.5, read from the files pycocoevalcap installs.

Everything comes from the local pycocoevalcap package; nothing is downloaded:
- ``meteor/meteor-1.5.jar`` (a zip): ``function/english.words`` (function words),
  ``nonbreaking/english.prefixes`` (normaliser), ``synonym/english.synsets`` and
  ``synonym/english.exceptions`` (WordNet synonym sets and irregular forms);
- ``meteor/data/paraphrase-en.gz``: the English paraphrase table (5.27M phrase pairs, in
  groups of three lines: probability, phrase, paraphrase).
The paraphrase table is parsed once into a compact NumPy cache (``$BIRD_JAX_CACHE`` or
``~/.cache/bird_jax``; about 10 s the first time) and filtered per corpus to the entries whose
words all occur in that corpus, the only ones that can ever match.
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
import zipfile
from collections.abc import Iterable

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
  """WordNet synonym sets of METEOR's synonym module."""
  word_to_synsets: dict[str, frozenset[int]]
  word_to_bases: dict[str, list[str]]


@functools.cache
def synonyms() -> Synonyms:
  lines = _jar_text("synonym/english.synsets").split("\n")
  w2s = {lines[i]: frozenset(int(t) for t in lines[i + 1].split())
         for i in range(0, len(lines) - 1, 2)}
  lines = _jar_text("synonym/english.exceptions").split("\n")
  w2b: dict[str, list[str]] = {}
  for i in range(0, len(lines) - 1, 2):
    for form in lines[i + 1].split():
      w2b.setdefault(form, []).append(lines[i])
  return Synonyms(w2s, w2b)


class Stemmer:
  """Snowball English stemmer with a per-word cache."""

  def __init__(self):
    from snowballstemmer.english_stemmer import EnglishStemmer  # the pure-Python 2.x algorithm
    self._stemmer = EnglishStemmer()
    self._cache: dict[str, str] = {}

  def __call__(self, word: str) -> str:
    out = self._cache.get(word)
    if out is None:
      out = self._cache[word] = self._stemmer.stemWord(word)
    return out


# --- paraphrase table --------------------------------------------------------------------

def _cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("BIRD_JAX_CACHE", pathlib.Path.home() / ".cache" / "bird_jax"))


def _cache_path(src: pathlib.Path) -> pathlib.Path:
  st = src.stat()
  key = hashlib.sha1(f"{src.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
  return _cache_dir() / f"meteor-paraphrase-en-{key}.npz"


def _build_cache(src: pathlib.Path, dst: pathlib.Path) -> None:
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
  dst.parent.mkdir(parents=True, exist_ok=True)
  tmp = dst.with_suffix(".tmp.npz")
  np.savez(tmp, vocab=np.frombuffer(b"\n".join(words), np.uint8),
           ref_ids=np.asarray(ids[0], np.int32), ref_off=offsets[0],
           para_ids=np.asarray(ids[1], np.int32), para_off=offsets[1])
  os.replace(tmp, dst)
  steps.update()
  steps.close()


@dataclasses.dataclass(frozen=True)
class ParaphraseTable:
  """Paraphrase entries in file order: ``refs[k]`` may be matched by ``paras[k]``."""
  refs: list[tuple[str, ...]]
  paras: list[tuple[str, ...]]


@functools.cache
def _paraphrase_arrays() -> dict[str, np.ndarray | list[str] | dict[str, int]]:
  src = paraphrase_file()
  dst = _cache_path(src)
  if not dst.exists():
    _build_cache(src, dst)
  with np.load(dst) as z:
    arrays = {k: z[k] for k in z.files}
  words = arrays.pop("vocab").tobytes().split(b"\n")
  arrays["words"] = words
  arrays["index"] = dict(zip(words, range(len(words))))
  return arrays


def paraphrases_for(vocabulary: Iterable[str]) -> ParaphraseTable:
  """The paraphrase entries whose phrase and paraphrase words all lie in ``vocabulary``."""
  a = _paraphrase_arrays()
  index, words = a["index"], a["words"]
  known = np.zeros(len(words) + 1, bool)
  for w in vocabulary:
    i = index.get(w.encode("utf-8", errors="surrogateescape"))
    if i is not None:
      known[i] = True

  def all_known(ids: np.ndarray, off: np.ndarray) -> np.ndarray:
    csum = np.zeros(len(ids) + 1, np.int32)
    np.cumsum(known[ids], dtype=np.int32, out=csum[1:])
    return csum[off[1:]] - csum[off[:-1]] == np.diff(off)

  keep = np.nonzero(all_known(a["ref_ids"], a["ref_off"]) &
                    all_known(a["para_ids"], a["para_off"]))[0]

  def phrases(ids: np.ndarray, off: np.ndarray) -> list[tuple[str, ...]]:
    return [tuple(words[t].decode("utf-8", errors="replace") for t in ids[off[k]:off[k + 1]])
            for k in keep]

  return ParaphraseTable(phrases(a["ref_ids"], a["ref_off"]), phrases(a["para_ids"], a["para_off"]))
