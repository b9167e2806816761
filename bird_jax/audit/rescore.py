"""An eval folder scored again: its prediction files through the eval's own scoring
(bird_jax/evaluation/cli.py `score_predictions`), every figure compared with report.json.

On the platform that wrote the report (environment.same_numerics) every figure must be equal;
on another one a figure within TOLERANCE (relative, percent units) is noted, not a mismatch.
What was scored (`source`) and the notes (they name the files as given) are not figures.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ml_collections

from bird_jax import manifest as M

TOLERANCE = 1e-6
SKIPPED = ("source", "notes")
_ABSENT = object()


def check_report(folder: Path, data: dict[str, Any], findings, same_platform: bool) -> None:
  from bird_jax.evaluation.cli import score_predictions
  from bird_jax.evaluation.predictions import read_predictions
  from bird_jax.evaluation.report import report_json

  try:
    recorded = json.loads((folder / "report.json").read_text(encoding="utf-8"))
  except (OSError, ValueError) as e:
    findings.mismatches.append(f"report.json: cannot be read to compare its figures ({e})")
    return
  c = ml_collections.ConfigDict(data["config"])
  scores = {}
  for task, key in data.get("predictions", {}).items():
    path = M.path_of(folder, key)
    try:
      scores[task] = score_predictions(c, task, str(path), read_predictions(path))
    except (OSError, ValueError) as e:
      findings.mismatches.append(f"report.json: {task} cannot be scored again: {e}")
  if len(scores) < len(data.get("predictions", {})):
    return
  now = json.loads(json.dumps(report_json(scores, recorded.get("source"))))
  close = 0
  for where, a, b in compare(recorded, now):
    if a is _ABSENT or b is _ABSENT:
      findings.mismatches.append(f"report.json {where}: "
                                 + ("not in the report" if a is _ABSENT else "not rescored"))
    elif not same_platform and _near(a, b):
      close += 1
    else:
      findings.mismatches.append(f"report.json {where}: recorded {a!r}, rescored {b!r}")
  figures = sum(1 for _ in _numbers(recorded))
  findings.notes.append(f"report.json: {len(scores)} task(s) scored again, {figures} figure(s) "
                        "compared" + (f"; {close} differ within {TOLERANCE:g} (recorded on "
                                      "another platform)" if close else ""))


def compare(a: Any, b: Any, where: str = "") -> Iterator[tuple[str, Any, Any]]:
  """(JSON path, recorded, rescored) for each leaf that differs."""
  if isinstance(a, dict) and isinstance(b, dict):
    for k in sorted(set(a) | set(b), key=str):
      if k not in SKIPPED:
        yield from compare(a.get(k, _ABSENT), b.get(k, _ABSENT), f"{where}.{k}" if where else k)
  elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
    for i, (x, y) in enumerate(zip(a, b)):
      yield from compare(x, y, f"{where}[{i}]")
  elif a != b or type(a) is not type(b) and not _numeric(a, b):
    yield where, a, b


def _numeric(a: Any, b: Any) -> bool:
  return all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))


def _near(a: Any, b: Any) -> bool:
  return _numeric(a, b) and math.isclose(a, b, rel_tol=TOLERANCE, abs_tol=TOLERANCE)


def _numbers(d: Any) -> Iterator[Any]:
  if isinstance(d, dict):
    for k, v in d.items():
      if k not in SKIPPED:
        yield from _numbers(v)
  elif isinstance(d, list):
    for v in d:
      yield from _numbers(v)
  elif _numeric(d, d):
    yield d
