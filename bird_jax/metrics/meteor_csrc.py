"""C source of METEOR's compiled aligner (built and loaded by ``meteor_native``).

Two entry points, each the exact counterpart of Python code in this package:
- ``meteor_resolve``: the beam search of one segment (``meteor._resolve``);
- ``meteor_batch``: whole segments, word ids in, statistics out: candidate matches
  (``meteor_match.candidate_matches``: exact by Java hash, stem by hash of the stem, synonym by
  shared synset, paraphrase by the phrase table's trie, in the jar's order), the fixed
  unambiguous matches (``meteor.problem_of``), the beam search and the statistics
  (``meteor.finish``).
"""

SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct { int neg, chunks, dist, order, idx, last, hist, slot; } Path;

/* Path order (neg, chunks, dist, order): ints mapped to unsigned keys that sort alike. */
typedef struct { uint64_t hi, lo; } Key;

static Key key_of(const Path *p) {
  Key k;
  k.hi = ((uint64_t)((uint32_t)p->neg ^ 0x80000000u) << 32) | ((uint32_t)p->chunks ^ 0x80000000u);
  k.lo = ((uint64_t)((uint32_t)p->dist ^ 0x80000000u) << 32) | ((uint32_t)p->order ^ 0x80000000u);
  return k;
}

static int less(Key a, Key b) { return a.hi < b.hi || (a.hi == b.hi && a.lo < b.lo); }

/* Moves the min(n, k) smallest paths of p[0..n), in order, to p[0..min(n, k)); the order
   field makes every key distinct (so this equals a full sort followed by truncation) and
   equals the path's index in p, which the selection sorts keys only to exploit. */
static int select_best(Path *p, int n, int k, Path *best, Key *keys) {
  int m = 0;
  for (int r = 0; r < n; r++) {
    Key key = key_of(&p[r]);
    if (m == k && !less(key, keys[m - 1])) continue;
    int at = m < k ? m++ : m - 1;
    while (at > 0 && less(key, keys[at - 1])) { keys[at] = keys[at - 1]; at--; }
    keys[at] = key;
  }
  for (int r = 0; r < m; r++) best[r] = p[(int)((uint32_t)keys[r].lo ^ 0x80000000u)];
  memcpy(p, best, sizeof(Path) * m);
  return m;
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
static inline __attribute__((always_inline)) int resolve(
    int n1, int n2, int beam, const int *cptr, const int *c_start, const int *c_len,
    const int *c_mstart, const int *c_mlen, const int *c_inc, const int *f_ok, const int *f_len,
    const int *f_mstart, const int *f_mlen, const int *f_inc, const uint64_t *init1,
    const uint64_t *init2, int *out_pick, const int w1, const int w2) {
  int kmax = 0;
  for (int j = 0; j < n2; j++) if (cptr[j + 1] - cptr[j] > kmax) kmax = cptr[j + 1] - cptr[j];
  int cap = beam * (kmax + 1) + 1;
  Path *cur = malloc(sizeof(Path) * cap), *nxt = malloc(sizeof(Path) * cap);
  uint64_t *cu1 = calloc((size_t)cap * w1, 8), *cu2 = calloc((size_t)cap * w2, 8);
  uint64_t *nu1 = calloc((size_t)cap * w1, 8), *nu2 = calloc((size_t)cap * w2, 8);
  int hcap = 1024, hn = 0;
  int *h_cand = malloc(sizeof(int) * hcap), *h_prev = malloc(sizeof(int) * hcap);
  Path *best = malloc(sizeof(Path) * (beam + 1));
  Key *keys = malloc(sizeof(Key) * (beam + 1));
  if (!cur || !nxt || !cu1 || !cu2 || !nu1 || !nu2 || !h_cand || !h_prev || !best || !keys)
    return -1;
  int ncur = 1;
  cur[0] = (Path){0, 0, 0, 0, 0, -1, -1, 0};
  memcpy(cu1, init1, 8 * w1);
  memcpy(cu2, init2, 8 * w2);
  for (int j = 0; j < n2; j++) {
    for (int r = 0; r < ncur; r++) cur[r].slot = r;
    int nn = 0, order = 0, lim = select_best(cur, ncur, beam, best, keys);
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
      nxt[0].order = 0;
      memcpy(nu1, cu1 + (size_t)cur[0].slot * w1, 8 * w1);
      memcpy(nu2, cu2 + (size_t)cur[0].slot * w2, 8 * w2);
      nn = 1;
    }
    Path *tp = cur; cur = nxt; nxt = tp;
    uint64_t *t1 = cu1; cu1 = nu1; nu1 = t1;
    uint64_t *t2 = cu2; cu2 = nu2; nu2 = t2;
    ncur = nn;
  }
  int lim = select_best(cur, ncur, beam, best, keys);
  for (int r = 0; r < lim; r++) { if (cur[r].last != -1) cur[r].chunks++; cur[r].order = r; }
  select_best(cur, lim, lim, best, keys);
  for (int j = 0; j < n2; j++) out_pick[j] = -1;
  for (int h = cur[0].hist; h != -1; h = h_prev[h]) out_pick[c_start[h_cand[h]]] = h_cand[h];
  free(cur); free(nxt); free(cu1); free(cu2); free(nu1); free(nu2); free(h_cand); free(h_prev);
  free(best); free(keys);
  return 0;
}

