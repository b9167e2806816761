"""METEOR's aligner compiled from C (``meteor_csrc``), optional.

When a C compiler is present (``cc``, or ``$CC``), the C source is compiled once, at first
use, into the cache folder (``$BIRD_JAX_CACHE`` or ``~/.cache/bird_jax``) and called through
ctypes; otherwise the pure Python code runs, with a one-line warning saying why and what it
costs. Both give identical statistics (tested).

The build writes the library's SHA-256 beside it (``.so.sha256``). A cached library is loaded
only when its bytes hash to that digest, and the bytes loaded are the bytes hashed (a private
copy); a library that does not match, or has no digest, is rebuilt, never loaded.

- ``resolve``: the beam search of one ``meteor.Problem``;
- ``batch_stats_later``: whole segments (normalised words), mapped to word ids whose features
  (Java hash, hash of the stem, function word, synsets) and the paraphrase trie over them are
  kept on the ``Resources`` object and extended as new words arrive; aligned in as many threads
  as the process may use cores, while the caller goes on.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import functools
import hashlib
import hmac
import itertools
import os
import pathlib
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from bird_jax.metrics import meteor_data
from bird_jax.metrics.meteor_csrc import SOURCE as _SOURCE


def _cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("BIRD_JAX_CACHE", pathlib.Path.home() / ".cache" / "bird_jax"))


# measured with bench/bench_metrics.py --skip-reference on 2 cores (2026-12-03)
SLOWER = ("with METEOR about 12x slower (30,000 samples: 24 s instead of 2 s; all caption "
          "metrics 27 s instead of 5 s)")


def _fallback(why: str) -> None:
  warnings.warn(f"METEOR's compiled aligner is unavailable: {why}; the pure-Python aligner "
                f"gives the same scores {SLOWER} (set BIRD_JAX_NO_NATIVE=1 to choose it "
                "silently)", RuntimeWarning, stacklevel=3)
  return None


def _digest_path(so: pathlib.Path) -> pathlib.Path:
  return so.with_name(so.name + ".sha256")


def _verified(so: pathlib.Path) -> bytes | None:
  """The cached library's bytes when they hash to the digest written by its build, else None."""
  try:
    data = so.read_bytes()
    want = _digest_path(so).read_text().strip()
  except (OSError, UnicodeDecodeError):
    return None
  return data if hmac.compare_digest(hashlib.sha256(data).hexdigest(), want) else None


def _write_atomic(path: pathlib.Path, data: bytes) -> None:
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def _load(data: bytes, folder: pathlib.Path) -> ctypes.CDLL:
  """Loads the library from a private copy of `data` (the file opened is the one verified;
  the copy is removed once loaded)."""
  fd, tmp = tempfile.mkstemp(dir=folder, prefix="meteor_align_load_", suffix=".so")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    return ctypes.CDLL(tmp)
  finally:
    pathlib.Path(tmp).unlink(missing_ok=True)


@functools.cache
def library() -> ctypes.CDLL | None:
  """The compiled aligner, or None when no C compiler is available."""
  if os.environ.get("BIRD_JAX_NO_NATIVE"):
    return None
  tag = hashlib.sha1(_SOURCE.encode()).hexdigest()[:12]
  so = _cache_dir() / f"meteor_align_{tag}.so"
  data = _verified(so)
  if data is None:  # not built yet, or corrupt / stale: (re)build, never load it
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
      return _fallback("no C compiler (cc, gcc or $CC) on PATH")
    try:
      so.parent.mkdir(parents=True, exist_ok=True)
      with tempfile.TemporaryDirectory() as tmp:
        src = pathlib.Path(tmp) / "meteor_align.c"
        src.write_text(_SOURCE)
        out = pathlib.Path(tmp) / so.name
        subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(out), str(src)], check=True,
                       capture_output=True)
        data = out.read_bytes()
      _write_atomic(so, data)
      _write_atomic(_digest_path(so), hashlib.sha256(data).hexdigest().encode())
    except (OSError, subprocess.CalledProcessError) as e:
      detail = getattr(e, "stderr", b"") or str(e).encode()
      return _fallback(f"{cc} could not build it into {so.parent} "
                       f"({detail.decode(errors='replace').strip().splitlines()[-1][:200]})")
  try:
    lib = _load(data, so.parent)
  except OSError as e:
    return _fallback(f"{so} could not be loaded ({str(e)[:200]})")
  lib.meteor_resolve.restype = ctypes.c_int
  lib.meteor_resolve.argtypes = [ctypes.c_int] * 3 + [ctypes.c_void_p] * 14
  lib.meteor_batch.restype = ctypes.c_int
  lib.meteor_batch.argtypes = ([ctypes.c_int] + [ctypes.c_void_p] * 4 + [ctypes.c_int]
                               + [ctypes.c_void_p] * 13 + [ctypes.c_int, ctypes.c_void_p])
  return lib


