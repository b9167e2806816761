"""Run manifests: `manifest.json` in a run's output folder records what made the run.

    {"format": "bird_jax-manifest", "version": 1, "kind": "train",
     "config": {...},                                  # the resolved config
     "inputs":  {"data": {"/abs/shards/x.array_record": {"sha256": "...", "bytes": 123}}},
     "outputs": {"checkpoints/4": {"checkpoints/4/params/d/abc": {"sha256": ..., "bytes": ...}}},
     "segments": [{"start": ..., "end": ..., "argv": [...], "environment": {...}, ...}]}

Inputs and outputs are groups of files (a checkpoint step, the data shards, the report), each
file named by its path relative to the folder, or absolute when it lies outside it. Every
start of a tool on the folder appends a segment (a resumed run lists each one's environment);
a segment whose `end` is null was killed. `python -m bird_jax.audit FOLDER` checks a manifest
(docs/reproducibility.md).

Hashing never holds up the work: `hash_later` hashes a group in one background thread (a
checkpoint step once its save is final, the inputs while the run starts), `HashingWriter`
hashes a file's bytes as they are written; `close` waits for the thread and writes the file.
The file is replaced atomically (temporary file, fsync, rename); with several processes only
process 0 keeps a manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bird_jax.exit_codes import BadInput

MANIFEST = "manifest.json"
FORMAT = "bird_jax-manifest"
VERSION = 1
KINDS = ("train", "eval", "datagen", "convert", "demo")
_BLOCK = 1 << 22

Entry = dict[str, Any]  # {"sha256": hex, "bytes": n}, or {"error": why} when it could not be read


class ManifestError(BadInput):
  """A manifest that is missing, unreadable, of another format or of a newer version."""


def sha256_of(path: str | os.PathLike) -> str:
  return file_entry(path)["sha256"]


def file_entry(path: str | os.PathLike) -> Entry:
  """{"sha256", "bytes"} of a file's content (read in blocks: memory stays small)."""
  h, n = hashlib.sha256(), 0
  buf = bytearray(_BLOCK)
  view = memoryview(buf)
  with open(path, "rb", buffering=0) as f:
    while k := f.readinto(buf):
      h.update(view[:k])
      n += k
  return {"sha256": h.hexdigest(), "bytes": n}


def files_under(folder: str | os.PathLike) -> list[Path]:
  """Every file below `folder` (links followed as Orbax and HF folders use none), sorted."""
  return sorted(p for p in Path(folder).rglob("*") if p.is_file())


def key_of(folder: str | os.PathLike, path: str | os.PathLike) -> str:
  """How a manifest names `path`: relative to `folder` when inside it, else absolute."""
  path, folder = Path(path).absolute(), Path(folder).absolute()
  try:
    return path.relative_to(folder).as_posix()
  except ValueError:
    return str(path)


def path_of(folder: str | os.PathLike, key: str) -> Path:
  return Path(key) if os.path.isabs(key) else Path(folder) / key


def hash_files(files: Mapping[str, str | os.PathLike]) -> dict[str, Entry]:
  """{key: entry} of the files (a file that cannot be read gets {"error": why})."""
  out = {}
  for key, path in files.items():
    try:
      out[key] = file_entry(path)
    except OSError as e:
      out[key] = {"error": f"{e.strerror or e}"}
  return out


class HashingWriter:
  """A binary file opened for writing whose bytes are hashed as they are written."""

  def __init__(self, f):
    self.f, self.h, self.bytes = f, hashlib.sha256(), 0

  def write(self, data) -> int:
    view = memoryview(data).cast("B")
    self.h.update(view)
    self.bytes += view.nbytes
    return self.f.write(view)

  def entry(self) -> Entry:
    return {"sha256": self.h.hexdigest(), "bytes": self.bytes}


def now() -> str:
  return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
  """Writes JSON to a temporary file beside `path`, fsyncs it and renames it over `path`."""
  path = Path(path)
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(data, f, indent=1)
    f.write("\n")
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def read(folder: str | os.PathLike) -> dict[str, Any]:
  """The manifest of a run folder; ManifestError (exit 2) names what is wrong with it."""
  path = Path(folder) / MANIFEST
  if Path(folder).is_file() and Path(folder).name == MANIFEST:
    path = Path(folder)
  try:
    text = path.read_text(encoding="utf-8")
  except FileNotFoundError:
    raise ManifestError(f"{path}: no manifest (runs written by this version of bird_jax keep "
                        "one in their output folder)") from None
  except (OSError, UnicodeDecodeError) as e:
    raise ManifestError(f"{path}: cannot be read: {e}") from None
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise ManifestError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                        "the file is truncated or damaged") from None
  if not isinstance(data, dict) or data.get("format") != FORMAT:
    found = data.get("format") if isinstance(data, dict) else type(data).__name__
    raise ManifestError(f"{path}: not a bird_jax manifest (format {found!r}, expected "
                        f"{FORMAT!r})")
  version = data.get("version")
  if not isinstance(version, int) or version > VERSION:
    raise ManifestError(f"{path}: manifest version {version!r} is newer than this bird_jax "
                        f"reads (up to {VERSION}); audit it with the version that wrote it")
  if data.get("kind") not in KINDS:
    raise ManifestError(f"{path}: kind {data.get('kind')!r} is not one of {KINDS}")
  for field in ("inputs", "outputs", "segments"):
    if not isinstance(data.get(field), (dict if field != "segments" else list)):
      raise ManifestError(f"{path}: field {field!r} is missing or malformed")
  return data


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
  if not isinstance(d, dict):
    return {prefix.rstrip("."): d}
  out: dict[str, Any] = {}
  for k, v in d.items():
    out.update(_flat(v, f"{prefix}{k}."))
  return out


