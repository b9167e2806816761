"""An HTML gallery of evaluated samples: the image with its boxes drawn, and the Q/A text.

Colours (bird_jax/draw.py): green = reference boxes (from the annotation), red = predicted boxes
(from the post-processed response, with BiRD's extraction rules: what VG scored), yellow = the
region a question refers to (ROC/RC). Box text coordinates (0..1000) map to pixels as
``v / 1000 * size``; absurd boxes are clipped to the canvas and non-finite ones skipped. A missing image is drawn as
a grey canvas saying so: the gallery never fails on one sample.

Samples are picked per task round-robin over the modalities, in file order, so every modality
present shows up.
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from bird_jax.boxes import bird_extract_boxes, parse_boxes
from bird_jax.chatml import find_image_paths
from bird_jax.draw import PREDICTED, QUESTION, REFERENCE, css, draw_box
from bird_jax.evaluation.predictions import Prediction
from bird_jax.evaluation.scoring import TaskScores
from bird_jax.vocabulary import MODALITIES, modality_of
from bird_jax.vocabulary import TASK_NAMES

THUMB = 320


def pick_samples(preds: Sequence[Prediction], n: int) -> list[int]:
  """Up to n indices, round-robin over the modalities (then unknown prefixes), file order."""
  queues: dict[str, list[int]] = {}
  for i, p in enumerate(preds):
    queues.setdefault(modality_of(p.image) or "?", []).append(i)
  order = [m for m in MODALITIES if m in queues] + (["?"] if "?" in queues else [])
  out: list[int] = []
  depth = 0
  while len(out) < n and any(depth < len(queues[m]) for m in order):
    out += [queues[m][depth] for m in order if depth < len(queues[m])]
    depth += 1
  return sorted(out[:n])


def _canvas(image_path: Path | None, missing: str) -> tuple[Image.Image, str | None]:
  problem = missing
  if image_path is not None:
    try:
      with Image.open(image_path) as im:
        return im.convert("RGB").resize((THUMB, THUMB), Image.BICUBIC), None
    except (OSError, ValueError) as e:
      problem = f"cannot read image: {e}"
  im = Image.new("RGB", (THUMB, THUMB), (90, 90, 90))
  ImageDraw.Draw(im).text((10, THUMB // 2), problem[:48], fill=(255, 255, 255))
  return im, problem


def render(pred: Prediction, processed: str, image_path: Path | None,
           missing: str = "image not found") -> tuple[Image.Image, str | None]:
  """The thumbnail with question (yellow), reference (green) and predicted (red) boxes;
  `missing` is written on a grey canvas when there is no image_path."""
  im, problem = _canvas(image_path, missing)
  draw = ImageDraw.Draw(im)
  for b in parse_boxes(pred.question).boxes:
    draw_box(draw, b.coords, QUESTION, 2, im.size)
  for b in bird_extract_boxes(pred.annotation, fallback=False):
    if b is not None:
      draw_box(draw, b, REFERENCE, 3, im.size)
  for b in bird_extract_boxes(processed, fallback=True)[:50]:
    if b is not None:
      draw_box(draw, b, PREDICTED, 2, im.size)
  return im, problem


def _question_text(question: str) -> str:
  for path in find_image_paths(question):
    question = question.replace(f"<img>{path}</img>", f"[image {path}]")
  return question


_STYLE = """body{font-family:sans-serif;margin:1em;background:#fafafa}
.card{display:inline-block;vertical-align:top;width:340px;margin:6px;padding:8px;background:#fff;
border:1px solid #ddd;border-radius:4px;font-size:12px}
.card img{width:320px;height:320px}.k{color:#777}pre{white-space:pre-wrap;margin:2px 0;
background:#f3f3f3;padding:3px}.ok{color:#1a7f37}.bad{color:#c62828}"""


def write_gallery(out_dir: str | os.PathLike,
                  tasks: Mapping[str, tuple[Sequence[Prediction], TaskScores]],
                  find_image: Callable[[str], Path] | None, per_task: int = 16) -> str:
  """Writes <out_dir>/index.html and one PNG per shown sample; returns the HTML path."""
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  parts = ["<!doctype html><html><head><meta charset='utf-8'><title>bird_jax gallery</title>",
           f"<style>{_STYLE}</style></head><body><h1>Evaluation gallery</h1>",
           f"<p>Boxes: <b style='color:{css(REFERENCE)}'>reference</b>, "
           f"<b style='color:{css(PREDICTED)}'>predicted</b> (post-processed response, BiRD's "
           "extraction), <b style='color:rgb(200,160,0)'>region in the question</b>.</p>"]
  for task, (preds, scores) in tasks.items():
    parts.append(f"<h2>{TASK_NAMES[task]} ({len(preds)} predictions)</h2>")
    for i in pick_samples(preds, per_task):
      p = preds[i]
      path, missing = None, "no image folder given (config.images)"
      if find_image is not None:
        try:
          path = find_image(p.image)
        except FileNotFoundError:
          missing = "image not found"
        except ValueError:  # absolute, `..` or leaving its folder: never read
          missing = "image path refused"
      im, problem = render(p, scores.processed[i], path, missing)
      name = f"{task}_{i:06d}.png"
      im.save(out / name)
      verdict = scores.sample_scores[i]
      cls = "ok" if verdict.startswith("correct") or (
          "boxes hit" in verdict and not verdict.startswith("0/")) else "bad"
      e = html.escape
      parts.append(
          f"<div class='card'><img src='{name}' alt='{e(p.image)}'>"
          f"<div><span class='k'>id</span> {e(p.id)} <span class='k'>modality</span> "
          f"{e(modality_of(p.image) or 'unknown')}</div>"
          + (f"<div class='bad'>{e(problem)}</div>" if problem else "")
          + f"<div class='k'>question</div><pre>{e(_question_text(p.question))}</pre>"
          f"<div class='k'>reference</div><pre>{e(p.annotation)}</pre>"
          f"<div class='k'>response (raw)</div><pre>{e(p.response)}</pre>"
          "<div class='k'>response (post-processed, scored)</div>"
          f"<pre>{e(scores.processed[i])}</pre>"
          + (f"<div class='{cls}'>{e(verdict)}</div>" if verdict else "") + "</div>")
  parts.append("</body></html>")
  index = out / "index.html"
  index.write_text("\n".join(parts), encoding="utf-8")
  return str(index)
