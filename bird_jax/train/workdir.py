"""The training workdir: one run at a time, never two runs mixed in it.

    <workdir>/.lock            held (flock) by the running trainer's process 0
    <workdir>/checkpoints/     Orbax steps
    <workdir>/metrics.jsonl    one row per logged step, each step once
    <workdir>/config.json      the resolved run config
    <workdir>/manifest.json    what made the run (bird_jax/manifest.py, train/record.py)
    <workdir>/previous/<time>/ an earlier run, moved aside by train.overwrite
    <workdir>/rejected/        checkpoint steps that resume found damaged, kept for inspection

A run never starts from step 0 behind steps set aside in `rejected/` or `previous/` unless
asked (`refuse_rollback`, train.allow_rollback).

The lock is an advisory `flock`: the kernel drops it when its process dies (kill -9
included), so a crashed run never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path

RUN_ENTRIES = ("checkpoints", "metrics.jsonl", "config.json", "tensorboard", "rejected",
               "manifest.json")
LOCK_FILE = ".lock"


class WorkdirError(ValueError):
  """The workdir cannot be used as asked (another run holds it, or it holds a run)."""


class WorkdirLock:
  """An exclusive lock on a workdir for the lifetime of a run (`with WorkdirLock(dir): ...`)."""

  def __init__(self, workdir: str | os.PathLike):
    self.path = Path(workdir) / LOCK_FILE
    self._fd: int | None = None

  def __enter__(self) -> "WorkdirLock":
    self.path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _holder(os.read(fd, 4096))
      os.close(fd)
      raise WorkdirError(f"{self.path.parent} is in use by another training run ({holder}); "
                         "wait for it to finish or choose another train.workdir") from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
    self._fd = fd
    return self

  def __exit__(self, *exc) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


def running_trainer(workdir: str | os.PathLike) -> str | None:
  """Who holds the workdir's lock ("pid N on HOST since ..."), or None when no trainer runs
  in it: a shared lock is tried and dropped at once, nothing is written."""
  try:
    fd = os.open(Path(workdir) / LOCK_FILE, os.O_RDONLY)
  except FileNotFoundError:
    return None
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
  except BlockingIOError:
    return _holder(os.read(fd, 4096))
  finally:
    os.close(fd)  # closing drops a lock this took
  return None


def _holder(text: bytes) -> str:
  try:
    h = json.loads(text)
    return f"pid {h['pid']} on {h['host']} since {h['since']}"
  except (ValueError, KeyError, TypeError):
    return "holder unknown"


def holds_run(workdir: str | os.PathLike) -> bool:
  """Whether the workdir holds checkpoints or metrics of a run."""
  w = Path(workdir)
  ckpts = w / "checkpoints"
  return (ckpts.is_dir() and any(ckpts.iterdir())) or (w / "metrics.jsonl").exists()


def checkpoint_steps(workdir: str | os.PathLike) -> list[int]:
  """The committed checkpoint steps in `<workdir>/checkpoints` (Orbax names a step by its
  number once it is complete; partial saves carry a suffix)."""
  ckpts = Path(workdir) / "checkpoints"
  if not ckpts.is_dir():
    return []
  return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit() and p.is_dir())


def set_aside_steps(workdir: str | os.PathLike, *, previous: bool = True) -> dict[int, Path]:
  """{step: where} of the checkpoint steps moved out of the way: `rejected/step-N-<time>` and
  (with `previous`) the checkpoints and rejected steps of earlier runs in `previous/<time>/`."""
  w = Path(workdir)
  found: dict[int, Path] = {}

  def rejected(d: Path) -> None:
    for p in sorted(d.glob("step-*")) if d.is_dir() else []:
      n = p.name.split("-")[1]
      if n.isdigit():
        found[int(n)] = p

  rejected(w / "rejected")
  runs = (w / "previous").iterdir() if previous and (w / "previous").is_dir() else []
  for run in sorted(runs):
    found.update({s: run / "checkpoints" / str(s) for s in checkpoint_steps(run)})
    rejected(run / "rejected")
  return found


def refuse_rollback(workdir: str | os.PathLike, start: int, *, allow: bool,
                    previous: bool = True) -> None:
  """Raises WorkdirError when a run about to start from step `start` would silently go back
  behind steps kept in `rejected/` or (with `previous`) `previous/` (unless `allow`:
  train.allow_rollback)."""
  later = {s: p for s, p in set_aside_steps(workdir, previous=previous).items() if s > start}
  if not later or allow:
    return
  newest = max(later)
  raise WorkdirError(
      f"{workdir}: this run would start from step {start}, but {len(later)} later checkpoint "
      f"step(s) were set aside, up to step {newest} ({later[newest]}). Move a step you trust "
      f"back into {Path(workdir) / 'checkpoints'}/ to resume from it, or set "
      f"--config.train.allow_rollback=true to start from step {start} anyway")


def start_fresh(workdir: str | os.PathLike, *, overwrite: bool, allow_rollback: bool = False
                ) -> Path | None:
  """Prepares a workdir for a run from step 0. A workdir that holds a run is refused unless
  `overwrite`, which moves that run to `previous/<time>/` (nothing is deleted); a workdir
  whose `rejected/` or `previous/` already hold checkpoint steps is refused unless
  `allow_rollback` (refuse_rollback: e.g. a job that passes overwrite=true on every requeue
  would otherwise restart from 0 each time). Returns where the old run went (None when there
  was none)."""
  w = Path(workdir)
  running = holds_run(w)
  if running and not overwrite:
    raise WorkdirError(
        f"{w} holds an earlier run (checkpoints or metrics.jsonl) and train.resume is false; "
        "set --config.train.overwrite=true to move that run to "
        f"{w / 'previous'}/ and start anew, or choose another train.workdir")
  refuse_rollback(w, 0, allow=allow_rollback)
  if not running:
    return None
  dest = w / "previous" / time.strftime("%Y%m%d-%H%M%S")
  while dest.exists():
    dest = dest.with_name(dest.name + "-1")
  dest.mkdir(parents=True)
  for name in RUN_ENTRIES:
    if (w / name).exists():
      shutil.move(str(w / name), str(dest / name))
  return dest


def reject_step(checkpoints: str | os.PathLike, step: int) -> Path:
  """Moves a checkpoint step resume could not use to `<workdir>/rejected/` (kept, not deleted,
  and out of the way of the step that will be saved again under its number)."""
  src = Path(checkpoints) / str(step)
  dest = Path(checkpoints).parent / "rejected" / f"step-{step}-{time.strftime('%Y%m%d-%H%M%S')}"
  dest.parent.mkdir(parents=True, exist_ok=True)
  shutil.move(str(src), str(dest))
  return dest


def trim_metrics(workdir: str | os.PathLike, step: int) -> int:
  """Drops the rows of metrics.jsonl after `step` (logged after the checkpoint a run resumes
  from; they are logged again as the run redoes those steps). Atomic. Returns rows dropped."""
  path = Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return 0
  lines = [line for line in path.read_text().splitlines() if line.strip()]
  keep = []
  for line in lines:
    try:
      row_step = json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
      continue  # a line cut by a crash mid-write
    if row_step <= step:
      keep.append(line)
  if len(keep) == len(lines):
    return 0
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text("".join(line + "\n" for line in keep))
  os.replace(tmp, path)
  return len(lines) - len(keep)
