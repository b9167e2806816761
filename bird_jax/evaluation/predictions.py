"""BiRD's prediction file: JSONL, one object per line {id, image, question, annotation, response}.

``annotation`` is the reference answer, ``image`` the image file name (its prefix before the
first "_" is the modality), ``response`` the model output decoded WITHOUT skipping special
tokens and NOT post-processed (scoring applies BiRD's post-processing). The same file comes out
of BiRD's own inference, so either side can score the other's predictions.

Reading is tolerant where scoring must not crash: a missing or non-string ``response`` becomes
"" and is counted; a line that is not a JSON object, or lacks ``image`` or ``annotation``,
raises an error naming the file and line (a file like that cannot be scored meaningfully); so
does a line that is not UTF-8, with its id when the rest of the line reads as JSON.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

FIELDS = ("id", "image", "question", "annotation", "response")


@dataclasses.dataclass(frozen=True)
class Prediction:
  id: str
  image: str
  question: str
  annotation: str
  response: str

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), ensure_ascii=False)


class PredictionFileError(ValueError):
  """A prediction file that cannot be read; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class PredictionFile:
  predictions: list[Prediction]
  repaired: dict[str, int]  # problem -> number of lines (e.g. "missing response")


def _text(value: Any) -> str | None:
  if value is None:
    return None
  if isinstance(value, str):
    return value
  if isinstance(value, (int, float)):
    return str(value)
  return None


def _id_of(raw: bytes) -> str:
  """The line's id as " (id 'X')" when it reads as JSON with undecodable bytes replaced."""
  try:
    rid = json.loads(raw.decode("utf-8", errors="replace")).get("id")
  except (ValueError, AttributeError):
    return ""
  return f" (id {rid!r})" if isinstance(rid, str) else ""


def read_predictions(path: str | os.PathLike) -> PredictionFile:
  """Reads a JSONL prediction file (blank lines skipped)."""
  preds: list[Prediction] = []
  repaired: dict[str, int] = {}

  def note(problem: str) -> None:
    repaired[problem] = repaired.get(problem, 0) + 1

  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, 1):
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise PredictionFileError(f"{path}:{lineno}{_id_of(raw)}: not UTF-8 (byte "
                                  f"0x{raw[e.start]:02x} at byte {e.start})") from None
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise PredictionFileError(f"{path}:{lineno}: not valid JSON ({e})") from None
      if not isinstance(obj, dict):
        raise PredictionFileError(f"{path}:{lineno}: expected a JSON object, got "
                                  f"{type(obj).__name__}")
      for key in ("image", "annotation"):
        if _text(obj.get(key)) is None:
          raise PredictionFileError(f"{path}:{lineno}: field {key!r} is missing or not a string "
                                    f"(got {obj.get(key)!r})")
      response = _text(obj.get("response"))
      if response is None:
        note("missing or non-string response (scored as empty)")
        response = ""
      question = _text(obj.get("question"))
      if question is None:
        note("missing question")
        question = ""
      rid = _text(obj.get("id"))
      if rid is None:
        note("missing id (line number used)")
        rid = f"line{lineno}"
      preds.append(Prediction(rid, _text(obj["image"]), question, _text(obj["annotation"]),
                              response))
  return PredictionFile(preds, repaired)


def write_predictions(path: str | os.PathLike, predictions: Iterable[Prediction]) -> int:
  """Writes JSONL (UTF-8, one object per line); returns the number of lines."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  n = 0
  with open(path, "w", encoding="utf-8") as f:
    for p in predictions:
      f.write(p.to_json() + "\n")
      n += 1
  return n


def columns(preds: Sequence[Prediction]) -> tuple[list[str], list[str], list[str]]:
  """(images, annotations, responses) lists."""
  return ([p.image for p in preds], [p.annotation for p in preds], [p.response for p in preds])
