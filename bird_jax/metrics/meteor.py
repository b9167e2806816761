"""METEOR 1.5 (English, ``-norm``), as pycocoevalcap runs it, in Python.

pycocoevalcap starts ``meteor-1.5.jar - - -stdio -l en -norm`` and, per image, sends
``SCORE ||| reference ||| hypothesis``, collects the sufficient statistics and finally sends
``EVAL`` with all of them: the corpus score is computed from the summed statistics, not as a
mean of segment scores. This package reproduces each step of the jar:

- normalisation (``meteor_normalize``): Moses-style tokenisation, dots dropped from acronyms,
  dashes between words split, contractions split, nonbreaking prefixes, lower-casing;
- candidate matches (``meteor_match``) by four modules in order: exact, stem (Snowball),
  synonym (WordNet synsets plus base forms from the exception list or suffix rules), paraphrase
  (phrase table); words are compared by Java String.hashCode like the jar;
- the aligner: unambiguous one-to-one matches are fixed, the rest is resolved by a beam search
  (beam 40) ranked by weighted match count (integer arithmetic, weights 1/.5/.5/.5), then chunks,
  then distance, including the jar's quirks (truncated integer sums, distance added to the
  parent path);
- statistics and score with the English ranking-task parameters alpha 0.85, beta 0.20,
  gamma 0.60, delta 0.75 and module weights 1.0 / 0.6 / 0.8 / 0.6.
The Python code here is the reference; for many segments (``segment_stats_array``) matching,
alignment and statistics run compiled from C when a compiler exists (``meteor_native``), with
identical results, in threads that ``segment_stats_later`` leaves running while its caller
goes on. ``meteor_java`` runs the official jar instead, for exact audits.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import multiprocessing
import subprocess
from collections.abc import Callable, Sequence

import numpy as np

from bird_jax.metrics import meteor_data, meteor_native
from bird_jax.metrics.meteor_match import Match, Resources, candidate_matches
from bird_jax.metrics.meteor_normalize import TokenCache, normalize, normalized_words, tokens_of

ALPHA, BETA, GAMMA, DELTA = 0.85, 0.20, 0.60, 0.75
MODULE_WEIGHTS = (1.0, 0.6, 0.8, 0.6)      # scoring: exact, stem, synonym, paraphrase
ALIGN_WEIGHTS = (1.0, 0.5, 0.5, 0.5)       # ranking partial alignments
BEAM_SIZE = 40


@dataclasses.dataclass
class Problem:
  """One segment's alignment search: candidate matches per reference position, the fixed
  (unambiguous) matches and the words they use as bit sets."""
  n1: int
  n2: int
  matches: list[list[Match]]
  fixed: list[Match | None]
  used1: int
  used2: int


def _resolve(problem: Problem) -> tuple:
  """The jar's left-to-right beam search over reference positions.

  A path is a tuple (-(matches1 + matches2), chunks, distance, order, idx, last_match_end,
  used1_bits, used2_bits, chosen): the first four fields make Python's tuple order the jar's
  stable sort. matches1/2 are ints in the jar, so a match adds floor(length x weight) to each.
  ``chosen`` is a linked list (match, rest) of the matches picked by the search. The parent
  path's distance grows with each child it spawns, as in the jar.
  """
  n2 = problem.n2
  fixed = problem.fixed
  cands = []
  for row in problem.matches:
    out = []
    for m in row:
      start, length, mstart, mlength, module = m
      w = ALIGN_WEIGHTS[module]
      out.append((int(mlength * w) + int(length * w), mstart, start + length, mstart + mlength,
                  ((1 << mlength) - 1) << mstart, ((1 << length) - 1) << start,
                  abs(start - mstart), m))
    cands.append(out)
  paths = [(0, 0, 0, 0, 0, -1, problem.used1, problem.used2, None)]
  for current in range(n2):
    paths.sort()
    nxt = []
    append = nxt.append
    bit = 1 << current
    order = 0
    row = cands[current]
    for (neg, chunks, dist, _, idx, last, u1, u2, chosen) in paths[:BEAM_SIZE]:
      if u2 & bit:
        if current < idx:
          append((neg, chunks, dist, order, idx, last, u1, u2, chosen))
          order += 1
        else:
          m = fixed[idx]
          if m is not None:
            start, length, mstart, mlength, module = m
            w = ALIGN_WEIGHTS[module]
            if last != -1 and mstart != last:
              chunks += 1
            append((neg - int(mlength * w) - int(length * w), chunks,
                    dist + abs(start - mstart), order, start + length, mstart + mlength, u1, u2,
                    chosen))
            order += 1
        continue
      for inc, mstart, new_idx, new_last, mask1, mask2, absd, m in row:
        if u2 & mask2 or u1 & mask1:
          continue
        append((neg - inc, chunks + 1 if last != -1 and mstart != last else chunks, dist,
                order, new_idx, new_last, u1 | mask1, u2 | mask2, (m, chosen)))
        order += 1
        dist += absd                       # the jar adds it to the parent path
      append((neg, chunks + 1 if last != -1 else chunks, dist, order, idx + 1, -1, u1, u2,
              chosen))
      order += 1
    if not nxt:
      nxt.append(paths[0])
    paths = nxt
  paths.sort()
  final = []
  for order, (neg, chunks, dist, _, idx, last, u1, u2, chosen) in enumerate(paths[:BEAM_SIZE]):
    final.append((neg, chunks + 1 if last != -1 else chunks, dist, order, idx, last, u1, u2,
                  chosen))
  final.sort()
  return final[0]


@dataclasses.dataclass
class Stats:
  """METEOR sufficient statistics of one segment (or a sum of segments)."""
  test_len: float = 0.0
  ref_len: float = 0.0
  test_func: float = 0.0
  ref_func: float = 0.0
  # per module: test content, ref content, test function, ref function matches
  stage: list[list[float]] = dataclasses.field(default_factory=lambda: [[0.0] * 4 for _ in range(4)])
  chunks: float = 0.0
  test_word_matches: float = 0.0
  ref_word_matches: float = 0.0

  def to_list(self) -> list[float]:
    out = [self.test_len, self.ref_len, self.test_func, self.ref_func]
    for row in self.stage:
      out.extend(row)
    return out + [self.chunks, self.test_word_matches, self.ref_word_matches]

  @classmethod
  def from_list(cls, v: Sequence[float]) -> "Stats":
    return cls(v[0], v[1], v[2], v[3], [list(v[4 + 4 * k:8 + 4 * k]) for k in range(4)],
               v[20], v[21], v[22])

  def to_string(self) -> str:
    """The jar's stats line (Java's Double.toString of whole numbers)."""
    return " ".join(repr(float(x)) for x in self.to_list())

  @property
  def test_total(self) -> float:
    return sum(r[0] + r[2] for r in self.stage)

  @property
  def ref_total(self) -> float:
    return sum(r[1] + r[3] for r in self.stage)

  def perfect(self) -> bool:
    return (self.test_total == self.test_len and self.ref_total == self.ref_len
            and self.chunks == 1)


def _div(a: float, b: float) -> float:
  """Java double division (inf / nan instead of exceptions)."""
  if b == 0:
    return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a)
  return a / b


def score_stats(st: Stats) -> float:
  """The jar's computeMetrics: Fmean with fragmentation penalty (0 when undefined)."""
  test_wlen = DELTA * (st.test_len - st.test_func) + (1.0 - DELTA) * st.test_func
  ref_wlen = DELTA * (st.ref_len - st.ref_func) + (1.0 - DELTA) * st.ref_func
  test_w = ref_w = 0.0
  for k, w in enumerate(MODULE_WEIGHTS):
    test_w += st.stage[k][0] * w * DELTA
  for k, w in enumerate(MODULE_WEIGHTS):
    ref_w += st.stage[k][1] * w * DELTA
  for k, w in enumerate(MODULE_WEIGHTS):
    test_w += st.stage[k][2] * w * (1.0 - DELTA)
  for k, w in enumerate(MODULE_WEIGHTS):
    ref_w += st.stage[k][3] * w * (1.0 - DELTA)
  precision = _div(test_w, test_wlen)
  recall = _div(ref_w, ref_wlen)
  fmean = _div(1.0, _div(1.0 - ALPHA, precision) + _div(ALPHA, recall))
  if st.perfect():
    frag = 0.0
  else:
    frag = _div(st.chunks, (st.test_word_matches + st.ref_word_matches) / 2)
  penalty = GAMMA * (math.nan if math.isnan(frag) else (math.inf if math.isinf(frag)
                                                          else frag ** BETA))
  score = fmean * (1.0 - penalty)
  return 0.0 if math.isnan(score) else max(score, 0.0)


