"""Streaming reader for a large JSON object: yields its (key, value) pairs one at a time.

SA-Med2D's index maps millions of image paths to their mask lists; reading it with
``json.load`` would hold every mask name in memory at once. :func:`iter_object` keeps only
a read buffer and the current entry.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

_WS = " \t\n\r"


class JSONStreamError(ValueError):
  """The file is not a JSON object (or is cut short); the message gives the offset."""


class _Reader:
  def __init__(self, f, chunk: int):
    self.f, self.chunk = f, chunk
    self.buf, self.pos, self.offset, self.eof = "", 0, 0, False

  def more(self) -> bool:
    """Appends the next chunk (dropping what was consumed); False at end of file."""
    if self.eof:
      return False
    data = self.f.read(self.chunk)
    if not data:
      self.eof = True
      return False
    self.offset += self.pos
    self.buf = self.buf[self.pos:] + data
    self.pos = 0
    return True

  def peek(self) -> str:
    """The next non-whitespace character ('' at end of file), not consumed."""
    while True:
      while self.pos < len(self.buf) and self.buf[self.pos] in _WS:
        self.pos += 1
      if self.pos < len(self.buf):
        return self.buf[self.pos]
      if not self.more():
        return ""

  def value(self, dec: json.JSONDecoder) -> Any:
    self.peek()
    while True:
      try:
        obj, end = dec.raw_decode(self.buf, self.pos)
        if end < len(self.buf) or self.eof:  # a value ending at the buffer end may go on
          self.pos = end
          return obj
      except json.JSONDecodeError as e:
        if self.eof:
          raise JSONStreamError(f"invalid JSON at offset {self.offset + e.pos}: {e.msg}") from None
      self.more()

  def where(self) -> int:
    return self.offset + self.pos


def iter_object(path: str | os.PathLike, chunk: int = 1 << 20) -> Iterator[tuple[str, Any]]:
  """(key, value) pairs of the top-level JSON object in ``path``, in file order."""
  dec = json.JSONDecoder()
  with open(path, encoding="utf-8") as f:
    r = _Reader(f, chunk)
    c = r.peek()
    if c != "{":
      raise JSONStreamError(f"{path}: expected a JSON object at offset {r.where()}, found "
                            f"{c!r}" if c else f"{path}: the file is empty")
    r.pos += 1
    if r.peek() == "}":
      return
    while True:
      if r.peek() != '"':
        raise JSONStreamError(f"{path}: expected a string key at offset {r.where()}")
      key = r.value(dec)
      if r.peek() != ":":
        raise JSONStreamError(f"{path}: expected ':' after key {key!r} at offset {r.where()}")
      r.pos += 1
      try:
        value = r.value(dec)
      except JSONStreamError as e:
        raise JSONStreamError(f"{path}: value of key {key!r}: {e}") from None
      yield key, value
      c = r.peek()
      r.pos += 1
      if c == "}":
        return
      if c != ",":
        raise JSONStreamError(f"{path}: expected ',' or '}}' after the value of {key!r} at "
                              f"offset {r.where() - 1}" + (" (file cut short)" if not c else ""))
