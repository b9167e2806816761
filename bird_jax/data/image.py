"""Image preprocessing exactly as Qwen-VL's reference (docs/model.md, "Image preprocessing").

Reference: ``Image.open(f).convert("RGB")``, resize to ``image_size`` x ``image_size`` with
PIL BICUBIC (aspect ratio ignored), ``/ 255``, then ``(x - mean) / std`` with CLIP's mean/std,
all in float32.

The work is split for throughput: the host pipeline decodes and resizes to uint8
``[S, S, 3]`` (:func:`load_pixels`) and the training step normalises on device
(:func:`normalize`, jittable), moving 4x fewer bytes host -> device than float32 pixels.
:func:`preprocess` does both on the host (evaluation, tests).

Medical PNGs: 8-bit grayscale (``L``), palette, alpha and binary images go through
``convert("RGB")`` like the reference (alpha is dropped, gray replicated to 3 channels).
High bit-depth single-channel images (16-bit PNG modes ``I;16*``, 32-bit ``I`` and float
``F``), which ``convert("RGB")`` would clip at 255, are mapped to 8 bits by a linear min-max
stretch of the image's own range: ``u8 = round((v - min) / (max - min) * 255)`` (a constant
image becomes 0), then replicated to RGB. 16-bit RGB PNGs are delivered by PIL as 8-bit RGB
(high byte) and need no rule.
"""

from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


class ImageDecodeError(ValueError):
  """An image that cannot be decoded; the message names it."""


def png_bytes(pixels: np.ndarray, compress_level: int = 1) -> bytes:
  """PNG encoding of a uint8 [H, W] / [H, W, 3] or uint16 [H, W] array."""
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="PNG", compress_level=compress_level)
  return buf.getvalue()


def to_rgb(im: Image.Image) -> Image.Image:
  """RGB as the reference's ``convert("RGB")``, with the high bit-depth rule above."""
  if im.mode == "RGB":
    return im
  if im.mode in HIGH_DEPTH_MODES:
    return Image.fromarray(stretch_to_uint8(np.asarray(im))).convert("RGB")
  return im.convert("RGB")


def stretch_to_uint8(a: np.ndarray) -> np.ndarray:
  """Linear min-max stretch of a single-channel array to uint8 (constant -> 0)."""
  a = a.astype(np.float64)
  lo, hi = float(a.min()), float(a.max())
  if not hi > lo:
    return np.zeros(a.shape, np.uint8)
  return np.rint((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


class ImageTooLarge(ImageDecodeError):
  """An image with more pixels than the caller allows (read from its header, not decoded)."""


def _too_large(name: str, e: Exception, max_pixels: int | None) -> ImageTooLarge:
  """ImageTooLarge for PIL's decompression-bomb refusal, which comes from the header alone (its
  message holds the declared pixel count). The limit named is the lower of ``max_pixels`` and
  PIL's (twice ``Image.MAX_IMAGE_PIXELS`` for the error; once for the warning, raised where
  warnings are errors)."""
  found = re.search(r"\((\d+) pixels\)", str(e))
  declared = f"{int(found[1]):,} pixels" if found else "more pixels than PIL decodes"
  pil = (Image.MAX_IMAGE_PIXELS or 0) * (2 if isinstance(e, Image.DecompressionBombError) else 1)
  limit = min((v for v in (pil, max_pixels) if v), default=None)
  return ImageTooLarge(f"{name}: the image's header declares {declared}"
                       + (f", more than the limit {limit:,}" if limit else ""))


def decode(data: bytes, name: str = "image", max_pixels: int | None = None) -> Image.Image:
  """Encoded bytes -> RGB PIL image; ImageDecodeError names ``name`` on corrupt data.
  ``max_pixels``: width x height above it raises ImageTooLarge before the pixels are decoded,
  from the header's size. A header declaring more than twice PIL's ``Image.MAX_IMAGE_PIXELS``
  (PIL's decompression-bomb limit, about 179 million pixels) is ImageTooLarge whatever
  ``max_pixels`` says."""
  try:
    im = Image.open(io.BytesIO(data))
    if max_pixels is not None and im.width * im.height > max_pixels:
      raise ImageTooLarge(f"{name}: the image is {im.width}x{im.height} = "
                          f"{im.width * im.height:,} pixels, more than the limit {max_pixels:,}")
    im.load()
  except ImageTooLarge:
    raise
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise _too_large(name, e, max_pixels) from None
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... on bad data
    raise ImageDecodeError(f"{name}: cannot decode image ({type(e).__name__}: {e})") from None
  return to_rgb(im)


def resize(im: Image.Image, image_size: int) -> np.ndarray:
  """RGB PIL image -> uint8 ``[image_size, image_size, 3]`` (PIL bicubic, aspect ignored)."""
  if im.size != (image_size, image_size):
    im = im.resize((image_size, image_size), resample=Image.BICUBIC)
  return np.asarray(im, dtype=np.uint8)


def load_pixels(data: bytes, image_size: int, name: str = "image") -> np.ndarray:
  """Host half of preprocessing: bytes -> uint8 ``[image_size, image_size, 3]``."""
  return resize(decode(data, name), image_size)


def normalize(pixels):
  """Device half: uint8 ``[..., 3]`` -> float32 ``(x / 255 - mean) / std`` (jnp, jittable)."""
  import jax.numpy as jnp
  x = jnp.asarray(pixels).astype(jnp.float32) / jnp.float32(255.0)
  return (x - jnp.asarray(CLIP_MEAN, jnp.float32)) / jnp.asarray(CLIP_STD, jnp.float32)


def normalize_np(pixels: np.ndarray) -> np.ndarray:
  """Host (numpy) twin of :func:`normalize`, same float32 operations."""
  x = np.asarray(pixels).astype(np.float32) / np.float32(255.0)
  return (x - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)


def preprocess(data: bytes, image_size: int, name: str = "image") -> np.ndarray:
  """The full reference preprocessing on the host: bytes -> float32 ``[S, S, 3]``."""
  return normalize_np(load_pixels(data, image_size, name))