def prepare(test: str, ref: str, res: Resources
            ) -> tuple[list[str], list[str], Problem]:
  """Normalised words and the alignment search problem of one segment."""
  words1 = tokens_of(normalize(test))
  words2 = tokens_of(normalize(ref))
  return words1, words2, problem_of(words1, words2, res)


def problem_of(words1: list[str], words2: list[str], res: Resources) -> Problem:
  """The alignment search problem of normalised hypothesis and reference words."""
  matches, cov1, cov2, _ = candidate_matches(words1, words2, res)
  n1, n2 = len(words1), len(words2)
  fixed: list[Match | None] = [None] * n2
  used1 = used2 = 0
  for j in range(n2):
    if len(matches[j]) == 1:
      m = matches[j][0]
      j0, length, i0, mlength, _ = m
      if all(cov2[j0 + t] == 1 for t in range(length)) and \
          all(cov1[i0 + t] == 1 for t in range(mlength)):
        fixed[j] = m
        used2 |= ((1 << length) - 1) << j0
        used1 |= ((1 << mlength) - 1) << i0
  return Problem(n1, n2, matches, fixed, used1, used2)


def search(problem: Problem, native: bool = True) -> list[Match | None]:
  """Final matches per reference position (the chosen ones plus the fixed ones), by the
  compiled search when available (``meteor_native``), else in Python."""
  if native:
    final = meteor_native.resolve(problem, BEAM_SIZE, ALIGN_WEIGHTS)
    if final is not None:
      return final
  best = _resolve(problem)
  final = problem.fixed[:]
  node = best[-1]
  while node is not None:
    final[node[0][0]] = node[0]
    node = node[1]
  return final