class Manifest:
  """The manifest of a run in progress. A new one replaces whatever the folder held; with
  `resume`, a readable manifest of the same kind is continued (a new segment is appended).
  Written when created (the open segment) and by `close`, which ends the segment."""

  def __init__(self, folder: str | os.PathLike, kind: str, config: Mapping[str, Any], *,
               resume: bool = False, mesh: Mapping[str, int] | None = None,
               with_devices: bool = True, started: float | None = None, write: bool = True):
    from bird_jax.environment import environment

    assert kind in KINDS, kind
    self.folder = Path(folder)
    self.path = self.folder / MANIFEST
    self.data = self._previous(kind) if resume else None
    config = json.loads(json.dumps(config))
    segment: dict[str, Any] = {
        "start": now() if started is None else time.strftime("%Y-%m-%dT%H:%M:%S%z",
                                                              time.localtime(started)),
        "end": None, "argv": list(sys.argv), "host": socket.gethostname(), "pid": os.getpid(),
        "environment": environment(mesh=dict(mesh) if mesh else None,
                                   with_devices=with_devices)}
    if self.data is None:
      self.data = {"format": FORMAT, "version": VERSION, "kind": kind, "created": now(),
                   "config": config, "inputs": {}, "outputs": {}, "segments": []}
    else:
      old, new = _flat(self.data.get("config", {})), _flat(config)
      changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
      if changed:
        segment["config_changed"] = changed
      self.data["config"] = config
    self.data["segments"].append(segment)
    self.segment = segment
    self._pending: dict[tuple[str, str], Future] = {}
    self._pool: ThreadPoolExecutor | None = None
    if write:
      self.write()

  def _previous(self, kind: str) -> dict[str, Any] | None:
    if not self.path.exists():
      return None
    try:
      data = read(self.folder)
    except ManifestError as e:
      print(f"manifest: warning: {e}; a new manifest replaces it", file=sys.stderr)
      return None
    if data["kind"] != kind:
      print(f"manifest: warning: {self.path} is a {data['kind']} manifest; a new {kind} "
            "manifest replaces it", file=sys.stderr)
      return None
    return data

  # ---- groups of files ------------------------------------------------------------------------

  def group(self, section: str, name: str) -> dict[str, Entry] | None:
    return self.data[section].get(name)

  def set_group(self, section: str, name: str, entries: Mapping[str, Entry]) -> None:
    self._pending.pop((section, name), None)
    self.data[section][name] = dict(entries)

  def drop(self, section: str, name: str) -> None:
    self._pending.pop((section, name), None)
    self.data[section].pop(name, None)

  def hash_now(self, section: str, name: str, paths: Iterable[str | os.PathLike]) -> None:
    """Hashes the files now (small files: reports, configs) into group `name`."""
    self.set_group(section, name, hash_files({key_of(self.folder, p): p for p in paths}))

  def hash_later(self, section: str, name: str, paths: Iterable[str | os.PathLike]) -> None:
    """Hashes the files in the background thread into group `name` (replacing what it held
    once done: `join`)."""
    files = {key_of(self.folder, p): p for p in paths}
    if self._pool is None:
      self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="manifest-hash")
    self._pending[(section, name)] = self._pool.submit(hash_files, files)

  def join(self) -> None:
    """Waits for the background hashing and files its results."""
    for (section, name), future in list(self._pending.items()):
      self.data[section][name] = future.result()
    self._pending.clear()
    if self._pool is not None:
      self._pool.shutdown()
      self._pool = None

  def write(self) -> None:
    self.data["updated"] = now()
    self.folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(self.path, self.data)

  def close(self, **segment: Any) -> None:
    """Ends the segment (`segment`: what it did, e.g. outcome, steps) after the background
    hashing is done, and writes the manifest."""
    self.join()
    self.segment.update(segment, end=now())
    self.write()


def record_parts(folder: str | os.PathLike, kind: str, parts: Mapping[str, str],
                 config: Mapping[str, Any], started: float | None = None) -> None:
  """The manifest of a run made of other runs (the demo: its datagen, train and eval folders,
  each with its own manifest): the parts' folders, relative to `folder`, and a segment."""
  m = Manifest(folder, kind, config, resume=True, started=started, write=False)
  m.data["parts"] = dict(parts)
  m.close(outcome="done")
