"""On-disk cache of chat-completion responses, keyed by a hash of the whole request.

A request (model, messages, sampling options, response format) is hashed with SHA-256 over
its canonical JSON; the response is stored as ``<dir>/<h[:2]>/<h>.json`` (written
atomically). A rerun sends only the requests it has no answer for, so a killed run resumes
without paying twice; answers that were later rejected are cached too (they were paid for,
and replaying them reproduces the same retry prompts).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from datagen.fileio import read_json, write_json_atomic


def request_key(request: dict[str, Any]) -> str:
  canon = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
  return hashlib.sha256(canon.encode("utf-8")).hexdigest()


class ResponseCache:
  def __init__(self, folder: str | os.PathLike):
    self.folder = Path(folder)

  def path(self, key: str) -> Path:
    return self.folder / key[:2] / f"{key}.json"

  def get(self, key: str) -> dict[str, Any] | None:
    p = self.path(key)
    if not p.exists():
      return None
    try:
      return read_json(p)["response"]
    except (OSError, ValueError, KeyError):
      return None  # unreadable entry: ask again

  def put(self, key: str, request: dict[str, Any], response: dict[str, Any]) -> None:
    write_json_atomic(self.path(key), {"request": request, "response": response})