def segment_stats(test: str, ref: str, res: Resources) -> Stats:
  """Statistics of one hypothesis (``test``) against one reference, both normalised here."""
  words1, words2, problem = prepare(test, ref, res)
  return finish(words1, words2, search(problem), res)


def finish(words1: list[str], words2: list[str], final: list[Match | None], res: Resources
           ) -> Stats:
  """Statistics from the chosen alignment (function/content words per module, chunks)."""
  n1, n2 = len(words1), len(words2)
  fw = res.function_words
  func1 = [w in fw for w in words1]
  func2 = [w in fw for w in words2]
  st = Stats(float(n1), float(n2), float(sum(func1)), float(sum(func2)))
  for m in final:
    if m is None:
      continue
    j0, length, i0, mlength, module = m
    row = st.stage[module]
    for t in range(mlength):
      row[2 if func1[i0 + t] else 0] += 1
    for t in range(length):
      row[3 if func2[j0 + t] else 1] += 1
  chunks, idx, last_end = 0, 0, -1
  while idx < n2:
    m = final[idx]
    if m is None:
      if last_end != -1:
        chunks += 1
        last_end = -1
      idx += 1
    else:
      if last_end != -1 and m[2] != last_end:
        chunks += 1
      idx = m[0] + m[1]
      last_end = m[2] + m[3]
  if last_end != -1:
    chunks += 1
  st.chunks = float(chunks)
  st.test_word_matches = st.test_total
  st.ref_word_matches = st.ref_total
  return st


