"""Boxes <-> text: the one formatter and the parsers.

Conventions (docs/tokenizer.md, "Boxes"):
- a *normalised* box is ``(x1, y1, x2, y2)`` floats in [0, 1] (top-left, bottom-right);
- in text a box is ``(X1,Y1),(X2,Y2)`` with integers in [0, 1000): each coordinate is
  ``min(999, floor(v * 1000 + 0.5))`` (round half up, clamped); a value with at most three
  decimals maps to its digits exactly (0.562 -> 562) despite binary float error;
- the inverse is ``X / 1000``;
- a grounded phrase is ``<ref>phrase</ref><box>(..),(..)</box>`` with one ``<box>`` span per
  box, written back to back (Qwen-VL's own multi-box layout).

Two readers:
- :func:`parse_boxes` - a tolerant parser for model output (spaces, several boxes, missing
  tags, upper-case tags, truncated text, garbage). It never raises; what it could not read is
  returned as :class:`ParseIssue` records.
- :func:`bird_extract_boxes` - BiRD's VG extraction rules, bit for bit (docs/evaluation.md), for
  BiRD-compatible scores.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence

from bird_jax.vocabulary import BOX, BOX_END, REF, REF_END

SCALE = 1000  # text coordinates are integers in [0, SCALE)

Box = tuple[float, float, float, float]
IntBox = tuple[int, int, int, int]

# ---- normalised floats <-> text integers ----------------------------------------------------


def round_to_grid(v: float) -> float:
  """A normalised coordinate rounded half-up to the text grid (3 decimals); 1.0 stays 1.0."""
  return math.floor(float(v) * SCALE + 0.5) / SCALE


def quantize(v: float) -> int:
  """A normalised coordinate in [0, 1] -> its text integer in [0, 999]."""
  v = float(v)
  if not (0.0 <= v <= 1.0):  # also rejects NaN
    raise ValueError(f"box coordinate {v!r} is outside [0, 1]")
  return min(SCALE - 1, math.floor(v * SCALE + 0.5))


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
  """Intersection over union of two ``(x1, y1, x2, y2)`` boxes (one pair, on the host; the
  batched metric is bird_jax.metrics.grounding.iou_matrix)."""
  inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = inter_w * inter_h
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


def quantize_box(box: Sequence[float]) -> IntBox:
  """``(x1, y1, x2, y2)`` in [0, 1] -> the four text integers."""
  if len(box) != 4:
    raise ValueError(f"a box needs 4 numbers (x1, y1, x2, y2), got {len(box)}: {box!r}")
  x1, y1, x2, y2 = (quantize(v) for v in box)
  return x1, y1, x2, y2


def dequantize_box(box: Sequence[float]) -> Box:
  """Text coordinates (0..1000 scale) -> normalised floats (``X / 1000``; no clamping)."""
  if len(box) != 4:
    raise ValueError(f"a box needs 4 numbers (x1, y1, x2, y2), got {len(box)}: {box!r}")
  x1, y1, x2, y2 = (float(v) / SCALE for v in box)
  return x1, y1, x2, y2


def format_box(box: Sequence[float]) -> str:
  """Normalised box -> ``(x1,y1),(x2,y2)``, e.g. [0.562, 0.654, 0.625, 0.737] -> (562,654),(625,737)."""
  x1, y1, x2, y2 = quantize_box(box)
  return f"({x1},{y1}),({x2},{y2})"


def box_span(box: Sequence[float]) -> str:
  """Normalised box -> ``<box>(x1,y1),(x2,y2)</box>``."""
  return BOX + format_box(box) + BOX_END


def ref_span(phrase: str, boxes: Sequence[Sequence[float]]) -> str:
  """``<ref>phrase</ref>`` followed by one ``<box>`` span per box (at least one)."""
  if not boxes:
    raise ValueError(f"ref_span({phrase!r}): at least one box is required")
  for tag in (REF, REF_END, BOX, BOX_END):
    if tag in phrase.lower():
      raise ValueError(f"ref_span: the phrase {phrase!r} contains the tag {tag}")
  return REF + phrase + REF_END + "".join(box_span(b) for b in boxes)


def normalise_pixel_box(box: Sequence[float], width: int, height: int) -> Box:
  """Pixel box ``(x1, y1, x2, y2)`` on a ``width`` x ``height`` image -> [0, 1] floats."""
  if width <= 0 or height <= 0:
    raise ValueError(f"image size {width}x{height} must be positive")
  x1, y1, x2, y2 = box
  return x1 / width, y1 / height, x2 / width, y2 / height


def pixel_box(box: Sequence[float], width: int, height: int) -> Box:
  """Normalised box -> pixels (Qwen-VL's ``x / 1000 * w`` once text is dequantised)."""
  x1, y1, x2, y2 = box
  return x1 * width, y1 * height, x2 * width, y2 * height


# ---- tolerant parser for model output -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TextBox:
  """One box read from text, in text coordinates (0..1000 scale, as written)."""

  coords: Box
  ref: str | None  # phrase of the <ref> this box belongs to (see parse_boxes), if any
  start: int  # character span of the box (its tags included) in the parsed text
  end: int
  tagged: bool  # read from a <box> span (False: a bare "(x1,y1),(x2,y2)" in plain text)

  @property
  def normalised(self) -> Box:
    return dequantize_box(self.coords)

  @property
  def valid(self) -> bool:
    """Inside [0, 1000] with x1 < x2 and y1 < y2."""
    x1, y1, x2, y2 = self.coords
    return 0 <= x1 < x2 <= SCALE and 0 <= y1 < y2 <= SCALE


@dataclasses.dataclass(frozen=True)
class ParseIssue:
  """Something :func:`parse_boxes` could not read (or could read only partly)."""

  kind: str  # one of ISSUE_KINDS
  text: str  # the offending fragment
  start: int  # its offset in the parsed text


ISSUE_KINDS = (
    "not_text",  # the input is not a str
    "unparseable_box",  # a <box> span whose numbers are not 4 (or a multiple of 4)
    "unclosed_box",  # <box> without </box> (truncated output); its box is kept if complete
    "unclosed_ref",  # <ref> without </ref>
    "stray_tag",  # </box> or </ref> without an opening tag
)


@dataclasses.dataclass(frozen=True)
class ParsedText:
  boxes: tuple[TextBox, ...]
  issues: tuple[ParseIssue, ...]
  refs: tuple[str, ...] = ()  # the phrase of every <ref> span, with or without a box

  @property
  def ok(self) -> bool:
    return not self.issues

  @property
  def coords(self) -> list[Box]:
    return [b.coords for b in self.boxes]


_TAG = re.compile(r"<\s*(/?)\s*(ref|box)\s*>", re.IGNORECASE)


def has_tags(text: str) -> bool:
  """Whether ``text`` holds a ``<ref>`` / ``<box>`` tag in any spelling parse_boxes reads."""
  return _TAG.search(text) is not None


def canonical_tags(text: str) -> str:
  """``text`` with every ``<ref>`` / ``<box>`` tag written the canonical way (``< BOX>`` ->
  ``<box>``)."""
  return _TAG.sub(lambda m: f"<{m.group(1)}{m.group(2).lower()}>", text)


_NUM = r"[-+]?\d+(?:\.\d+)?"
_NUM_RE = re.compile(_NUM)
_BARE = re.compile(rf"\(\s*({_NUM})\s*,\s*({_NUM})\s*\)\s*,?\s*\(\s*({_NUM})\s*,\s*({_NUM})\s*\)")
_RUN_GAP = re.compile(r"(?:[\s,;]|\band\b)*")  # what may separate boxes that share one <ref>


def _boxes_from_numbers(content: str) -> list[Box] | None:
  nums = [float(n) for n in _NUM_RE.findall(content)]
  if not nums or len(nums) % 4:
    return None
  return [tuple(nums[i:i + 4]) for i in range(0, len(nums), 4)]  # type: ignore[misc]


def parse_boxes(text: str) -> ParsedText:
  """Reads every box in ``text``; never raises.

  - ``<box>`` / ``<ref>`` tags in any case, with spaces inside the tags;
  - box contents: any text holding 4 numbers (or 4k numbers: k boxes in one span), e.g.
    ``( 12, 34 ),(56,78)`` or ``[12, 34, 56, 78]``; integers or decimals, signs kept;
  - a ``<box>`` span ends at ``</box>``, at the next tag or at the end of the text (the last
    two are reported as ``unclosed_box``; complete numbers are still read);
  - bare ``(x1,y1),(x2,y2)`` outside any span (spaces allowed) are read with
    ``tagged=False``;
  - a ``<ref>phrase</ref>`` names the first ``<box>`` span after it (any text may come
    between) and the spans that follow that one separated only by spaces, commas,
    semicolons or "and".
  Values are returned as written; :attr:`TextBox.valid` checks range and order.
  """
  if not isinstance(text, str):
    return ParsedText((), (ParseIssue("not_text", repr(text)[:80], 0),))
  boxes: list[TextBox] = []
  issues: list[ParseIssue] = []
  refs: list[str] = []
  covered: list[tuple[int, int]] = []  # spans handled by the tag walk
  tags = list(_TAG.finditer(text))
  ref: str | None = None  # phrase of the last <ref>, until its run of boxes ends
  run_end: int | None = None  # end of the last box of the current run (None: no box yet)
  i = 0
  while i < len(tags):
    m = tags[i]
    closing, name = m.group(1) == "/", m.group(2).lower()
    nxt = tags[i + 1] if i + 1 < len(tags) else None
    if closing:
      issues.append(ParseIssue("stray_tag", m.group(0), m.start()))
      i += 1
      continue
    closed = nxt is not None and nxt.group(1) == "/" and nxt.group(2).lower() == name
    body = text[m.end():nxt.start() if nxt is not None else len(text)]
    span_end = nxt.end() if closed else m.end() + len(body)
    covered.append((m.start(), span_end))
    if name == "ref":
      if not closed:
        issues.append(ParseIssue("unclosed_ref", text[m.start():span_end], m.start()))
      ref, run_end = body.strip(), None
      refs.append(ref)
    else:
      if not closed:
        issues.append(ParseIssue("unclosed_box", text[m.start():span_end], m.start()))
      if run_end is not None and _RUN_GAP.fullmatch(text, run_end, m.start()) is None:
        ref = None  # text between two boxes ends the ref's run
      run_end = span_end
      found = _boxes_from_numbers(body)
      if found is None:
        issues.append(ParseIssue("unparseable_box", text[m.start():span_end], m.start()))
      else:
        boxes.extend(TextBox(b, ref, m.start(), span_end, True) for b in found)
    i += 2 if closed else 1
  for m in _BARE.finditer(text):
    if not any(s <= m.start() < e for s, e in covered):
      b = tuple(float(g) for g in m.groups())
      boxes.append(TextBox(b, None, m.start(), m.end(), False))  # type: ignore[arg-type]
  boxes.sort(key=lambda b: b.start)
  return ParsedText(tuple(boxes), tuple(issues), tuple(refs))


# ---- BiRD's VG extraction (docs/evaluation.md) ------------------------------------------

_BIRD_BOX = re.compile(re.escape(BOX) + "(.*?)" + re.escape(BOX_END))
_BIRD_FALLBACK = re.compile(r"\(\d+,\d+\),\(\d+,\d+\)")


def bird_extract_boxes(text: str, *, fallback: bool = True) -> list[Box | None]:
  """BiRD's VG box extraction, exactly (docs/evaluation.md, "VG").

  All matches of ``<box>(.*?)</box>`` (case-sensitive, no DOTALL); when there are none and
  ``fallback`` is set, all matches of ``\\(\\d+,\\d+\\),\\(\\d+,\\d+\\)``. Each box text: drop
  "(" and ")", split on ",", ``float()`` each. A box that does not give exactly 4 floats is
  ``None`` (BiRD scores it IoU 0). BiRD applies the fallback to the model's response only:
  call with ``fallback=False`` for annotations.
  """
  found = _BIRD_BOX.findall(text)
  if not found and fallback:
    found = _BIRD_FALLBACK.findall(text)
  out: list[Box | None] = []
  for s in found:
    try:
      nums = [float(p) for p in s.replace("(", "").replace(")", "").split(",")]
    except ValueError:
      nums = []
    out.append(tuple(nums) if len(nums) == 4 else None)  # type: ignore[arg-type]
  return out