def resolve(problem, beam: int, weights: tuple[float, ...]) -> list | None:
  """Final matches per reference position (fixed ones plus the chosen ones), or None when the
  native search is unavailable."""
  lib = library()
  if lib is None:
    return None
  n1, n2 = problem.n1, problem.n2
  flat = [m for row in problem.matches for m in row]
  cptr = [0]
  for row in problem.matches:
    cptr.append(cptr[-1] + len(row))
  cols = [list(c) for c in zip(*flat)] if flat else [[] for _ in range(5)]
  inc = [int(m[3] * weights[m[4]]) + int(m[1] * weights[m[4]]) for m in flat]
  n = max(n2, 1)
  f_ok, f_len, f_mstart, f_mlen, f_inc = [0] * n, [0] * n, [0] * n, [0] * n, [0] * n
  for j, m in enumerate(problem.fixed):
    if m is not None:
      f_ok[j], f_len[j], f_mstart[j], f_mlen[j] = 1, m[1], m[2], m[3]
      f_inc[j] = int(m[3] * weights[m[4]]) + int(m[1] * weights[m[4]])
  parts = [cptr, cols[0], cols[1], cols[2], cols[3], inc, f_ok, f_len, f_mstart, f_mlen, f_inc,
           [0] * n]
  buf = np.fromiter((v for part in parts for v in part), np.int32)
  mask = (1 << 64) - 1
  bits = np.asarray([(problem.used1 >> (64 * w)) & mask for w in range(n1 // 64 + 1)]
                    + [(problem.used2 >> (64 * w)) & mask for w in range(n2 // 64 + 1)],
                    np.uint64)
  base, bbase = buf.ctypes.data, bits.ctypes.data
  ptrs, off = [], 0
  for part in parts:
    ptrs.append(ctypes.c_void_p(base + 4 * off))
    off += len(part)
  rc = lib.meteor_resolve(n1, n2, beam, *ptrs[:11], ctypes.c_void_p(bbase),
                          ctypes.c_void_p(bbase + 8 * (n1 // 64 + 1)), ptrs[11])
  if rc != 0:
    raise MemoryError("METEOR native search: allocation failed")
  pick = buf[off - n:off - n + n2]
  final = list(problem.fixed)
  for j in np.nonzero(pick >= 0)[0]:
    final[j] = flat[pick[j]]
  return final


# --- whole segments ------------------------------------------------------------------------
def _words(res) -> dict:
  table = res.native.get("words")
  if table is None:
    table = res.native["words"] = {"ids": {}, "hash": [], "shash": [], "func": [], "syn": [],
                                   "arrays": None}
  return table


def add_words(res, words: Iterable[str]) -> None:
  """Adds the new ones of ``words`` to the word table of ``res``, with their features."""
  table = _words(res)
  ids = table["ids"]
  new = [w for w in dict.fromkeys(words) if w not in ids]
  if not new:
    return
  ids.update(zip(new, range(len(ids), len(ids) + len(new))))
  table["hash"].extend(meteor_data.java_hashes(new).tolist())
  table["shash"].extend(meteor_data.java_hashes([res.stem(w) for w in new]).tolist())
  fw = res.function_words
  table["func"].extend(w in fw for w in new)
  table["syn"].extend(sorted(res.synsets(w)) for w in new)
  table["arrays"] = None


def word_ids(res, words: Sequence[str]) -> list[int]:
  """Ids of ``words`` in the word table of ``res`` (new words get their features)."""
  ids = _words(res)["ids"]
  try:
    return list(map(ids.__getitem__, words))
  except KeyError:
    add_words(res, words)
    return list(map(ids.__getitem__, words))


def _trie(res) -> dict[str, np.ndarray]:
  """The paraphrase trie of ``res`` over word ids (see ``meteor_csrc``)."""
  trie = res.native.get("trie")
  if trie is not None:
    return trie
  node_of: dict[tuple[int, int], int] = {}
  emits: list[list[int]] = [[]]
  for k, ref in enumerate(res.refs):
    if not ref:
      continue
    node = 0
    for w in word_ids(res, ref):
      nxt = node_of.get((node, w))
      if nxt is None:
        nxt = node_of[(node, w)] = len(emits)
        emits.append([])
      node = nxt
    emits[node].append(k)
  edges = sorted(node_of.items())
  parents = np.asarray([e[0][0] for e in edges], np.int64)
  paras = [word_ids(res, p) for p in res.paras]

  def offsets(lengths) -> np.ndarray:
    out = np.zeros(len(lengths) + 1, np.int32)
    np.cumsum(lengths, out=out[1:])
    return out

  trie = res.native["trie"] = {
    "ch_off": offsets(np.bincount(parents, minlength=len(emits))),
    "ch_word": np.asarray([e[0][1] for e in edges], np.int32),
    "ch_node": np.asarray([e[1] for e in edges], np.int32),
    "em_off": offsets([len(e) for e in emits]),
    "em_k": np.asarray([k for e in emits for k in e], np.int32),
    "pp_off": offsets([len(p) for p in paras]),
    "pp_word": np.asarray([w for p in paras for w in p], np.int32)}
  return trie


def _word_arrays(res) -> dict[str, np.ndarray]:
  table = _words(res)
  if table["arrays"] is None:
    syn = table["syn"]
    syn_off = np.zeros(len(syn) + 1, np.int32)
    np.cumsum([len(x) for x in syn], out=syn_off[1:])
    table["arrays"] = {
      "hash": np.asarray(table["hash"], np.int32), "shash": np.asarray(table["shash"], np.int32),
      "func": np.asarray(table["func"], np.uint8), "syn_off": syn_off,
      "syn": np.asarray([v for x in syn for v in x], np.int32)}
  return table["arrays"]


def _flat(seqs: Sequence[Sequence[str]], get) -> tuple[np.ndarray, np.ndarray]:
  """Word ids of all sequences concatenated, and the offsets of each."""
  off = np.zeros(len(seqs) + 1, np.int64)
  np.cumsum(np.fromiter(map(len, seqs), np.int64, len(seqs)), out=off[1:])
  ids = np.fromiter(map(get, itertools.chain.from_iterable(seqs)), np.int32, int(off[-1]))
  return ids, off


MIN_SEGMENTS_PER_THREAD = 1000


def _threads(segments: int) -> int:
  """Threads for ``segments`` segments: the cores this process may use, each with at least
  ``MIN_SEGMENTS_PER_THREAD``."""
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return max(1, min(cores or 1, segments // MIN_SEGMENTS_PER_THREAD))


def batch_stats_later(hyps: Sequence[Sequence[str]], refs: Sequence[Sequence[str]], res,
                      beam: int, weights: tuple[float, ...]
                      ) -> Callable[[], np.ndarray] | None:
  """Starts aligning normalised hypothesis and reference words (word ids and features here,
  then contiguous parts of the segments in threads, the compiled code releasing the GIL);
  returns a function that waits for the METEOR statistics [N, 23] (``meteor.Stats.to_list``
  order). None when the native code is unavailable."""
  lib = library()
  if lib is None:
    return None
  add_words(res, itertools.chain(itertools.chain.from_iterable(hyps),
                                 itertools.chain.from_iterable(refs)))
  trie = _trie(res)
  words = _word_arrays(res)
  get = _words(res)["ids"].__getitem__
  h_ids, h_off = _flat(hyps, get)
  r_ids, r_off = _flat(refs, get)
  w = np.asarray(weights, np.float64)
  out = np.zeros((len(hyps), 23), np.int32)
  ptr = lambda a, at=0: ctypes.c_void_p(a.ctypes.data + at * a.strides[0])  # noqa: E731

  def align(start: int, stop: int) -> int:     # the arrays stay referenced while it runs
    return lib.meteor_batch(
      stop - start, ptr(h_off, start), ptr(h_ids), ptr(r_off, start), ptr(r_ids),
      len(words["hash"]), *(ptr(words[k]) for k in ("hash", "shash", "func", "syn_off", "syn")),
      *(ptr(trie[k]) for k in ("ch_off", "ch_word", "ch_node", "em_off", "em_k", "pp_off",
                               "pp_word")), ptr(w), beam, ptr(out, start))

  cuts = np.linspace(0, len(hyps), _threads(len(hyps)) + 1).astype(int).tolist()
  pool = concurrent.futures.ThreadPoolExecutor(len(cuts) - 1)
  jobs = [pool.submit(align, a, b) for a, b in zip(cuts[:-1], cuts[1:])]
  pool.shutdown(wait=False)

  def wait() -> np.ndarray:
    if any(job.result() for job in jobs):
      raise MemoryError("METEOR native aligner: allocation failed")
    return out.astype(np.float64)

  return wait