/* The search with bit sets of w1 = n1 / 64 + 1 and w2 = n2 / 64 + 1 words per path (the
   one-word case compiled apart, with fixed-size copies). */
int meteor_resolve(int n1, int n2, int beam, const int *cptr, const int *c_start,
                   const int *c_len, const int *c_mstart, const int *c_mlen, const int *c_inc,
                   const int *f_ok, const int *f_len, const int *f_mstart, const int *f_mlen,
                   const int *f_inc, const uint64_t *init1, const uint64_t *init2,
                   int *out_pick) {
  if (n1 < 64 && n2 < 64)
    return resolve(n1, n2, beam, cptr, c_start, c_len, c_mstart, c_mlen, c_inc, f_ok, f_len,
                   f_mstart, f_mlen, f_inc, init1, init2, out_pick, 1, 1);
  return resolve(n1, n2, beam, cptr, c_start, c_len, c_mstart, c_mlen, c_inc, f_ok, f_len,
                 f_mstart, f_mlen, f_inc, init1, init2, out_pick, n1 / 64 + 1, n2 / 64 + 1);
}

/* ---- whole segments ------------------------------------------------------------------- */

/* Word features (by word id) and the paraphrase trie (node 0 = root; children of node t:
   ch_word/ch_node[ch_off[t] .. ch_off[t+1]-1] sorted by word; entries whose reference phrase
   ends at t: em_k[em_off[t] .. em_off[t+1]-1] in table order; paraphrase of entry k:
   pp_word[pp_off[k] .. pp_off[k+1]-1]). */
typedef struct {
  const int *hash, *shash, *syn_off, *syn;
  const uint8_t *func;
  const uint64_t *sig;
  const int *ch_off, *ch_word, *ch_node, *em_off, *em_k, *pp_off, *pp_word;
  double weight[4];
} Tables;

typedef struct { int j, len, i, mlen, mod; } Cand;
typedef struct { Cand *c; int n, cap; } Cands;

static int push(Cands *v, int j, int len, int i, int mlen, int mod) {
  if (v->n == v->cap) {
    int cap = v->cap ? 2 * v->cap : 256;
    Cand *p = realloc(v->c, sizeof(Cand) * cap);
    if (!p) return -1;
    v->c = p; v->cap = cap;
  }
  v->c[v->n++] = (Cand){j, len, i, mlen, mod};
  return 0;
}

static int share_synset(const Tables *t, int a, int b) {
  if (!(t->sig[a] & t->sig[b])) return 0;
  const int *x = t->syn + t->syn_off[a], *xe = t->syn + t->syn_off[a + 1];
  const int *y = t->syn + t->syn_off[b], *ye = t->syn + t->syn_off[b + 1];
  while (x < xe && y < ye) {
    if (*x == *y) return 1;
    if (*x < *y) x++; else y++;
  }
  return 0;
}

static int child(const Tables *t, int node, int word) {
  int lo = t->ch_off[node], hi = t->ch_off[node + 1];
  while (lo < hi) {
    int mid = (lo + hi) >> 1;
    if (t->ch_word[mid] < word) lo = mid + 1; else hi = mid;
  }
  return lo < t->ch_off[node + 1] && t->ch_word[lo] == word ? t->ch_node[lo] : -1;
}

/* Paraphrase matches of phrases starting at a[s] found in b: (phrase length in a, start in b,
   paraphrase length) in trie order, then b order. */
