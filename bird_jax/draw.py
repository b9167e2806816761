"""Boxes drawn on images, in the colours that the evaluation gallery, the terminal chat and the
server's page share: green = reference boxes, red = predicted (answer) boxes, yellow = the
region a question refers to.

Box text coordinates (0..1000, bird_jax/boxes.py) map to pixels as ``v / 1000 * size``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import ImageDraw

from bird_jax.boxes import SCALE

REFERENCE, PREDICTED, QUESTION = (46, 204, 64), (240, 52, 52), (250, 210, 40)


def css(color: tuple[int, int, int]) -> str:
  """A colour as CSS writes it: ``rgb(r,g,b)``."""
  return f"rgb({color[0]},{color[1]},{color[2]})"


def draw_box(draw: ImageDraw.ImageDraw, coords: Sequence[float], color: tuple[int, int, int],
             width: int, size: tuple[int, int]) -> bool:
  """Draws a box given in text coordinates (0..1000) on a canvas of `size` (w, h) pixels,
  clipped to just outside the canvas; False (nothing drawn) when it is not 4 finite numbers."""
  if len(coords) != 4 or not all(math.isfinite(v) for v in coords):
    return False
  w, h = size
  x1, y1, x2, y2 = (min(1.05 * n, max(-0.05 * n, v / SCALE * n))
                    for v, n in zip(coords, (w, h, w, h)))
  draw.rectangle([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)], outline=color, width=width)
  return True
