"""Atomic file writes (a killed run never leaves a half-written file under its final name)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  try:
    tmp.write_bytes(data)
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = None) -> None:
  text = json.dumps(obj, ensure_ascii=False, indent=indent, sort_keys=indent is not None)
  write_bytes_atomic(path, text.encode("utf-8"))


def read_json(path: str | os.PathLike) -> Any:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def remove_temp_files(folder: str | os.PathLike) -> None:
  """Deletes the temporary files a killed writer left in ``folder`` (``.NAME.tmpPID``)."""
  folder = Path(folder)
  if folder.is_dir():
    for p in folder.glob(".*.tmp*"):
      p.unlink(missing_ok=True)
