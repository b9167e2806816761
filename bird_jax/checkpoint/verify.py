"""Checks that weights are usable: every value finite, every saved array readable.

    report = verify_params(manager, step)  # streams a checkpoint's params from disk
    report.ok, report.damaged, report.summary()

A read that fails is sorted by what the error says about the saved bytes. *Damage* (a missing
file, a short or truncated file, a failed decode or integrity check) is evidence against the
checkpoint; an error that says nothing about the bytes (permission denied, an I/O error, a
network filesystem timing out or going stale, or an error not known to mean damage) is a
*read error*: the checkpoint may be whole, and only reading it failed this time.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re

import numpy as np
import orbax.checkpoint as ocp

from bird_jax import exit_codes


WHOLE_BYTES = 256 * 2**20  # larger arrays are read back one slice of axis 0 at a time

# OS errors that say nothing about a file's bytes: access, the device, the (network) filesystem.
READ_ERRNOS = frozenset(getattr(errno, n) for n in (
    "EACCES", "EPERM", "EIO", "ETIMEDOUT", "ESTALE", "EAGAIN", "EBUSY", "EINTR", "ENOMEM",
    "EMFILE", "ENFILE", "ENOLCK", "ENXIO", "ENODEV", "ENOTCONN", "ECONNRESET", "ECONNREFUSED",
    "ECONNABORTED", "EHOSTUNREACH", "ENETUNREACH", "ENETDOWN", "EREMOTEIO", "ENOMEDIUM",
    "ESHUTDOWN", "ENOLINK", "ECOMM", "EPROTO") if hasattr(errno, n))
# OS errors that are evidence: the file or the folder it belongs in is not there / not a file.
DAMAGE_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR})
# tensorstore's status codes (the first word of its messages) that are evidence of damage:
# a missing key or file, a file shorter than its index says, bytes that do not decode.
DAMAGE_STATUSES = ("NOT_FOUND", "OUT_OF_RANGE", "DATA_LOSS", "INVALID_ARGUMENT",
                   "FAILED_PRECONDITION")
_TS_ERRNO = re.compile(r"os_error_code='(\d+)'")
_TS_FILE = re.compile(r'(?:local file|Failed to open:|Failed writing:)\s*"([^"]+)"')
_STATUS = re.compile(r"\s*([A-Z][A-Z_]+):")
# ...but not when the reader and the saved metadata disagree (another orbax or tensorstore
# version, another dtype or shape asked for): that is the reader, not the bytes.
_MISMATCH = re.compile(r"does not match|incompatible|mismatch", re.I)


class NonFiniteWeights(ValueError):
  """Weights hold NaN or inf values."""

  exit_code = exit_codes.NON_FINITE


def nonfinite_count(x: np.ndarray) -> int:
  """NaN/inf values in a host array (bf16/fp16 widened; integer arrays have none)."""
  x = np.asarray(x)
  if x.dtype.kind in "iub":
    return 0
  if x.dtype not in (np.float32, np.float64):
    x = x.astype(np.float32)
  return int(x.size - np.count_nonzero(np.isfinite(x)))


@dataclasses.dataclass
class ParamsReport:
  """What reading a step's arrays back found; each dict maps an array's dotted path (or
  '<item> (metadata)') to one line."""

  step: int
  arrays: int = 0
  values: int = 0
  nonfinite: dict[str, int] = dataclasses.field(default_factory=dict)  # path -> count
  unreadable: dict[str, str] = dataclasses.field(default_factory=dict)  # damage: path -> error
  read_errors: dict[str, str] = dataclasses.field(default_factory=dict)  # path -> file: error

  @property
  def damaged(self) -> bool:
    """Evidence that the step is bad: NaN/inf values or damaged files."""
    return bool(self.nonfinite or self.unreadable)

  @property
  def ok(self) -> bool:
    return not self.damaged and not self.read_errors

  def summary(self) -> str:
    if self.ok:
      return (f"step {self.step}: {self.arrays} parameters ({self.values:,} values) read back, "
              "all finite")
    parts = []
    if self.unreadable:
      path, err = next(iter(self.unreadable.items()))
      parts.append(f"{len(self.unreadable)} parameter(s) unreadable (e.g. {path}: {err})")
    if self.nonfinite:
      n = sum(self.nonfinite.values())
      path = max(self.nonfinite, key=self.nonfinite.get)
      parts.append(f"{n:,} of {self.values:,} values are NaN/inf in {len(self.nonfinite)} "
                   f"parameter(s) (most in {path})")
    if self.read_errors:
      path, err = next(iter(self.read_errors.items()))
      parts.append(f"{len(self.read_errors)} parameter(s) could not be read (e.g. {path}: {err}; "
                   "a read error, not evidence against the checkpoint)")
    return f"step {self.step}: " + "; ".join(parts)


def verify_params(manager: ocp.CheckpointManager, step: int | None = None,
                  item: str = "params") -> ParamsReport:
  """Reads every saved array of a step's `item` (one layer at a time, with tensorstore: no
  device memory) and counts non-finite values; read failures are recorded per array (damage
  in `unreadable`, anything else in `read_errors`), not raised."""
  from bird_jax.checkpoint.orbax import ParamReader

  try:
    reader = ParamReader(manager, step, item)
  except Exception as e:  # noqa: BLE001 -- any failure to open the step is the finding
    s = manager.latest_step() if step is None else step
    report = ParamsReport(step=-1 if s is None else s)
    _record(report, f"{item} (metadata)", e)
    return report
  report = ParamsReport(step=reader.step)
  for path, shape in reader.shapes.items():
    report.arrays += 1
    nbytes = int(np.prod(shape, dtype=np.int64)) * reader.dtypes[path].itemsize
    layers = range(shape[0]) if nbytes > WHOLE_BYTES and len(shape) > 1 else [None]
    bad = 0
    try:
      for layer in layers:
        x = reader.read(path, layer)
        report.values += int(np.size(x))
        bad += nonfinite_count(x)
    except Exception as e:  # noqa: BLE001
      _record(report, path, e)
      continue
    if bad:
      report.nonfinite[path] = bad
  return report


def _record(report: ParamsReport, path: str, e: BaseException) -> None:
  if is_damage(e):
    report.unreadable[path] = first_line(e)
  else:
    report.read_errors[path] = read_error(e)


def exception_chain(e: BaseException):
  """`e` and every exception behind it, depth first: its causes (and the members of exception
  groups) before the exceptions it was raised while handling (`__context__`)."""
  seen, todo = set(), [e]
  while todo:
    x = todo.pop()
    if x is None or id(x) in seen:
      continue
    seen.add(id(x))
    yield x
    todo += [x.__context__, *reversed(getattr(x, "exceptions", ())), x.__cause__]


def os_errno(e: BaseException) -> int | None:
  """The errno of the OS error behind `e`: an OSError in its chain, or the code tensorstore
  writes into its messages ("[os_error_code='13']"); None when there is none."""
  for x in exception_chain(e):
    n = own_errno(x)
    if n is not None:
      return n
  return None


def own_errno(x: BaseException) -> int | None:
  """The errno `x` itself carries (not its causes): OSError.errno or tensorstore's code."""
  if isinstance(x, OSError) and x.errno is not None:
    return x.errno
  m = _TS_ERRNO.search(str(x))
  return int(m.group(1)) if m else None


