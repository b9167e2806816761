"""Records from meta + text, their checks, chunk shards, and the final Med-GRIT files.

A record's image is ``<id>.png`` (the SA-Med2D stem, so BiRD derives the modality from the
file name); the first user turn starts with ``Picture 1: <img><id>.png</img>\\n``.
:func:`verify_boxes` checks that every box written in a record's conversations is a box of
its meta (compared as the 0..999 integers of :func:`bird_jax.boxes.quantize_box`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from bird_jax.boxes import parse_boxes, quantize_box
from bird_jax.chatml import image_prompt
from bird_jax.data.medgrit import export_medgrit_json
from bird_jax.data.records import Object, Provenance, Record, RecordError, Turn
from bird_jax.vocabulary import TASKS
from bird_jax.data.shards import read_shard, write_shards
from datagen.llm.base import Generation
from datagen.meta import ImageMeta

TASK_FILE_NAMES = {"vg": "VG", "roc": "ROC", "rc": "RC", "mia": "MIA"}


def build_record(meta: ImageMeta, gen: Generation, image_bytes: bytes | None) -> Record:
  """The validated record of one image (RecordError names the image and what is wrong)."""
  image = meta.id + ".png"
  turns: list[Turn] = []
  for i, qa in enumerate(gen.qas):
    prefix = image_prompt([image]) if i == 0 else ""
    turns += [Turn("user", prefix + qa.question), Turn("assistant", qa.answer)]
  rec = Record(
      id=meta.id, image=image, modality=meta.modality, conversations=tuple(turns),
      tasks=tuple(qa.task for qa in gen.qas), width=meta.width, height=meta.height,
      region=meta.region, orientation=meta.orientation, dataset=meta.dataset,
      case_id=meta.case_id, objects=tuple(Object(o.label, tuple(o.box)) for o in meta.objects),
      caption=gen.caption, provenance=Provenance(gen.backend, gen.model, gen.prompt_version),
      image_bytes=image_bytes)
  rec.validate(where="datagen")
  verify_boxes(rec)
  return rec


def verify_boxes(rec: Record) -> None:
  """Every box in the conversations (tagged or bare) must be one of the record's objects."""
  known = {quantize_box(o.box) for o in rec.objects}
  for i, turn in enumerate(rec.conversations):
    for b in parse_boxes(turn.value).boxes:
      if tuple(int(v) for v in b.coords) not in known or any(v != int(v) for v in b.coords):
        raise RecordError(f"record {rec.id!r}: conversations[{i}] has box {b.coords} that is "
                          "not a box of its objects")


def is_negative(task: str, answer: str) -> bool:
  """A VG answer without any box: an absent-structure (negative) question."""
  return task == "vg" and not parse_boxes(answer).boxes


def qa_pairs(rec: Record) -> list[tuple[str, str, str]]:
  """(task, question without the image prefix, answer) per user turn."""
  prefix = image_prompt([rec.image])
  out = []
  for k, task in enumerate(rec.tasks):
    q, a = rec.conversations[2 * k].value, rec.conversations[2 * k + 1].value
    out.append((task, q[len(prefix):] if q.startswith(prefix) else q, a))
  return out


def chunk_name(side: str, k: int) -> str:
  """The shard name of chunk `k` of `side` (train or test), e.g. ``train-c00003``; its file in
  a folder is :func:`chunk_shard`."""
  return f"{side}-c{k:05d}"


def chunk_shard(folder: str | os.PathLike, name: str) -> Path:
  """The file of the one shard named `name` (:func:`chunk_name`) in `folder`."""
  return Path(folder) / f"{name}-00000-of-00001.array_record"


def write_chunk_shards(records: Sequence[Record], folder: str | os.PathLike, name: str) -> None:
  """One shard, :func:`chunk_shard` (none, and any stale one removed, when there are no
  records)."""
  if records:
    write_shards(records, Path(folder), name=name, num_shards=1, progress=False)
  else:
    chunk_shard(folder, name).unlink(missing_ok=True)


def iter_chunk_records(paths: Iterable[Path]) -> Iterable[Record]:
  for p in paths:
    if p.exists():
      yield from read_shard(p)


def single_turn_records(records: Iterable[Record], task: str) -> Iterable[Record]:
  """BiRD-style evaluation entries: one question each, negatives left out."""
  for rec in records:
    for t, q, a in qa_pairs(rec):
      if t == task and not is_negative(t, a):
        yield Record(id=rec.id, image=rec.image, modality=rec.modality,
                     conversations=(Turn("user", image_prompt([rec.image]) + q),
                                    Turn("assistant", a)), tasks=(task,))


def export_json_files(train: list[Path], test: list[Path], folder: str | os.PathLike
                      ) -> dict[str, int]:
  """train.json, test.json and test_{VG,ROC,RC,MIA}.json (Med-GRIT format); entry counts."""
  folder = Path(folder)
  counts = {"train.json": export_medgrit_json(iter_chunk_records(train), folder / "train.json"),
            "test.json": export_medgrit_json(iter_chunk_records(test), folder / "test.json")}
  for task in TASKS:
    name = f"test_{TASK_FILE_NAMES[task]}.json"
    counts[name] = export_medgrit_json(single_turn_records(iter_chunk_records(test), task),
                                       folder / name)
  return counts
