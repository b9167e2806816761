"""Versioned prompt templates (``datagen/prompts/<version>/*.txt``) and the meta they show.

A version is a folder holding ``caption_system.txt``, ``caption_user.txt``,
``conversation_system.txt``, ``conversation_user.txt`` and ``retry.txt``; placeholders use
``string.Template`` syntax (``$meta``, ``$caption``, ``$requests``, ``$errors``). The version
name is stored in every record's provenance; changing a prompt means adding a version.
"""

from __future__ import annotations

import dataclasses
import json
import string
from pathlib import Path

from bird_jax.boxes import box_span
from datagen import language as lang
from datagen.meta import ImageMeta
from datagen.tasks import TurnSpec

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"
FILES = ("caption_system", "caption_user", "conversation_system", "conversation_user", "retry")


@dataclasses.dataclass(frozen=True)
class Prompts:
  version: str
  texts: dict[str, str]

  def fill(self, name: str, **values: str) -> str:
    return string.Template(self.texts[name]).substitute(**values).strip()


def load_prompts(version: str, folder: Path = PROMPTS_DIR) -> Prompts:
  root = folder / version
  if not root.is_dir():
    known = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    raise ValueError(f"prompt version {version!r} not found in {folder} (known: {known})")
  texts = {}
  for name in FILES:
    path = root / f"{name}.txt"
    if not path.is_file():
      raise ValueError(f"prompt version {version!r}: {path} is missing")
    texts[name] = path.read_text(encoding="utf-8")
  return Prompts(version, texts)


def meta_text(meta: ImageMeta) -> str:
  """The paper's meta block: modality, region, orientation, then one line per object."""
  head = [f"Image Modality: {lang.modality_name(meta.modality)}."]
  if meta.region:
    head.append(f"Scanned Region: {meta.region.title()}.")
  if meta.orientation:
    head.append(f"Image Orientation: {meta.orientation.title()}.")
  lines = [" ".join(head)]
  for i, o in enumerate(meta.objects):
    box = ", ".join(f"{v:.3f}" for v in o.box)
    lines.append(f"Object {i}: {o.label} at [{box}], written {box_span(o.box)}; "
                 f"{lang.percent(o.area)} of the image, in the {lang.position(o.box)}.")
  notes = [f"{label}: {meta.notes[label]}" for label in meta.labels if label in meta.notes]
  if notes:
    lines.append("Appearance: " + "; ".join(notes) + ".")
  return "\n".join(lines)


def request_lines(meta: ImageMeta, specs: list[tuple[int, TurnSpec]]) -> str:
  """One JSON object per request: number, task, structure and the box(es) to use."""
  out = []
  for n, spec in specs:
    d: dict = {"n": n, "task": spec.task}
    if spec.task == "vg":
      d["structure"] = spec.label
      d["boxes"] = [box_span(meta.objects[j].box) for j in spec.objects]
    elif spec.task in ("roc", "rc"):
      d["box"] = box_span(meta.objects[spec.objects[0]].box)
      d["structure"] = spec.label
    out.append(json.dumps(d, ensure_ascii=False))
  return "\n".join(out)