def is_damage(e: BaseException) -> bool:
  """Whether a failed read is evidence that the saved bytes are bad: an OS error saying the
  file is missing (ENOENT, ENOTDIR, EISDIR), or, without an OS error, a missing file or item,
  a file shorter than its index, bytes that do not decode (tensorstore's NOT_FOUND,
  OUT_OF_RANGE, DATA_LOSS, INVALID_ARGUMENT, FAILED_PRECONDITION, unless they say that the
  saved metadata and the reader disagree; invalid JSON). Any other OS error (READ_ERRNOS:
  permission, I/O, a network filesystem) or unknown error is not. The causes of `e` are
  looked at before the exceptions it was raised while handling."""
  n = os_errno(e)
  if n is not None:
    return n in DAMAGE_ERRNOS
  for x in exception_chain(e):
    if isinstance(x, (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError)):
      return True
    m = _STATUS.match(str(x))
    if m and m.group(1) in DAMAGE_STATUSES and not _MISMATCH.search(str(x)):
      return True
  return False


def failing_file(e: BaseException) -> str | None:
  """The file an error names: an OSError's filename, or the last file in tensorstore's text."""
  for x in exception_chain(e):
    if isinstance(x, OSError) and x.filename:
      return str(x.filename)
    found = _TS_FILE.findall(str(x).split("[tensorstore_spec=")[0])
    if found:
      return found[-1]
  return None


def read_error(e: BaseException) -> str:
  """'FILE: [Errno N] text' for a failed read (the file and the OS error where known)."""
  n, where = os_errno(e), failing_file(e)
  what = f"[Errno {n}] {os.strerror(n)}" if n is not None else first_line(e)
  return f"{where}: {what}" if where else what


def first_line(e: BaseException) -> str:
  """`Type: first line` of the innermost cause (Orbax wraps tensorstore's precise error)."""
  while e.__cause__ is not None:
    e = e.__cause__
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:300] if text else ''}"
