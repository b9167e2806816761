"""Packing tokenised samples into fixed-shape batches (the model/trainer batch contract).

A batch is a dict of numpy arrays, ``B`` rows of ``L = max_len`` tokens and ``M`` image slots:

  tokens       int32 [B, L]   right-padded with <|endoftext|>
  labels       int32 [B, L]   aligned with tokens (the loss shifts); -100 = ignored
  positions    int32 [B, L]   rotary positions
  segment_ids  int32 [B, L]   1..n = the packed samples of the row, 0 = padding
  images       uint8 [B, M, H, W, 3]   the k-th <img> span of row b is images[b, k]
  num_images   int32 [B]      used image slots; unused slots are zero

Packing modes:

- ``segments`` (default): several samples per row; positions restart at 0 in every sample
  and the model's mask is causal AND same-segment (:func:`attention_mask`), so packed
  samples never see each other; training is equivalent to one sample per row.
- ``bird``: BiRD / Qwen-VL style packing for exact replication: samples concatenated with
  one plain causal mask over the whole row and continuous positions ``0..L-1`` (every real
  token gets segment id 1, padding 0, so the same mask function gives the plain causal mask).
- ``none``: one sample per row (the reference finetune without packing).

In every mode the label of a sample's first token is -100: no position of the sample
precedes it, so in ``segments``/``none`` nothing could predict it, and in ``bird`` mode the
previous sample's last token is not asked to predict the next sample.

Rows are filled first-fit: each sample goes into the first row of the batch with room for
its tokens and its images; a sample that fits nowhere closes the batch and opens the next.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bird_jax.vocabulary import IGNORE_ID

PACKING_MODES = ("segments", "bird", "none")


@dataclasses.dataclass
class _Row:
  tokens: list[np.ndarray] = dataclasses.field(default_factory=list)
  labels: list[np.ndarray] = dataclasses.field(default_factory=list)
  images: list[np.ndarray] = dataclasses.field(default_factory=list)
  length: int = 0
  n_images: int = 0


class BatchPacker:
  """Accumulates samples (``tokens``, ``labels``, ``images [k, H, W, 3]``) into one batch."""

  def __init__(self, *, batch_size: int, max_len: int, max_images: int,
               image_shape: tuple[int, int, int], pad_id: int, mode: str = "segments"):
    if mode not in PACKING_MODES:
      raise ValueError(f"packing mode {mode!r} not in {PACKING_MODES}")
    self.batch_size, self.max_len, self.max_images = batch_size, max_len, max_images
    self.image_shape, self.pad_id, self.mode = tuple(image_shape), pad_id, mode
    self.rows = [_Row() for _ in range(batch_size)]
    self.n_samples = 0

  def fits_alone(self, sample: dict) -> bool:
    """Whether the sample fits an empty row (else it can never be packed)."""
    return len(sample["tokens"]) <= self.max_len and len(sample["images"]) <= self.max_images

  def add(self, sample: dict) -> bool:
    """Places the sample in the first row with room; False when no row has room."""
    n, k = len(sample["tokens"]), len(sample["images"])
    for row in self.rows:
      if self.mode == "none" and row.length:
        continue
      if row.length + n <= self.max_len and row.n_images + k <= self.max_images:
        row.tokens.append(np.asarray(sample["tokens"], np.int32))
        row.labels.append(np.asarray(sample["labels"], np.int32))
        row.images.extend(np.asarray(sample["images"], np.uint8))
        row.length += n
        row.n_images += k
        self.n_samples += 1
        return True
    return False

  def build(self) -> dict[str, np.ndarray]:
    """The batch as numpy arrays (rows without samples are all padding)."""
    b, length, m = self.batch_size, self.max_len, self.max_images
    out = {
        "tokens": np.full((b, length), self.pad_id, np.int32),
        "labels": np.full((b, length), IGNORE_ID, np.int32),
        "positions": np.zeros((b, length), np.int32),
        "segment_ids": np.zeros((b, length), np.int32),
        "images": np.zeros((b, m, *self.image_shape), np.uint8),
        "num_images": np.zeros((b,), np.int32),
    }
    for r, row in enumerate(self.rows):
      start = 0
      for s, (tok, lab) in enumerate(zip(row.tokens, row.labels)):
        end = start + len(tok)
        out["tokens"][r, start:end] = tok
        out["labels"][r, start:end] = lab
        out["labels"][r, start] = IGNORE_ID
        out["segment_ids"][r, start:end] = 1 if self.mode == "bird" else s + 1
        out["positions"][r, start:end] = np.arange(len(tok), dtype=np.int32)
        start = end
      if self.mode == "bird":
        out["positions"][r] = np.arange(length, dtype=np.int32)
      if row.images:
        out["images"][r, :len(row.images)] = np.stack(row.images)
      out["num_images"][r] = row.n_images
    return out


def attention_mask(segment_ids: np.ndarray) -> np.ndarray:
  """bool ``[B, L, L]`` (query, key): causal and same segment; padding sees only padding."""
  seg = np.asarray(segment_ids)
  same = seg[:, :, None] == seg[:, None, :]
  n = seg.shape[-1]
  return same & np.tril(np.ones((n, n), bool))[None]
