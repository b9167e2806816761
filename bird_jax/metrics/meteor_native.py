"""METEOR's beam search compiled from C (the same algorithm as ``meteor._resolve``), optional.

The search is the hot loop of METEOR (thousands of partial alignments per segment). When a C
compiler is present (``cc``, or ``$CC``), the small C source below is compiled once into the
cache folder (``$BIRD_JAX_CACHE`` or ``~/.cache/bird_jax``) and called through ctypes; otherwise
the pure Python search is used. Both give identical alignments (tested).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile

import numpy as np

_SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct { int neg, chunks, dist, order, idx, last, hist, slot; } Path;

static int cmp(const void *a, const void *b) {
  const Path *x = (const Path *)a, *y = (const Path *)b;
  if (x->neg != y->neg) return x->neg < y->neg ? -1 : 1;
  if (x->chunks != y->chunks) return x->chunks < y->chunks ? -1 : 1;
  if (x->dist != y->dist) return x->dist < y->dist ? -1 : 1;
  return x->order < y->order ? -1 : (x->order > y->order);
}

static int any_bit(const uint64_t *u, int start, int len) {
  for (int t = start; t < start + len; t++) if ((u[t >> 6] >> (t & 63)) & 1) return 1;
  return 0;
}
static void set_bits(uint64_t *u, int start, int len) {
  for (int t = start; t < start + len; t++) u[t >> 6] |= (uint64_t)1 << (t & 63);
}

/* Candidates of position j: indices cptr[j] .. cptr[j+1]-1 into the c_* arrays.
   Fixed match at position j when f_ok[j]. out_pick[j]: chosen candidate index or -1.
   Returns 0 on success, -1 on allocation failure. */
int meteor_resolve(int n1, int n2, int beam, const int *cptr, const int *c_start,
                   const int *c_len, const int *c_mstart, const int *c_mlen, const int *c_inc,
                   const int *f_ok, const int *f_len, const int *f_mstart, const int *f_mlen,
                   const int *f_inc, const uint64_t *init1, const uint64_t *init2,
                   int *out_pick) {
  int w1 = n1 / 64 + 1, w2 = n2 / 64 + 1, kmax = 0;
  for (int j = 0; j < n2; j++) if (cptr[j + 1] - cptr[j] > kmax) kmax = cptr[j + 1] - cptr[j];
  int cap = beam * (kmax + 1) + 1;
  Path *cur = malloc(sizeof(Path) * cap), *nxt = malloc(sizeof(Path) * cap);
  uint64_t *cu1 = calloc((size_t)cap * w1, 8), *cu2 = calloc((size_t)cap * w2, 8);
  uint64_t *nu1 = calloc((size_t)cap * w1, 8), *nu2 = calloc((size_t)cap * w2, 8);
  int hcap = 1024, hn = 0;
  int *h_cand = malloc(sizeof(int) * hcap), *h_prev = malloc(sizeof(int) * hcap);
  if (!cur || !nxt || !cu1 || !cu2 || !nu1 || !nu2 || !h_cand || !h_prev) return -1;
  int ncur = 1;
  cur[0] = (Path){0, 0, 0, 0, 0, -1, -1, 0};
  memcpy(cu1, init1, 8 * w1);
  memcpy(cu2, init2, 8 * w2);
  for (int j = 0; j < n2; j++) {
    for (int r = 0; r < ncur; r++) cur[r].slot = r;
    qsort(cur, ncur, sizeof(Path), cmp);
    int nn = 0, order = 0, lim = ncur < beam ? ncur : beam;
    for (int r = 0; r < lim; r++) {
      Path p = cur[r];
      const uint64_t *u1 = cu1 + (size_t)p.slot * w1, *u2 = cu2 + (size_t)p.slot * w2;
      if ((u2[j >> 6] >> (j & 63)) & 1) {
        if (j < p.idx) {
          Path c = p; c.order = order++;
          memcpy(nu1 + (size_t)nn * w1, u1, 8 * w1); memcpy(nu2 + (size_t)nn * w2, u2, 8 * w2);
          nxt[nn++] = c;
        } else if (f_ok[p.idx]) {
          int i = p.idx;
          Path c = p;
          if (p.last != -1 && f_mstart[i] != p.last) c.chunks++;
          c.neg -= f_inc[i];
          c.dist += abs(i - f_mstart[i]);
          c.idx = i + f_len[i];
          c.last = f_mstart[i] + f_mlen[i];
          c.order = order++;
          memcpy(nu1 + (size_t)nn * w1, u1, 8 * w1); memcpy(nu2 + (size_t)nn * w2, u2, 8 * w2);
          nxt[nn++] = c;
        }
        continue;
      }
      int dist = p.dist;
      for (int k = cptr[j]; k < cptr[j + 1]; k++) {
        if (any_bit(u2, c_start[k], c_len[k]) || any_bit(u1, c_mstart[k], c_mlen[k])) continue;
        if (hn == hcap) {
          hcap *= 2;
          h_cand = realloc(h_cand, sizeof(int) * hcap);
          h_prev = realloc(h_prev, sizeof(int) * hcap);
          if (!h_cand || !h_prev) return -1;
        }
        h_cand[hn] = k; h_prev[hn] = p.hist;
        Path c = p;
        c.neg -= c_inc[k];
        if (p.last != -1 && c_mstart[k] != p.last) c.chunks++;
        c.dist = dist;
        c.order = order++;
        c.idx = c_start[k] + c_len[k];
        c.last = c_mstart[k] + c_mlen[k];
        c.hist = hn++;
        uint64_t *v1 = nu1 + (size_t)nn * w1, *v2 = nu2 + (size_t)nn * w2;
        memcpy(v1, u1, 8 * w1); memcpy(v2, u2, 8 * w2);
        set_bits(v1, c_mstart[k], c_mlen[k]); set_bits(v2, c_start[k], c_len[k]);
        nxt[nn++] = c;
        dist += abs(c_start[k] - c_mstart[k]);   /* the jar adds it to the parent path */
      }
      Path c = p;
      if (p.last != -1) c.chunks++;
      c.dist = dist; c.last = -1; c.idx = p.idx + 1; c.order = order++;
      memcpy(nu1 + (size_t)nn * w1, u1, 8 * w1); memcpy(nu2 + (size_t)nn * w2, u2, 8 * w2);
      nxt[nn++] = c;
    }
    if (nn == 0) {
      nxt[0] = cur[0];
      memcpy(nu1, cu1 + (size_t)cur[0].slot * w1, 8 * w1);
      memcpy(nu2, cu2 + (size_t)cur[0].slot * w2, 8 * w2);
      nn = 1;
    }
    Path *tp = cur; cur = nxt; nxt = tp;
    uint64_t *t1 = cu1; cu1 = nu1; nu1 = t1;
    uint64_t *t2 = cu2; cu2 = nu2; nu2 = t2;
    ncur = nn;
  }
  qsort(cur, ncur, sizeof(Path), cmp);
  int lim = ncur < beam ? ncur : beam;
  for (int r = 0; r < lim; r++) { if (cur[r].last != -1) cur[r].chunks++; cur[r].order = r; }
  qsort(cur, lim, sizeof(Path), cmp);
  for (int j = 0; j < n2; j++) out_pick[j] = -1;
  for (int h = cur[0].hist; h != -1; h = h_prev[h]) out_pick[c_start[h_cand[h]]] = h_cand[h];
  free(cur); free(nxt); free(cu1); free(cu2); free(nu1); free(nu2); free(h_cand); free(h_prev);
  return 0;
}
"""


def _cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("BIRD_JAX_CACHE", pathlib.Path.home() / ".cache" / "bird_jax"))


@functools.cache
def library() -> ctypes.CDLL | None:
  """The compiled search, or None when no C compiler is available."""
  if os.environ.get("BIRD_JAX_NO_NATIVE"):
    return None
  tag = hashlib.sha1(_SOURCE.encode()).hexdigest()[:12]
  so = _cache_dir() / f"meteor_beam_{tag}.so"
  if not so.exists():
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
      return None
    so.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
      src = pathlib.Path(tmp) / "meteor_beam.c"
      src.write_text(_SOURCE)
      out = pathlib.Path(tmp) / so.name
      try:
        subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(out), str(src)], check=True,
                       capture_output=True)
      except (OSError, subprocess.CalledProcessError):
        return None
      os.replace(out, so)
  lib = ctypes.CDLL(str(so))
  lib.meteor_resolve.restype = ctypes.c_int
  lib.meteor_resolve.argtypes = [ctypes.c_int] * 3 + [ctypes.c_void_p] * 14
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
