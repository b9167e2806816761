"""BiRD's evaluation files: one Med-GRIT JSON file per task, found by name in a data folder.

A test file is the released Med-GRIT format (docs/data.md): a list of ``{"id", "conversations":
[{"from": "user", "value": "Picture 1: <img>NAME.png</img>\\n..."}, {"from": "assistant",
"value": ...}, ...]}``. Every (user, assistant) pair is one sample: its question is the user text
as written (a later turn without an image span gets ``Picture 1: <img>IMAGE</img>\\n`` put in
front, so each sample is answered on its own, single-turn, as BiRD evaluates), its annotation
the assistant text. The sample's image is the first ``<img>`` path of the question, else
``id + ".png"``; its file-name prefix is the modality. Image paths are relative to the image
folders and confined to them as training's are (``bird_jax.data.records.ImageRoot``): a test
record with an absolute path or a ``..`` component is refused, naming the file and record.

File names: the task is read from the name's words (split on non-alphanumerics,
case-insensitive): ``vg``; ``roc`` or ``ro``; ``rc`` or ``gc``; ``mia`` or ``mii`` (BiRD's
script names eval_VG, eval_RO, eval_GC, eval_MII) - e.g. ``test_VG.json``, ``roc.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from bird_jax.chatml import find_image_paths, image_prompt
from bird_jax.data.records import ImageRoot, check_relative_path
from bird_jax.vocabulary import TASKS

TASK_WORDS = {"vg": "vg", "roc": "roc", "ro": "roc", "rc": "rc", "gc": "rc", "mia": "mia",
              "mii": "mia"}


class EvalDataError(ValueError):
  """A test file or folder that cannot be used; the message names it."""


@dataclasses.dataclass(frozen=True)
class EvalSample:
  id: str
  image: str  # the image path as written in the question (prefix = modality)
  question: str  # the user text, with its image span
  annotation: str  # the reference answer


def task_of_filename(name: str) -> str | None:
  words = {w for w in re.split(r"[^0-9a-z]+", Path(name).stem.lower()) if w}
  found = {TASK_WORDS[w] for w in words if w in TASK_WORDS}
  return found.pop() if len(found) == 1 else None


def find_test_files(data_dir: str | os.PathLike, tasks: Sequence[str] = TASKS
                    ) -> dict[str, Path]:
  """{task: file} for the requested tasks among the *.json / *.jsonl files of ``data_dir``."""
  root = Path(data_dir)
  if not root.is_dir():
    raise EvalDataError(f"{root}: not a folder (expected one holding the per-task test files)")
  by_task: dict[str, list[Path]] = {}
  for path in sorted(root.iterdir()):
    if path.suffix.lower() in (".json", ".jsonl") and path.is_file():
      task = task_of_filename(path.name)
      if task is not None:
        by_task.setdefault(task, []).append(path)
  out = {}
  for task in tasks:
    if task not in TASKS:
      raise EvalDataError(f"unknown task {task!r}; tasks are {TASKS}")
    files = by_task.get(task, [])
    if len(files) > 1:
      raise EvalDataError(f"{root}: several test files for task {task}: "
                          f"{[f.name for f in files]}; keep one or name them in the config")
    if not files:
      raise EvalDataError(f"{root}: no test file for task {task} (looked for *.json names "
                          f"with a word {sorted(w for w, t in TASK_WORDS.items() if t == task)}; "
                          f"found {[p.name for p in sorted(root.iterdir())][:20]})")
    out[task] = files[0]
  return out


def _entries(path: Path) -> list:
  text = path.read_text(encoding="utf-8")
  try:
    if path.suffix.lower() == ".jsonl":
      return [json.loads(line) for line in text.splitlines() if line.strip()]
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise EvalDataError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(data, list):
    raise EvalDataError(f"{path}: expected a JSON list of Med-GRIT entries, got "
                        f"{type(data).__name__}")
  return data


def read_test_file(path: str | os.PathLike) -> list[EvalSample]:
  """Samples of a Med-GRIT JSON (or JSONL) test file, one per (user, assistant) pair."""
  path = Path(path)
  samples = []
  for i, entry in enumerate(_entries(path)):
    where = f"{path}[{i}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
      raise EvalDataError(f"{where}: expected an object with a string 'id'")
    turns = entry.get("conversations")
    if not isinstance(turns, list) or not all(
        isinstance(t, dict) and isinstance(t.get("value"), str) for t in turns):
      raise EvalDataError(f"{where} (id {entry['id']!r}): 'conversations' must be a list of "
                          "{'from', 'value'} objects")
    pairs = [(turns[k], turns[k + 1]) for k in range(0, len(turns) - 1, 2)]
    if any(q.get("from") != "user" or a.get("from") != "assistant" for q, a in pairs):
      raise EvalDataError(f"{where} (id {entry['id']!r}): turns must alternate user, assistant")
    image = None
    for k, (q, a) in enumerate(pairs):
      question = q["value"]
      paths = find_image_paths(question)
      if paths:
        image = image or paths[0]
      else:
        image = image or entry["id"] + ".png"
        question = image_prompt([image]) + question
      for p in paths or [image]:
        try:
          check_relative_path(p)
        except ValueError as e:
          raise EvalDataError(f"{where} (id {entry['id']!r}): {e}") from None
      sid = entry["id"] if len(pairs) == 1 else f"{entry['id']}#{k}"
      samples.append(EvalSample(sid, paths[0] if paths else image, question, a["value"]))
  return samples


class ImageFinder:
  """Finds an image path from a question under one of several roots (as written, then by
  base name), each root an ``ImageRoot``: an absolute path or a ``..`` component raises
  ValueError; a symlink leaving its root is not followed (FileNotFoundError says so when
  nothing else is found)."""

  def __init__(self, roots: Sequence[str | os.PathLike]):
    self.roots = [Path(r) for r in roots if r]

  def __call__(self, image: str) -> Path:
    check_relative_path(image)
    refused = []
    for root in self.roots:
      for candidate in (image, Path(image).name):
        try:
          path = ImageRoot(str(root)).resolve(candidate)
        except ValueError as e:  # a symlink that leaves the root
          refused.append(str(e))
          continue
        if path.is_file():
          return path
    why = f" ({refused[0]}: not followed)" if refused else ""
    raise FileNotFoundError(f"image {image!r} not found under {[str(r) for r in self.roots]}"
                            f"{why}")


def image_exists(find_image: Callable[[str], Path], path: str) -> bool:
  """Whether `find_image` finds `path`."""
  try:
    find_image(path)
    return True
  except FileNotFoundError:
    return False
