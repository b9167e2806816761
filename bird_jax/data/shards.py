"""Self-contained ArrayRecord shards of records (image bytes inside).

    paths = write_shards(records, "data/train", image_root=ImageRoot("images/"))
    for rec in read_shards(paths): ...

Shards are named ``{name}-{i:05d}-of-{n:05d}.array_record``; each is written under a
temporary name and renamed when complete, so a crashed writer leaves no partial shard.
Entries use ``group_size:1`` so Grain can read any record without decoding its neighbours.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from array_record.python import array_record_module
from tqdm import tqdm

from bird_jax.data.records import ImageRoot, Record, RecordError, decode_record, encode_record
from bird_jax.data.records import image_bytes_of

SUFFIX = ".array_record"
WRITER_OPTIONS = "group_size:1"


def write_shards(records: Iterable[Record], out_dir: str | os.PathLike, *, name: str = "records",
                 num_shards: int = 1, image_root: ImageRoot | None = None,
                 progress: bool = True) -> list[Path]:
  """Validates and writes ``records`` round-robin into ``num_shards`` shards.

  Images that are not embedded are read through ``image_root`` and embedded. Returns the
  shard paths. Raises RecordError (naming the record) on an invalid record; no shard is left
  behind in that case.
  """
  if num_shards < 1:
    raise ValueError(f"num_shards must be >= 1, got {num_shards}")
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  finals = [out / f"{name}-{i:05d}-of-{num_shards:05d}{SUFFIX}" for i in range(num_shards)]
  temps = [p.with_name(f".{p.name}.tmp{os.getpid()}") for p in finals]
  writers = [array_record_module.ArrayRecordWriter(str(t), WRITER_OPTIONS) for t in temps]
  ok = False
  try:
    for i, rec in enumerate(tqdm(records, desc=f"writing {out}/{name}", unit="rec",
                                 disable=not progress)):
      rec.validate(where=f"input #{i}")
      try:
        data = image_bytes_of(rec, image_root)
      except (OSError, ValueError) as e:
        raise RecordError(f"input #{i}: record {rec.id!r}: field 'image': {e}") from None
      writers[i % num_shards].write(encode_record(rec.replace(image_bytes=data)))
    ok = True
  finally:
    for w in writers:
      w.close()
    for t, f in zip(temps, finals):
      if ok:
        os.replace(t, f)
      else:
        t.unlink(missing_ok=True)
  return finals


def find_shards(pattern: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
  """Shard paths from a directory, a glob pattern, a file, or a list of these (sorted)."""
  if isinstance(pattern, (list, tuple)):
    return [p for item in pattern for p in find_shards(item)]
  p = str(pattern)
  if os.path.isdir(p):
    found = sorted(glob.glob(os.path.join(p, f"*{SUFFIX}")))
  elif any(c in p for c in "*?["):
    found = sorted(glob.glob(p))
  else:
    found = [p] if os.path.isfile(p) else []
  if not found:
    raise FileNotFoundError(f"no ArrayRecord shards found at {p!r}")
  return found


class ShardError(ValueError):
  """Training data that cannot be read; the message names the file."""


def check_shards(pattern: str | os.PathLike | Sequence[str | os.PathLike], *,
                 min_records: int = 1, name: str = "data.shards") -> list[tuple[str, int]]:
  """(path, records) of every shard, checked before any model is built: the paths exist, each
  file is a readable, non-empty ArrayRecord shard, and there are at least `min_records`."""
  if not pattern:
    raise ShardError(f"{name} is empty: set it to a folder of {SUFFIX} shards (datagen writes "
                     "OUT/train/), e.g. --config.data.shards=runs/demo/data/train")
  try:
    paths = find_shards(pattern)
  except FileNotFoundError as e:
    raise ShardError(f"{name}: {e}") from None
  out = []
  for p in paths:
    if p.lower().endswith((".json", ".jsonl")):
      raise ShardError(f"{name}: {p} is a JSON file, not an ArrayRecord shard; build shards from "
                       "Med-GRIT JSON with `python -m bird_jax.data.medgrit import`")
    if os.path.getsize(p) == 0:
      raise ShardError(f"{name}: {p} is an empty file")
    try:
      n = count_records(p)
    except Exception as e:  # noqa: BLE001 -- array_record raises plain RuntimeErrors
      first = (str(e).strip().splitlines() or [""])[0][:200]
      raise ShardError(f"{name}: {p} is not a readable ArrayRecord shard ({first})") from None
    out.append((p, n))
  total = sum(n for _, n in out)
  if total < min_records:
    raise ShardError(f"{name}: {len(out)} shard(s) hold {total} record(s), fewer than the "
                     f"{min_records} needed (one per process at least)")
  return out


def count_records(path: str | os.PathLike) -> int:
  reader = array_record_module.ArrayRecordReader(str(path))
  try:
    return reader.num_records()
  finally:
    reader.close()


def read_shard(path: str | os.PathLike) -> Iterator[Record]:
  """Every record of one shard, in order (decoded, not validated)."""
  reader = array_record_module.ArrayRecordReader(str(path))
  try:
    for i in range(reader.num_records()):
      reader.seek(i)
      yield decode_record(reader.read(), where=f"{path}[{i}]")
  finally:
    reader.close()


def read_shards(pattern: str | os.PathLike | Sequence[str | os.PathLike]) -> Iterator[Record]:
  for path in find_shards(pattern):
    yield from read_shard(path)
