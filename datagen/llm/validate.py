"""Checks of LLM answers against the schema and the meta; canonical box text.

An answer is rejected (:class:`Rejected`, listing every problem) when:
- it is not a JSON object of the expected shape (code fences around it are tolerated);
- any box (read with :func:`bird_jax.boxes.parse_boxes`) is not a box of the meta, is written
  without ``<box></box>``, or several boxes share one span; any ``<ref>`` phrase is not a
  meta label;
- VG: the question holds a box or does not name the structure; the answer's boxes are not
  exactly the structure's boxes;
- ROC: the question's boxes are not exactly the object's box; the answer is not the label;
- RC: the question's boxes are not exactly the object's box; the answer does not name it;
- MIA: question or answer holds a box.
Accepted text is rewritten with canonical tags and every box through
:func:`bird_jax.boxes.box_span`, so the stored text is what the one formatter writes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from bird_jax.boxes import box_span, canonical_tags, has_tags, parse_boxes, quantize_box
from datagen.meta import ImageMeta
from datagen.tasks import TurnSpec

CAPTION_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["caption"],
    "properties": {"caption": {"type": "string"}}}
ITEMS_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["items"],
    "properties": {"items": {"type": "array", "items": {
        "type": "object", "additionalProperties": False,
        "required": ["n", "question", "answer"],
        "properties": {"n": {"type": "integer"}, "question": {"type": "string"},
                       "answer": {"type": "string"}}}}}}
MAX_CAPTION = 800
_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


class Rejected(ValueError):
  def __init__(self, problems: Sequence[str]):
    super().__init__("; ".join(problems))
    self.problems = list(problems)


def parse_json(content: str) -> dict[str, Any]:
  m = _FENCE.match(content or "")
  text = m.group(1) if m else (content or "")
  try:
    obj = json.loads(text)
  except json.JSONDecodeError as e:
    raise Rejected([f"the response is not valid JSON ({e.msg} at position {e.pos})"]) from None
  if not isinstance(obj, dict):
    raise Rejected([f"the response must be a JSON object, not {type(obj).__name__}"])
  return obj


def check_caption(content: str) -> str:
  obj = parse_json(content)
  cap = obj.get("caption")
  problems = []
  if not isinstance(cap, str) or not cap.strip():
    problems.append('"caption" must be a non-empty string')
  elif len(cap) > MAX_CAPTION:
    problems.append(f'"caption" is longer than {MAX_CAPTION} characters')
  elif parse_boxes(cap).boxes or has_tags(cap):
    problems.append("the caption must not contain boxes, coordinates or tags")
  extra = sorted(set(obj) - {"caption"})
  if extra:
    problems.append(f"unexpected keys {extra}")
  if problems:
    raise Rejected(problems)
  return cap.strip()


class _Text:
  """One question or answer: canonical tags, its boxes as meta indices, and problems."""

  def __init__(self, text: str, meta: ImageMeta, where: str, problems: list[str]):
    self.text = canonical_tags(text.strip())
    self.boxes: list[tuple[int, int, int, int]] = []
    self.spans: list[tuple[int, int, int]] = []  # (start, end, object index)
    known = {quantize_box(o.box): i for i, o in reversed(list(enumerate(meta.objects)))}
    parsed = parse_boxes(self.text)
    for issue in parsed.issues:
      problems.append(f"{where}: malformed box or tag text {issue.text!r}")
    seen_spans: set[tuple[int, int]] = set()
    for b in parsed.boxes:
      coords = tuple(int(v) if float(v).is_integer() else -1 for v in b.coords)
      if not b.tagged:
        problems.append(f"{where}: box {b.coords} is not inside <box></box>")
      elif (b.start, b.end) in seen_spans:
        problems.append(f"{where}: several boxes in one <box></box>")
      elif coords not in known:
        problems.append(f"{where}: box {box_text(b.coords)} is not a box of the meta information")
      else:
        self.boxes.append(coords)
        self.spans.append((b.start, b.end, known[coords]))
      seen_spans.add((b.start, b.end))
    labels = {label.lower() for label in meta.labels}
    for phrase in parsed.refs:
      if phrase.strip().lower() not in labels:
        problems.append(f"{where}: <ref>{phrase}</ref> is not a structure of the meta information")
    if "<img>" in self.text.lower():
      problems.append(f"{where}: must not contain <img>")

  def canonical(self, meta: ImageMeta) -> str:
    out = self.text
    for start, end, i in sorted(self.spans, reverse=True):
      out = out[:start] + box_span(meta.objects[i].box) + out[end:]
    return out


def box_text(coords: Sequence[float]) -> str:
  return "({:g},{:g}),({:g},{:g})".format(*coords)


def check_items(content: str, meta: ImageMeta, requests: Sequence[tuple[int, TurnSpec]]
                ) -> list[tuple[str, str]]:
  """(question, answer) per request, in request order; Rejected lists every problem."""
  obj = parse_json(content)
  items = obj.get("items")
  if not isinstance(items, list):
    raise Rejected(['the response must have a list "items"'])
  problems: list[str] = []
  by_n: dict[int, dict] = {}
  for k, it in enumerate(items):
    if not (isinstance(it, dict) and isinstance(it.get("n"), int)
            and isinstance(it.get("question"), str) and isinstance(it.get("answer"), str)):
      problems.append(f"items[{k}] must be {{\"n\": int, \"question\": str, \"answer\": str}}")
    elif it["n"] in by_n:
      problems.append(f"request {it['n']} is answered twice")
    else:
      by_n[it["n"]] = it
  wanted = [n for n, _ in requests]
  missing = [n for n in wanted if n not in by_n]
  extra = sorted(set(by_n) - set(wanted))
  if missing:
    problems.append(f"requests {missing} have no item")
  if extra:
    problems.append(f"items {extra} answer no request")
  out = []
  for n, spec in requests:
    if n in by_n:
      out.append(_check_one(n, spec, by_n[n], meta, problems))
  if problems:
    raise Rejected(problems)
  return out


def _check_one(n: int, spec: TurnSpec, item: dict, meta: ImageMeta, problems: list[str]
               ) -> tuple[str, str]:
  q = _Text(item["question"], meta, f"request {n} question", problems)
  a = _Text(item["answer"], meta, f"request {n} answer", problems)
  if not q.text or not a.text:
    problems.append(f"request {n}: empty question or answer")
  want = sorted(quantize_box(meta.objects[j].box) for j in spec.objects)
  label = spec.label.lower()
  if spec.task == "vg":
    if q.boxes:
      problems.append(f"request {n} (vg): the question must not contain a box")
    if label not in q.text.lower():
      problems.append(f"request {n} (vg): the question must name {spec.label!r}")
    if sorted(set(a.boxes)) != sorted(set(want)) or len(a.boxes) != len(want):
      problems.append(f"request {n} (vg): the answer must give exactly the box(es) "
                      f"{[box_text(b) for b in want]} of {spec.label!r}")
  elif spec.task in ("roc", "rc"):
    if q.boxes != want:
      problems.append(f"request {n} ({spec.task}): the question must contain exactly the box "
                      f"{box_text(want[0])}")
    if spec.task == "roc":
      if a.text.rstrip(".").strip().lower() != label:
        problems.append(f"request {n} (roc): the answer must be only the name "
                        f"{spec.label.capitalize()!r}")
    elif label not in a.text.lower():
      problems.append(f"request {n} (rc): the answer must name {spec.label!r}")
  elif q.boxes or a.boxes:
    problems.append(f"request {n} (mia): no boxes in the question or answer")
  answer = spec.label[:1].upper() + spec.label[1:] + "." if spec.task == "roc" else \
      a.canonical(meta)
  return q.canonical(meta), answer
