"""Crafted image files for the tests of image limits."""

from __future__ import annotations

import struct
import zlib


def png_header(width: int, height: int) -> bytes:
  """A valid PNG whose header declares `width` x `height` RGB pixels, with one tiny IDAT chunk:
  a decoder that trusts the header would allocate that many pixels (a decompression bomb)."""
  def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

  ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
          + chunk(b"IEND", b""))
