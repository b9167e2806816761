"""`python -m bird_jax.audit PATH`: does a run folder still hold what its manifest says?

    python -m bird_jax.audit runs/demo/train             # hashes, environment
    python -m bird_jax.audit runs/demo/train --replay 2  # and 2 steps trained again
    python -m bird_jax.audit runs/demo                   # the demo: each of its stages

- every input and output file of the manifest (bird_jax/manifest.py) is hashed again: a file
  missing or changed is a mismatch;
- an eval folder is scored again from its prediction files by the eval's own scoring, and
  every figure of report.json is compared with the recorded one (rescore.py);
- with `--replay K`, a training run is resumed from a recorded checkpoint for K steps in a
  separate workdir and its losses and final parameters are compared with the run's (replay.py);
- what differs between the recorded environment (the last segment's) and this one is listed.

A training run whose workdir lock is held (still being written) is refused. The result: one
line per mismatch, then a summary; `Findings.exit_code` is 0 (all matches), 8 (content differs)
or 9 (only the environment differs).
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bird_jax import exit_codes
from bird_jax import manifest as M
from bird_jax.environment import differences, environment, same_numerics
from bird_jax.exit_codes import BadInput


@dataclasses.dataclass
class Findings:
  mismatches: list[str] = dataclasses.field(default_factory=list)  # content that differs
  environment: list[str] = dataclasses.field(default_factory=list)  # environment fields
  notes: list[str] = dataclasses.field(default_factory=list)  # what was checked

  def add(self, other: "Findings", prefix: str) -> None:
    for mine, theirs in ((self.mismatches, other.mismatches),
                         (self.environment, other.environment), (self.notes, other.notes)):
      mine.extend(f"{prefix}{line}" for line in theirs)

  @property
  def exit_code(self) -> int:
    if self.mismatches:
      return exit_codes.CONTENT_MISMATCH
    return exit_codes.ENVIRONMENT_DIFFERS if self.environment else exit_codes.OK

  def lines(self) -> list[str]:
    return ([f"mismatch: {m}" for m in self.mismatches]
            + [f"environment: {e}" for e in self.environment] + [f"note: {n}" for n in self.notes])


def folder_of(path: str | os.PathLike) -> Path:
  """The run folder PATH names (the folder, or its manifest.json)."""
  path = Path(path)
  return path.parent if path.name == M.MANIFEST and path.is_file() else path


def audit(path: str | os.PathLike, *, replay: int = 0, replay_dir: str | os.PathLike | None = None
          ) -> Findings:
  """Checks the run folder `path` against its manifest (ManifestError / BadInput, exit 2, for
  a manifest that cannot be audited or a run still being written)."""
  folder = folder_of(path)
  data = M.read(folder)
  if replay and data["kind"] not in ("train", "demo"):
    raise BadInput(f"--replay: {folder} holds a {data['kind']} run; only training runs (or the "
                   "demo's training stage) replay")
  return _audit(folder, data, replay, replay_dir)


def _audit(folder: Path, data: dict[str, Any], replay: int, replay_dir) -> Findings:
  findings = Findings()
  if data["kind"] == "train":
    from bird_jax.train.workdir import running_trainer

    holder = running_trainer(folder)
    if holder:
      raise BadInput(f"{folder}: a training run is writing it ({holder}); audit it once it has "
                     "stopped")
  for name, sub in data.get("parts", {}).items():  # the demo's stages
    part = M.read(folder / sub)
    findings.add(_audit(folder / sub, part, replay if part["kind"] == "train" else 0,
                        replay_dir), f"{name}: ")
  check_files(folder, data, findings)
  recorded = data["segments"][-1]["environment"] if data["segments"] else None
  same = False
  if recorded is not None:
    now = environment(mesh=recorded.get("mesh"), with_devices=recorded.get("devices") is not None)
    findings.environment += differences(recorded, now)
    same = same_numerics(recorded, now)
  if data["kind"] == "eval":
    from bird_jax.audit.rescore import check_report

    check_report(folder, data, findings, same)
  if replay and data["kind"] == "train":
    from bird_jax.audit.replay import check_replay

    check_replay(folder, data, replay, replay_dir, findings, same)
  return findings


def check_files(folder: Path, data: dict[str, Any], findings: Findings) -> None:
  """Hashes every recorded input and output again (a few files at a time)."""
  items = [(section, key, entry) for section in ("inputs", "outputs")
           for group in data[section].values() for key, entry in group.items()]
  if not items:
    return

  def now(item: tuple[str, str, M.Entry]) -> M.Entry | None:
    path = M.path_of(folder, item[1])
    try:
      return M.file_entry(path)
    except FileNotFoundError:
      return None
    except OSError as e:
      return {"error": e.strerror or str(e)}

  with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
    current = list(pool.map(now, items))
  total = 0
  for (section, key, entry), got in zip(items, current):
    what = f"{section[:-1]} {key}"
    if "error" in entry:
      findings.mismatches.append(f"{what}: was not readable when recorded ({entry['error']})")
    elif got is None:
      findings.mismatches.append(f"{what}: missing")
    elif "error" in got:
      findings.mismatches.append(f"{what}: cannot be read ({got['error']})")
    elif got["sha256"] != entry["sha256"]:
      findings.mismatches.append(
          f"{what}: content changed (sha256 {entry['sha256'][:16]}... recorded, "
          f"{got['sha256'][:16]}... now; {entry['bytes']} -> {got['bytes']} bytes)")
    else:
      total += got["bytes"]
  findings.notes.append(f"{len(items)} recorded file(s) hashed again ({total / 1e9:.3f} GB "
                        "matching)")
