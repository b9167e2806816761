"""The released Med-GRIT JSON format (Qwen-VL finetune format) <-> records, and a shard CLI.

The format (docs/data.md) is a list of ``{"id": STEM, "conversations": [{"from": "user" |
"assistant", "value": ...}, ...]}``; the image file is ``STEM + ".png"`` and the modality is
``STEM.split("_")[0]``. Import keeps ids and conversation text verbatim, so export gives the
same JSON data back. The format holds no task labels: import infers them per user turn
(:func:`infer_task`) unless one task is given for the whole file (BiRD's evaluation files
hold one task each).

Build shards from a released file (images are read from ``--image-root`` and embedded):

    python -m bird_jax.data.medgrit import --json Med-GRIT-train.json \\
        --image-root SAMed2Dv1/images --out data/medgrit_train --num-shards 64
    python -m bird_jax.data.medgrit export --shards data/medgrit_train --json roundtrip.json

Exit codes: 0 written, 2 refused input before anything is written (one line naming the file
and the entry), 1 anything unexpected (with its traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from bird_jax import boxes as boxes_lib
from bird_jax.data.records import ImageRoot, Provenance, Record, RecordError, Turn
from bird_jax.vocabulary import TASKS
from bird_jax.data.shards import read_shards, write_shards

log = logging.getLogger(__name__)

PROVENANCE = Provenance(backend="medgrit_json")
ROC_MAX_WORDS = 8  # a box question answered in at most this many words is ROC, else RC


def infer_task(question: str, answer: str) -> str:
  """The task of one Q/A pair, from where its boxes are.

  VG: the answer holds a box, the question none. ROC / RC: the question holds a box; a short
  answer (a class name, at most ``ROC_MAX_WORDS`` words) is ROC, a longer one RC. MIA: no box
  on either side.
  """
  q_box = any(b.tagged for b in boxes_lib.parse_boxes(question).boxes)
  a_box = any(b.tagged for b in boxes_lib.parse_boxes(answer).boxes)
  if q_box:
    return "roc" if len(answer.split()) <= ROC_MAX_WORDS else "rc"
  return "vg" if a_box else "mia"


def entry_to_record(entry: Any, *, where: str, task: str | None = None,
                    image_root: ImageRoot | None = None, embed_images: bool = False) -> Record:
  """One JSON entry -> a validated Record (RecordError names ``where``, id and field)."""
  if not isinstance(entry, dict) or "id" not in entry or "conversations" not in entry:
    raise RecordError(f"{where}: expected an object with 'id' and 'conversations'")
  rid = entry["id"]
  if not isinstance(rid, str) or not rid:
    raise RecordError(f"{where}: field 'id': {rid!r} must be a non-empty string")
  convs = entry["conversations"]
  if not isinstance(convs, list) or not all(
      isinstance(t, dict) and isinstance(t.get("from"), str) and isinstance(t.get("value"), str)
      for t in convs):
    raise RecordError(f"{where}: record {rid!r}: field 'conversations': expected a list of "
                      "{'from': str, 'value': str}")
  turns = tuple(Turn(t["from"], t["value"]) for t in convs)
  if task is not None and task not in TASKS:
    raise ValueError(f"task {task!r} is not one of {TASKS}")
  tasks = tuple(task or infer_task(turns[i].value, turns[i + 1].value if i + 1 < len(turns)
                                   else "") for i in range(0, len(turns), 2))
  rec = Record(id=rid, image=rid + ".png", modality=rid.split("_")[0], conversations=turns,
               tasks=tasks, provenance=PROVENANCE)
  rec.validate(where)
  if image_root is not None:
    try:
      path = image_root.resolve(rec.image)
      with Image.open(path) as im:  # reads the header only
        width, height = im.size
      data = path.read_bytes() if embed_images else None
    except (OSError, ValueError) as e:
      raise RecordError(f"{where}: record {rid!r}: field 'image': {e}") from None
    rec = rec.replace(width=width, height=height, image_bytes=data)
  return rec


def import_medgrit_json(path: str | os.PathLike, *, task: str | None = None,
                        image_root: ImageRoot | None = None, embed_images: bool = False,
                        skip_invalid: bool = False) -> list[Record]:
  """Reads a Med-GRIT JSON file into validated records.

  ``task``: one task for every user turn (else inferred). ``image_root``: fills width and
  height from the image files (and embeds them with ``embed_images``). ``skip_invalid``:
  log and skip invalid entries instead of raising.
  """
  with open(path, encoding="utf-8") as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise RecordError(f"{path}: not valid JSON: {e}") from None
  if not isinstance(data, list):
    raise RecordError(f"{path}: expected a JSON list of entries, got {type(data).__name__}")
  extra = sorted({k for e in data if isinstance(e, dict) for k in e} - {"id", "conversations"})
  if extra:
    log.warning("%s: ignoring keys %s (the Med-GRIT format holds only id and conversations)",
                path, extra)
  out, skipped = [], 0
  for i, entry in enumerate(data):
    try:
      out.append(entry_to_record(entry, where=f"{path}[{i}]", task=task, image_root=image_root,
                                 embed_images=embed_images))
    except RecordError as e:
      if not skip_invalid:
        raise
      skipped += 1
      log.warning("skipping: %s", e)
  if skipped:
    log.warning("%s: skipped %d of %d entries", path, skipped, len(data))
  return out


def record_to_entry(r: Record) -> dict[str, Any]:
  return {"id": r.id, "conversations": [{"from": t.role, "value": t.value}
                                        for t in r.conversations]}


def export_medgrit_json(records: Iterable[Record], path: str | os.PathLike) -> int:
  """Writes records as Med-GRIT JSON (atomically); returns the number of entries."""
  entries = [record_to_entry(r) for r in records]
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  try:
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(entries, f, ensure_ascii=False, indent=1)
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)
  return len(entries)


PROG = "python -m bird_jax.data.medgrit"


def main(argv: Sequence[str] | None = None) -> None:
  """import / export; input is read and checked before anything is written (BadInput)."""
  from bird_jax.cli import ToolParser
  from bird_jax.exit_codes import refusing
  from bird_jax.data.shards import check_shards

  p = ToolParser(prog=PROG, description=__doc__,
                 formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="cmd", required=True)
  imp = sub.add_parser("import", help="Med-GRIT JSON -> self-contained ArrayRecord shards")
  imp.add_argument("--json", required=True)
  imp.add_argument("--image-root", required=True)
  imp.add_argument("--out", required=True)
  imp.add_argument("--name", default="records")
  imp.add_argument("--num-shards", type=int, default=1)
  imp.add_argument("--task", choices=TASKS, default=None)
  imp.add_argument("--skip-invalid", action="store_true")
  exp = sub.add_parser("export", help="ArrayRecord shards -> Med-GRIT JSON")
  exp.add_argument("--shards", required=True, help="directory, glob or file")
  exp.add_argument("--json", required=True)
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  if args.cmd == "import":
    with refusing(ValueError, OSError):
      root = ImageRoot(args.image_root)
      records = import_medgrit_json(args.json, task=args.task, image_root=root,
                                    skip_invalid=args.skip_invalid)
    paths = write_shards(records, args.out, name=args.name, num_shards=args.num_shards,
                         image_root=root)
    print(f"wrote {len(records)} records to {len(paths)} shards in {args.out}")
  else:
    with refusing(ValueError, OSError):
      check_shards(args.shards, name="--shards")
    n = export_medgrit_json(read_shards(args.shards), args.json)
    print(f"wrote {n} entries to {args.json}")


if __name__ == "__main__":
  from bird_jax.cli import run_tool

  run_tool(PROG, main)