def aggregate(stats: Sequence[Stats]) -> Stats:
  """The jar's EVAL sum: chunks of perfectly matched segments are not added."""
  total = Stats()
  for st in stats:
    total.test_len += st.test_len
    total.ref_len += st.ref_len
    total.test_func += st.test_func
    total.ref_func += st.ref_func
    for k in range(4):
      for c in range(4):
        total.stage[k][c] += st.stage[k][c]
    if not st.perfect():
      total.chunks += st.chunks
    total.test_word_matches += st.test_word_matches
    total.ref_word_matches += st.ref_word_matches
  return total


def clean_hypothesis(hyp: str) -> str:
  """pycocoevalcap's edit of a hypothesis before sending it to the jar."""
  return hyp.replace("|||", "").replace("  ", " ")


def vocabulary(texts: Sequence[str]) -> set[str]:
  """Normalised words of ``texts`` (for filtering the paraphrase table)."""
  out: set[str] = set()
  cache = TokenCache()
  for t in texts:
    out.update(normalized_words(t, cache))
  return out


STATS_SIZE = 23   # Stats.to_list()


def aggregate_array(stats: np.ndarray) -> Stats:
  """``aggregate`` of per-segment statistics given as rows of ``Stats.to_list()`` values."""
  stats = np.asarray(stats, np.float64).reshape(-1, STATS_SIZE)
  stage = stats[:, 4:20].reshape(-1, 4, 4)
  test_total = (stage[:, :, 0] + stage[:, :, 2]).sum(axis=1)
  ref_total = (stage[:, :, 1] + stage[:, :, 3]).sum(axis=1)
  perfect = (test_total == stats[:, 0]) & (ref_total == stats[:, 1]) & (stats[:, 20] == 1)
  total = stats.sum(axis=0)
  total[20] = stats[~perfect, 20].sum()
  return Stats.from_list(total.tolist())


def pair_stats_later(pairs: Sequence[tuple[str, str]], words: dict[str, list[str]],
                     res: Resources, native: bool = True) -> Callable[[], np.ndarray]:
  """Statistics [N, 23] of (reference, cleaned hypothesis) pairs from their normalised
  ``words``, as a function that waits for them: the compiled aligner (in background threads)
  when ``native`` and available, else the Python code (done before this returns)."""
  if native:
    wait = meteor_native.batch_stats_later([words[h] for _, h in pairs],
                                           [words[r] for r, _ in pairs], res, BEAM_SIZE,
                                           ALIGN_WEIGHTS)
    if wait is not None:
      return wait
  rows = [finish(words[h], words[r], search(problem_of(words[h], words[r], res), native=False),
                 res).to_list() for r, h in pairs]
  table = np.asarray(rows, np.float64).reshape(-1, STATS_SIZE)
  return lambda: table


def pair_stats(pairs: Sequence[tuple[str, str]], words: dict[str, list[str]], res: Resources,
               native: bool = True) -> np.ndarray:
  """``pair_stats_later``, waited for."""
  return pair_stats_later(pairs, words, res, native)()


def _unique_stats_later(unique: list[tuple[str, str]], res: Resources | None
                        ) -> Callable[[], np.ndarray]:
  cache = TokenCache()
  words = {t: normalized_words(t, cache) for t in dict.fromkeys(t for p in unique for t in p)}
  if res is None:
    res = Resources({w for ws in words.values() for w in ws})
  return pair_stats_later(unique, words, res)


def _worker_stats(pairs: list[tuple[str, str]], vocab: set[str]) -> np.ndarray:
  return _unique_stats_later(pairs, Resources(vocab))()