static int para_side(const Tables *t, const int *a, int na, int s, const int *b, int nb,
                     int a_is_ref, Cands *out, int *cov_a, int *cov_b) {
  int node = 0;
  for (int d = 0; s + d < na; d++) {
    node = child(t, node, a[s + d]);
    if (node < 0) break;
    for (int e = t->em_off[node]; e < t->em_off[node + 1]; e++) {
      int k = t->em_k[e], size = t->pp_off[k + 1] - t->pp_off[k];
      const int *pp = t->pp_word + t->pp_off[k];
      for (int i = 0; i < nb && i + size <= nb; i++) {
        if (size && b[i] != pp[0]) continue;
        int same = 1;
        for (int q = 1; q < size && same; q++) same = b[i + q] == pp[q];
        if (!same) continue;
        int rc = a_is_ref ? push(out, s, d + 1, i, size, 3) : push(out, i, size, s, d + 1, 3);
        if (rc) return -1;
        for (int q = 0; q <= d; q++) cov_a[s + q]++;
        for (int q = 0; q < size; q++) cov_b[i + q]++;
      }
    }
  }
  return 0;
}

static int collect(const Tables *t, const int *w1, int n1, const int *w2, int n2, Cands *out,
                   int *cov1, int *cov2) {
  const int *H = t->hash, *S = t->shash;
  int identical = n1 == n2;
  for (int j = 0; j < n2; j++)
    for (int i = 0; i < n1; i++)
      if (H[w1[i]] == H[w2[j]]) {
        if (push(out, j, 1, i, 1, 0)) return -1;
        cov1[i]++; cov2[j]++;
      }
  for (int i = 0; i < n1 && identical; i++) identical = H[w1[i]] == H[w2[i]];
  if (identical) return 0;
  for (int j = 0; j < n2; j++)
    for (int i = 0; i < n1; i++)
      if (S[w1[i]] == S[w2[j]] && H[w1[i]] != H[w2[j]]) {
        if (push(out, j, 1, i, 1, 1)) return -1;
        cov1[i]++; cov2[j]++;
      }
  for (int j = 0; j < n2; j++) {
    if (!t->sig[w2[j]]) continue;
    for (int i = 0; i < n1; i++)
      if (H[w1[i]] != H[w2[j]] && share_synset(t, w1[i], w2[j])) {
        if (push(out, j, 1, i, 1, 2)) return -1;
        cov1[i]++; cov2[j]++;
      }
  }
  for (int j = 0; j < n2; j++)
    if (para_side(t, w2, n2, j, w1, n1, 1, out, cov2, cov1)) return -1;
  for (int i = 0; i < n1; i++)
    if (para_side(t, w1, n1, i, w2, n2, 0, out, cov1, cov2)) return -1;
  return 0;
}

static int inc_of(const Tables *t, const Cand *c) {
  double w = t->weight[c->mod];
  return (int)(c->mlen * w) + (int)(c->len * w);
}

/* Statistics of one segment (hypothesis w1, reference w2) into st[23]:
   lengths, function words, 4 modules x (test content, ref content, test func, ref func),
   chunks, matched test words, matched reference words. */
