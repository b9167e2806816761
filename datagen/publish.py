"""Publishing a run's chunk shards as ``OUT/train`` and ``OUT/test``, each side at once.

The shards wait under ``.work/shards/{train,test}`` (datagen/stages.py `staged_folder`) until
the run is accepted. Each side is then assembled beside its final folder and renamed into
place, so that ``OUT/train`` is at every moment the previous complete set, the new complete
set, or (between two renames) absent, never a part of one; a refused run takes an earlier
publication back. What a crash leaves halfway is finished or undone by `recover_publication`.
Only host 0 calls these.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from datagen.split import TEST, TRAIN
from datagen.stages import staged_folder
from datagen.writer import chunk_name, chunk_shard

# Folders of OUT beside train/ and test/ while a side changes: the new set is assembled under
# PUBLISHING, the previous one waits under REPLACED while the new one is renamed in, and a
# withdrawn one is taken apart under WITHDRAWN. Each exists only until that step is done.
PUBLISHING, REPLACED, WITHDRAWN = ".{side}.publishing", ".{side}.replaced", ".{side}.withdrawn"
TRANSIENT = tuple(f.format(side=side) for f in (PUBLISHING, REPLACED, WITHDRAWN)
                  for side in (TRAIN, TEST))


def _folder(out: Path, pattern: str, side: str) -> Path:
  return out / pattern.format(side=side)


def _place_shard(src: Path, dst: Path) -> None:
  """`dst` becomes a file with `src`'s content, `src` staying: a hard link (shards are never
  written in place: a new shard is a new file), or a copy where the file system has none."""
  try:
    os.link(src, dst)
  except OSError:
    shutil.copyfile(src, dst)


def _take_back(folder: Path, staged: Path) -> None:
  """Moves the shards of a withdrawn `folder` back to `staged` (a staged one, newer, wins),
  then deletes `folder`."""
  for p in sorted(folder.iterdir()):
    if p.is_file() and not (staged / p.name).exists():
      staged.mkdir(parents=True, exist_ok=True)
      os.replace(p, staged / p.name)
  shutil.rmtree(folder)


def recover_publication(out: Path, work: Path) -> None:
  """Finishes or undoes what an interrupted :func:`publish` or :func:`withdraw` left in OUT, so
  that train/ and test/ each hold a complete set (or nothing): a new set assembled completely
  (the previous one already renamed aside) is renamed in; a previous set renamed aside is
  deleted once a new one is in place, or renamed back when there is none; a set assembled in
  part is deleted (its shards are still staged or published); the shards of a withdrawn set go
  back to .work/shards."""
  for side in (TRAIN, TEST):
    final, new = out / side, _folder(out, PUBLISHING, side)
    old = _folder(out, REPLACED, side)
    if old.is_dir():
      if not final.exists():
        os.replace(new if new.is_dir() else old, final)
      shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(new, ignore_errors=True)
    withdrawn = _folder(out, WITHDRAWN, side)
    if withdrawn.is_dir():
      _take_back(withdrawn, staged_folder(work, side))


def publish(out: Path, work: Path, chunks: Sequence[int]) -> dict[str, list[Path]]:
  """Publishes the shards of `chunks` as OUT/train and OUT/test; returns the shard paths per
  side (a chunk without records on a side has none).

  Per side, the new set is assembled under OUT/.SIDE.publishing (each chunk's staged shard, or
  else the one published before, hard-linked), the previous OUT/SIDE is renamed to
  OUT/.SIDE.replaced, the new set renamed to OUT/SIDE, the previous one deleted, and then the
  staged shards. So OUT/SIDE is at every moment the previous complete set, the new complete
  set, or (between the two renames) absent; a crash leaves what recover_publication, called
  first, finishes or undoes."""
  recover_publication(out, work)
  shards = {}
  for side in (TRAIN, TEST):
    final, new = out / side, _folder(out, PUBLISHING, side)
    old = _folder(out, REPLACED, side)
    names = [chunk_name(side, k) for k in chunks]
    staged = [chunk_shard(staged_folder(work, side), name) for name in names]
    new.mkdir(parents=True)
    for name, src in zip(names, staged):
      if not src.exists():
        src = chunk_shard(final, name)  # published before, not regenerated since
      if src.exists():
        _place_shard(src, chunk_shard(new, name))
    previous = final.exists()
    if previous:
      os.replace(final, old)
    os.replace(new, final)
    if previous:
      shutil.rmtree(old)
    for p in staged:
      p.unlink(missing_ok=True)
    shards[side] = [chunk_shard(final, name) for name in names]
  return shards


def withdraw(out: Path, work: Path) -> None:
  """Undoes an earlier publication of OUT: train/ and test/ are each renamed aside at once
  (OUT/.SIDE.withdrawn), the files made from them (medgrit/, summary.json) are removed, and
  their shards go back under .work (a newer staged one wins), so a refused run leaves nothing
  train.py or eval.py would read."""
  recover_publication(out, work)
  for side in (TRAIN, TEST):
    if (out / side).is_dir():
      os.replace(out / side, _folder(out, WITHDRAWN, side))
  shutil.rmtree(out / "medgrit", ignore_errors=True)
  (out / "summary.json").unlink(missing_ok=True)
  for side in (TRAIN, TEST):
    if _folder(out, WITHDRAWN, side).is_dir():
      _take_back(_folder(out, WITHDRAWN, side), staged_folder(work, side))