def _in_processes(unique: list[tuple[str, str]], workers: int) -> np.ndarray:
  vocab = vocabulary([t for pair in unique for t in pair])
  parts = [unique[k::workers] for k in range(workers)]
  with concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=multiprocessing.get_context("spawn")) as pool:
    done = list(pool.map(_worker_stats, parts, [vocab] * workers))
  table = np.zeros((len(unique), STATS_SIZE))
  for k, part in enumerate(done):
    table[k::workers] = part
  return table


def segment_stats_later(refs: Sequence[str], hyps: Sequence[str], res: Resources | None = None,
                        workers: int = 1) -> Callable[[], np.ndarray]:
  """Starts computing the statistics [N, 23] of every (reference, hypothesis) pair and returns
  a function that waits for them: normalising and word features run before this returns, the
  alignment after (compiled aligner threads; ``workers`` > 1: the unique pairs spread over that
  many spawned, JAX-safe, processes, started from a thread). Identical pairs are aligned once
  and each distinct text normalised once. ``res`` None: resources for the words of these pairs.
  """
  if len(refs) != len(hyps):
    raise ValueError(f"meteor: {len(refs)} references but {len(hyps)} hypotheses")
  pairs = list(zip(refs, (clean_hypothesis(h) for h in hyps)))
  index: dict[tuple[str, str], int] = {}
  rows = np.asarray([index.setdefault(p, len(index)) for p in pairs], np.int64)
  unique = list(index)
  if workers > 1 and len(unique) > 2000:
    pool = concurrent.futures.ThreadPoolExecutor(1)
    job = pool.submit(_in_processes, unique, workers)
    pool.shutdown(wait=False)
    return lambda: job.result()[rows]
  wait = _unique_stats_later(unique, res)
  return lambda: wait()[rows]


def segment_stats_array(refs: Sequence[str], hyps: Sequence[str], res: Resources | None = None,
                        workers: int = 1) -> np.ndarray:
  """``segment_stats_later``, waited for."""
  return segment_stats_later(refs, hyps, res, workers)()


def segment_stats_many(refs: Sequence[str], hyps: Sequence[str], res: Resources | None = None,
                       workers: int = 1) -> list[Stats]:
  """``segment_stats_array`` as ``Stats`` objects."""
  return [Stats.from_list(r) for r in segment_stats_array(refs, hyps, res, workers).tolist()]


def meteor_score(refs: Sequence[str], hyps: Sequence[str], res: Resources | None = None,
                 workers: int = 1) -> tuple[float, list[float]]:
  """Corpus METEOR and per-segment scores, one reference per hypothesis (pycocoevalcap)."""
  stats = segment_stats_array(refs, hyps, res, workers)
  return (score_stats(aggregate_array(stats)),
          [score_stats(Stats.from_list(r)) for r in stats.tolist()])


def meteor_java(refs: Sequence[str], hyps: Sequence[str], java: str = "java"
                ) -> tuple[float, list[float]]:
  """The official METEOR 1.5 jar run exactly as pycocoevalcap runs it (for audits)."""
  jar = meteor_data.meteor_jar()
  lines = [" ||| ".join(("SCORE", r, clean_hypothesis(h))) for r, h in zip(refs, hyps)]
  proc = subprocess.Popen([java, "-jar", "-Xmx2G", jar.name, "-", "-", "-stdio", "-l", "en",
                           "-norm"], cwd=jar.parent, stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  try:
    stats = []
    for line in lines:
      proc.stdin.write((line + "\n").encode())
      proc.stdin.flush()
      stats.append(proc.stdout.readline().decode().strip())
    proc.stdin.write(("EVAL ||| " + " ||| ".join(stats) + "\n").encode())
    proc.stdin.flush()
    scores = [float(proc.stdout.readline().strip()) for _ in stats]
    final = float(proc.stdout.readline().strip())
  finally:
    proc.stdin.close()
    proc.kill()
    proc.wait()
  return final, scores
