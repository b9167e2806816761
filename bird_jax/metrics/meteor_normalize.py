"""METEOR 1.5's English normaliser (``-norm``: punctuation kept, lower-cased), as in the jar.

Moses-style tokenisation with METEOR's additions: non-alphanumerics split off (except . ' ` , -),
runs of dots kept together, commas split outside numbers, quotes and dashes normalised, dashes
between words removed (x-ray -> x ray), English contractions split ("isn't" -> "isn 't"), final
dots split unless the word is a nonbreaking prefix (the jar's list) or followed by a lower-case
word, dots dropped from acronyms (U.S. -> US).
"""

from __future__ import annotations

import dataclasses
import itertools
import re

from bird_jax.metrics import meteor_data

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


def _rewrite(s: str) -> str:
  """The normaliser's regex rewrites of a space-padded string (before the final-dot rule).
  (Each rewrite only runs when the characters it needs occur; the result is the same.)"""
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
  return s


def _finish(words: list[str]) -> str:
  """The final-dot rule (nonbreaking prefixes, acronyms), dots restored, whitespace
  normalised and lower-cased: the normaliser's last step over the rewritten words."""
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


def normalize(line: str) -> str:
  """METEOR's English normaliser with punctuation kept (``-norm``), then lower-cased."""
  return _finish(tokens_of(_rewrite(" " + line + " ")))


# --- per-token fast path -------------------------------------------------------------------
# A line whose only whitespace is " " is normalised token by token: every rewrite matches one
# character plus at most one neighbour on each side, so a token is rewritten as if it stood
# alone, unless the space between two tokens is a neighbour of a rewrite on BOTH sides (a
# comma, quote or dot ends the first token and one begins the second): such lines take the
# whole-line path. The last step treats each word alone, except that the final-dot rule looks
# at the first character of the next word: a lower-case letter, a digit, anything else, or no
# next word. A token's final words are kept per class of that character when they depend on it.
_OTHER_SPACE = re.compile("[\x00-\x1f\x7f\u2000-\u200a\u202f\u205f\u3000\u00a0]")
_CORE_PAIR = re.compile("[,'.`\u2018\u2019] +[,'.`\u2018\u2019]")
_PLAIN = re.compile("[a-z0-9]+|[a-z0-9]*[0-9](?:,[0-9]+)+")
_PROBES = {"a": ["a"], "0": ["0"], "": ["!"], None: []}   # a next word of each class


def _first_class(word: str) -> str:
  c = word[0]
  return "a" if "a" <= c <= "z" else ("0" if "0" <= c <= "9" else "")


@dataclasses.dataclass
class TokenCache:
  """Per distinct token: its final words (a tuple, or per class of the next word's first
  character: a dict), the class of its first rewritten word (None: it has no words)."""
  final: dict[str, tuple[str, ...] | dict[str | None, tuple[str, ...]]] = \
    dataclasses.field(default_factory=dict)
  first: dict[str, str | None] = dataclasses.field(default_factory=dict)
  dependent: set[str] = dataclasses.field(default_factory=set)

  def add(self, token: str) -> None:
    if _PLAIN.fullmatch(token):
      self.final[token], self.first[token] = (token,), _first_class(token)
      return
    words = tokens_of(_rewrite(" " + token + " "))
    self.first[token] = _first_class(words[0]) if words else None
    if not any((len(w) > 1 and w[-1] == ".") or "DOTMULTI" in w or w.lower() != w
               for w in words):
      self.final[token] = tuple(words)
      return
    by_class = {}
    for cls, probe in _PROBES.items():
      out = tokens_of(_finish(words + probe))
      by_class[cls] = tuple(out[:len(out) - len(probe)])
    if len(set(by_class.values())) == 1:
      self.final[token] = by_class[None]
    else:
      self.final[token] = by_class
      self.dependent.add(token)


def normalized_words(line: str, cache: TokenCache) -> list[str]:
  """``tokens_of(normalize(line))``, each distinct token rewritten once (``cache``)."""
  if line.isprintable():                       # no whitespace but " ": split() is exact
    tokens = line.split()
  elif _OTHER_SPACE.search(line):
    return tokens_of(normalize(line))
  else:
    tokens = list(filter(None, line.split(" ")))
  if _CORE_PAIR.search(line):
    return tokens_of(normalize(line))
  final = cache.final
  try:
    parts = list(map(final.__getitem__, tokens))
  except KeyError:
    for t in set(tokens).difference(final):
      cache.add(t)
    parts = list(map(final.__getitem__, tokens))
  if not cache.dependent.isdisjoint(tokens):
    first = cache.first
    nxt = None
    for i in range(len(tokens) - 1, -1, -1):
      p = parts[i]
      if type(p) is dict:
        parts[i] = p[nxt]
      c = first[tokens[i]]
      if c is not None:
        nxt = c
  return list(itertools.chain.from_iterable(parts))