static int segment(const Tables *t, int beam, const int *w1, int n1, const int *w2, int n2,
                   Cands *cv, int *st) {
  int n = n2 > 0 ? n2 : 1, words1 = n1 / 64 + 1, words2 = n2 / 64 + 1;
  int *cov1 = calloc(n1 + 1, sizeof(int)), *cov2 = calloc(n + 1, sizeof(int));
  int *cptr = calloc(n + 1, sizeof(int)), *fill = calloc(n + 1, sizeof(int));
  int *f = calloc(6 * (size_t)n, sizeof(int));
  uint64_t *init = calloc(words1 + words2, 8);
  if (!cov1 || !cov2 || !cptr || !fill || !f || !init) return -1;
  int *f_ok = f, *f_len = f + n, *f_mstart = f + 2 * n, *f_mlen = f + 3 * n,
      *f_inc = f + 4 * n, *pick = f + 5 * n;
  cv->n = 0;
  if (collect(t, w1, n1, w2, n2, cv, cov1, cov2)) return -1;
  int nc = cv->n;
  int *cols = malloc(sizeof(int) * 6 * (size_t)(nc + 1));
  if (!cols) return -1;
  int *c_start = cols, *c_len = cols + nc + 1, *c_mstart = cols + 2 * (nc + 1),
      *c_mlen = cols + 3 * (nc + 1), *c_inc = cols + 4 * (nc + 1), *c_src = cols + 5 * (nc + 1);
  for (int k = 0; k < nc; k++) cptr[cv->c[k].j + 1]++;
  for (int j = 0; j < n2; j++) cptr[j + 1] += cptr[j];
  for (int k = 0; k < nc; k++) {
    const Cand *c = &cv->c[k];
    int at = cptr[c->j] + fill[c->j]++;
    c_start[at] = c->j; c_len[at] = c->len; c_mstart[at] = c->i; c_mlen[at] = c->mlen;
    c_inc[at] = inc_of(t, c); c_src[at] = k;
  }
  for (int j = 0; j < n2; j++) {
    if (cptr[j + 1] - cptr[j] != 1) continue;
    int at = cptr[j], ok = 1;
    for (int q = 0; q < c_len[at] && ok; q++) ok = cov2[c_start[at] + q] == 1;
    for (int q = 0; q < c_mlen[at] && ok; q++) ok = cov1[c_mstart[at] + q] == 1;
    if (!ok) continue;
    f_ok[j] = 1; f_len[j] = c_len[at]; f_mstart[j] = c_mstart[at]; f_mlen[j] = c_mlen[at];
    f_inc[j] = c_inc[at];
    set_bits(init + words1, c_start[at], c_len[at]);
    set_bits(init, c_mstart[at], c_mlen[at]);
  }
  if (meteor_resolve(n1, n2, beam, cptr, c_start, c_len, c_mstart, c_mlen, c_inc, f_ok, f_len,
                     f_mstart, f_mlen, f_inc, init, init + words1, pick)) return -1;
  memset(st, 0, 23 * sizeof(int));
  st[0] = n1; st[1] = n2;
  for (int i = 0; i < n1; i++) st[2] += t->func[w1[i]];
  for (int j = 0; j < n2; j++) st[3] += t->func[w2[j]];
  for (int j = 0; j < n2; j++) {            /* final match per reference position */
    fill[j] = pick[j] >= 0 ? pick[j] : (f_ok[j] ? cptr[j] : -1);
    if (fill[j] < 0) continue;
    const Cand *c = &cv->c[c_src[fill[j]]];
    int *row = st + 4 + 4 * c->mod;
    for (int q = 0; q < c->mlen; q++) row[t->func[w1[c->i + q]] ? 2 : 0]++;
    for (int q = 0; q < c->len; q++) row[t->func[w2[c->j + q]] ? 3 : 1]++;
  }
  int chunks = 0, idx = 0, last_end = -1;
  while (idx < n2) {
    if (fill[idx] < 0) {
      if (last_end != -1) { chunks++; last_end = -1; }
      idx++;
    } else {
      const Cand *c = &cv->c[c_src[fill[idx]]];
      if (last_end != -1 && c->i != last_end) chunks++;
      idx = c->len > 0 ? c->j + c->len : idx + 1;
      last_end = c->i + c->mlen;
    }
  }
  if (last_end != -1) chunks++;
  st[20] = chunks;
  for (int m = 0; m < 4; m++) {
    st[21] += st[4 + 4 * m] + st[6 + 4 * m];
    st[22] += st[5 + 4 * m] + st[7 + 4 * m];
  }
  free(cov1); free(cov2); free(cptr); free(fill); free(f); free(init); free(cols);
  return 0;
}

/* Segment s: hypothesis ids h_ids[h_off[s] .. h_off[s+1]-1], reference ids likewise;
   statistics to out[23 * s ...]. Returns 0, or -1 on allocation failure. */
int meteor_batch(int n_seg, const int64_t *h_off, const int *h_ids, const int64_t *r_off,
                 const int *r_ids, int n_words, const int *hash, const int *shash,
                 const uint8_t *func, const int *syn_off, const int *syn, const int *ch_off,
                 const int *ch_word, const int *ch_node, const int *em_off, const int *em_k,
                 const int *pp_off, const int *pp_word, const double *weights, int beam,
                 int *out) {
  Tables t = {hash, shash, syn_off, syn, func, NULL, ch_off, ch_word, ch_node, em_off, em_k,
              pp_off, pp_word, {weights[0], weights[1], weights[2], weights[3]}};
  uint64_t *sig = calloc(n_words + 1, 8);
  if (!sig) return -1;
  for (int w = 0; w < n_words; w++)
    for (int q = syn_off[w]; q < syn_off[w + 1]; q++) sig[w] |= (uint64_t)1 << (syn[q] & 63);
  t.sig = sig;
  Cands cv = {NULL, 0, 0};
  int rc = 0;
  for (int s = 0; s < n_seg && rc == 0; s++)
    rc = segment(&t, beam, h_ids + h_off[s], (int)(h_off[s + 1] - h_off[s]), r_ids + r_off[s],
                 (int)(r_off[s + 1] - r_off[s]), &cv, out + 23 * (size_t)s);
  free(cv.c); free(sig);
  return rc;
}
"""
