"""The record schema (docs/data.md): one record per image, validated, with its byte codec.

A record holds an image (a path relative to an image root, and/or the encoded file bytes
when it lives in a self-contained shard), its metadata, the instance boxes it was generated
from and the conversations about it, with the task of every user turn.

    rec = Record(id="ct_00--AbdomenCT1K--Case_00011--x_0040", image="ct_00--...x_0040.png",
                 modality="ct", conversations=(Turn("user", "Picture 1: <img>...</img>\\n..."),
                                               Turn("assistant", "...")), tasks=("vg",))
    rec.validate()
    assert decode_record(encode_record(rec)) == rec

Boxes are normalised ``[x1, y1, x2, y2]`` floats in [0, 1] with x1 < x2 and y1 < y2. Boxes
written in conversation text are checked with :func:`bird_jax.boxes.parse_boxes` (the one
parser): every ``<box>`` span must hold well-formed coordinates inside [0, 1000].
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bird_jax import boxes as boxes_lib
from bird_jax.chatml import CONVERSATION_ROLES, find_image_paths
from bird_jax.vocabulary import MODALITIES, TASKS

# Shard entry layout: MAGIC, uint32 little-endian header length, UTF-8 JSON header, image bytes.
MAGIC = b"BJREC1\n"
_LEN = struct.Struct("<I")


class RecordError(ValueError):
  """A record that breaks the schema; the message names the record (and file) and field."""


@dataclasses.dataclass(frozen=True)
class Object:
  """One annotated instance: its class label and normalised box [x1, y1, x2, y2]."""

  label: str
  box: tuple[float, float, float, float]


@dataclasses.dataclass(frozen=True)
class Turn:
  """One conversation turn; ``role`` is the Med-GRIT ``from`` field (user | assistant)."""

  role: str
  value: str


@dataclasses.dataclass(frozen=True)
class Provenance:
  """Where the conversations came from (generator backend, its model, prompt version)."""

  backend: str = ""
  model: str = ""
  prompt_version: str = ""


@dataclasses.dataclass(frozen=True)
class Record:
  id: str
  image: str  # path relative to the image root (also the file name kept inside shards)
  modality: str  # one of MODALITIES
  conversations: tuple[Turn, ...]
  tasks: tuple[str, ...]  # one per user turn, each in TASKS
  width: int | None = None  # pixels of the source image; None when unknown
  height: int | None = None
  region: str = ""
  orientation: str = ""
  dataset: str = ""
  case_id: str = ""
  objects: tuple[Object, ...] = ()
  caption: str = ""
  provenance: Provenance = Provenance()
  image_bytes: bytes | None = dataclasses.field(default=None, repr=False)

  def replace(self, **kw: Any) -> "Record":
    return dataclasses.replace(self, **kw)

  def validate(self, where: str = "") -> "Record":
    """Checks every field; raises :class:`RecordError` naming ``where``, the id and field."""
    validate_record(self, where)
    return self

  def to_dict(self) -> dict[str, Any]:
    """JSON-able dict of every field except ``image_bytes``."""
    d = dataclasses.asdict(self)
    d.pop("image_bytes")
    d["conversations"] = [{"from": t.role, "value": t.value} for t in self.conversations]
    d["objects"] = [{"label": o.label, "box": list(o.box)} for o in self.objects]
    d["tasks"] = list(self.tasks)
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any], where: str = "") -> "Record":
    """Inverse of :meth:`to_dict`; field type errors name the record and field."""
    rid = d.get("id", "?")
    try:
      known = {f.name for f in dataclasses.fields(cls)} - {"image_bytes"}
      unknown = sorted(set(d) - known)
      if unknown:
        raise TypeError(f"unknown fields {unknown}")
      kw = dict(d)
      kw["conversations"] = tuple(Turn(t["from"], t["value"]) for t in d.get("conversations", ()))
      kw["objects"] = tuple(Object(o["label"], tuple(float(v) for v in o["box"]))
                            for o in d.get("objects", ()))
      kw["tasks"] = tuple(d.get("tasks", ()))
      kw["provenance"] = Provenance(**d.get("provenance", {}))
      return cls(**kw)
    except (TypeError, KeyError, ValueError) as e:
      raise RecordError(f"{_where(where, rid)}: malformed record dict: {e}") from None


def _where(where: str, rid: Any) -> str:
  return f"{where}: record {rid!r}" if where else f"record {rid!r}"


def validate_record(r: Record, where: str = "") -> None:
  """Schema checks of docs/data.md; the first problem found is raised as RecordError."""
  loc = _where(where, r.id)

  def fail(field: str, msg: str) -> None:
    raise RecordError(f"{loc}: field {field!r}: {msg}")

  if not isinstance(r.id, str) or not r.id:
    fail("id", "must be a non-empty string")
  if not isinstance(r.image, str) or not r.image:
    fail("image", "missing (a relative path or file name is required)")
  try:
    check_relative_path(r.image)
  except ValueError as e:
    fail("image", str(e))
  if r.image_bytes is not None and (not isinstance(r.image_bytes, bytes) or not r.image_bytes):
    fail("image_bytes", "must be non-empty bytes when present")
  if r.modality not in MODALITIES:
    fail("modality", f"{r.modality!r} is not one of {MODALITIES}")
  for name in ("width", "height"):
    v = getattr(r, name)
    if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
      fail(name, f"{v!r} must be a positive int or None")
  for name in ("region", "orientation", "dataset", "case_id", "caption"):
    if not isinstance(getattr(r, name), str):
      fail(name, f"{getattr(r, name)!r} must be a string")
  for i, o in enumerate(r.objects):
    if not isinstance(o.label, str) or not o.label:
      fail(f"objects[{i}].label", "must be a non-empty string")
    err = box_problem(o.box)
    if err:
      fail(f"objects[{i}].box", err)
  _validate_conversations(r, fail)


def box_problem(box: Sequence[float]) -> str | None:
  """Why ``box`` is not a valid normalised box, or None."""
  if len(box) != 4:
    return f"{list(box)!r} must have 4 numbers [x1, y1, x2, y2]"
  x1, y1, x2, y2 = box
  if not all(isinstance(v, (int, float)) and math.isfinite(v) and 0.0 <= v <= 1.0 for v in box):
    return f"{list(box)!r} has a coordinate outside [0, 1]"
  if not (x1 < x2 and y1 < y2):
    return f"{list(box)!r} needs x1 < x2 and y1 < y2"
  return None


def _validate_conversations(r: Record, fail) -> None:
  turns = r.conversations
  if not turns:
    fail("conversations", "empty")
  for i, t in enumerate(turns):
    want = CONVERSATION_ROLES[i % 2]
    if t.role != want:
      fail(f"conversations[{i}].from", f"{t.role!r}: turns must alternate user/assistant "
           f"starting with user (expected {want!r})")
    if not isinstance(t.value, str):
      fail(f"conversations[{i}].value", "must be a string")
  if len(turns) % 2:
    fail("conversations", f"{len(turns)} turns: the last user turn has no assistant answer")
  spans = [(i, p) for i, t in enumerate(turns) for p in find_image_paths(t.value)]
  if len(spans) != 1:
    fail("conversations", f"{len(spans)} <img> spans; one record holds exactly one image")
  if turns[spans[0][0]].role != "user":
    fail(f"conversations[{spans[0][0]}]", "the <img> span must be in a user turn")
  for i, t in enumerate(turns):
    parsed = boxes_lib.parse_boxes(t.value)
    if parsed.issues:
      issue = parsed.issues[0]
      fail(f"conversations[{i}].value", f"bad box text ({issue.kind}): {issue.text!r}")
    for b in parsed.boxes:
      if b.tagged and not b.valid:
        fail(f"conversations[{i}].value", f"box {b.coords} is outside [0, 1000] or has "
             "x1 >= x2 or y1 >= y2")
  n_user = len(turns) // 2
  if len(r.tasks) != n_user:
    fail("tasks", f"{len(r.tasks)} tasks for {n_user} user turns (one task per user turn)")
  for i, task in enumerate(r.tasks):
    if task not in TASKS:
      fail(f"tasks[{i}]", f"{task!r} is not one of {TASKS}")


def check_relative_path(path: str) -> None:
  """Raises ValueError unless ``path`` is relative and has no ``..`` component."""
  p = path.replace("\\", "/")
  if p.startswith("/") or re.match(r"^[A-Za-z]:", p) or os.path.isabs(path):
    raise ValueError(f"image path {path!r} must be relative to the image root")
  if ".." in p.split("/"):
    raise ValueError(f"image path {path!r} must not contain '..'")


# ---- byte codec (one ArrayRecord entry) ---------------------------------------------------


def encode_record(r: Record) -> bytes:
  header = json.dumps(r.to_dict(), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
  return MAGIC + _LEN.pack(len(header)) + header + (r.image_bytes or b"")


def decode_record(data: bytes, where: str = "") -> Record:
  """Inverse of :func:`encode_record` (not validated; call ``.validate()``)."""
  n = len(MAGIC)
  if data[:n] != MAGIC or len(data) < n + _LEN.size:
    raise RecordError(f"{where or 'entry'}: not a bird_jax record (bad magic {data[:n]!r})")
  (hlen,) = _LEN.unpack_from(data, n)
  start = n + _LEN.size
  if start + hlen > len(data):
    raise RecordError(f"{where or 'entry'}: truncated record header ({hlen} bytes announced, "
                      f"{len(data) - start} present)")
  try:
    d = json.loads(data[start:start + hlen].decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise RecordError(f"{where or 'entry'}: record header is not JSON: {e}") from None
  image = data[start + hlen:]
  return Record.from_dict(d, where).replace(image_bytes=image or None)


# ---- image root ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ImageRoot:
  """A folder that path-referenced images must stay inside.

  Absolute paths, ``..`` components and symlinks resolving outside the root are rejected.
  """

  root: str

  def resolve(self, rel: str) -> Path:
    check_relative_path(rel)
    base = Path(self.root).resolve()
    path = (base / rel).resolve()
    if path != base and base not in path.parents:
      raise ValueError(f"image path {rel!r} resolves to {path}, outside the image root {base}")
    return path

  def read(self, rel: str) -> bytes:
    path = self.resolve(rel)
    try:
      return path.read_bytes()
    except OSError as e:
      raise FileNotFoundError(f"image {rel!r} under {self.root}: {e.strerror or e}") from None


def image_bytes_of(r: Record, root: ImageRoot | None) -> bytes:
  """The record's encoded image: embedded bytes, else read through ``root``."""
  if r.image_bytes is not None:
    return r.image_bytes
  if root is None:
    raise FileNotFoundError(f"image {r.image!r} is not embedded and no image root was given")
  return root.read(r.image)
