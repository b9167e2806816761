"""Caption metrics: ours vs pycocoevalcap on a 30,000-sample synthetic corpus, BiRD's protocol.

Both sides score each of the 8 modalities separately (PTB tokenization of references and
candidates, BLEU-1..4, METEOR 1.5, ROUGE-L, CIDEr), as BiRD's RC/MIA scripts do with
pycocoevalcap (a new METEOR JVM per modality). The machine is shared, so both sides are timed
several times, interleaved, and the best and the median are reported. Ours runs once untimed
first: it compiles the JAX programs (timed apart, from JAX's own compile events), the
tokenizer's regexes, the METEOR aligner and the paraphrase-table cache (the last two persist
across processes). Prints wall times, the speed-ups, the time split of our median run by phase
(tokenize, ids, JAX, METEOR: ``caption_scores_by_modality(timings=...)``) and asserts that every
metric of every modality is identical at the 6 decimals BiRD reports.

  .venv/bin/python bench/bench_metrics.py [--n 30000] [--repeat 5] [--ref-repeat 3]
                                          [--skip-reference]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import time
from pathlib import Path

import jax

from bird_jax.metrics.modality import group_by_modality
from bird_jax.metrics.text import caption_scores_by_modality
from bird_jax.vocabulary import MODALITIES

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bird_jax_testing: the checkout's
from bird_jax_testing.captions import corpus

KEYS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
PHASES = ("tokenize", "ids", "jax", "meteor")
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


@contextlib.contextmanager
def _quiet_stderr():
  """Silences the Java tokenizer's progress lines (written by the child process to fd 2)."""
  saved = os.dup(2)
  with open(os.devnull, "w") as null:
    os.dup2(null.fileno(), 2)
    try:
      yield
    finally:
      os.dup2(saved, 2)
      os.close(saved)


@contextlib.contextmanager
def compiling(out: list[float]):
  """Adds to ``out`` [seconds, programs] the seconds JAX spends tracing, lowering and compiling
  inside the block and the number of programs it compiles."""
  def listen(event: str, seconds: float, **_) -> None:
    if event in COMPILE_EVENTS:
      out[0] += seconds
      out[1] += event == COMPILE_EVENTS[-1]
  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    yield
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)


def reference(images, refs, hyps) -> tuple[dict[str, dict[str, float]], float]:
  from pycocoevalcap.bleu.bleu import Bleu
  from pycocoevalcap.cider.cider import Cider
  from pycocoevalcap.meteor.meteor import Meteor
  from pycocoevalcap.rouge.rouge import Rouge
  from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
  groups = group_by_modality(images)
  out = {}
  t_meteor = 0.0
  for m in MODALITIES:
    idx = groups.indices[m]
    gts = {k: [{"caption": refs[i]}] for k, i in enumerate(idx)}
    res = {k: [{"caption": hyps[i]}] for k, i in enumerate(idx)}
    with contextlib.redirect_stdout(io.StringIO()), _quiet_stderr():
      tok = PTBTokenizer()
      gts, res = tok.tokenize(gts), tok.tokenize(res)
      scores = {}
      b, _ = Bleu(4).compute_score(gts, res, verbose=0)
      scores.update({f"Bleu_{k + 1}": b[k] for k in range(4)})
      t0 = time.perf_counter()
      meteor = Meteor()
      scores["METEOR"] = meteor.compute_score(gts, res)[0]
      del meteor
      t_meteor += time.perf_counter() - t0
      scores["ROUGE_L"] = Rouge().compute_score(gts, res)[0]
      scores["CIDEr"] = Cider().compute_score(gts, res)[0]
    out[m] = {k: round(float(v), 6) for k, v in scores.items()}
  return out, t_meteor


def timed(fn, *args, **kwargs):
  t0 = time.perf_counter()
  out = fn(*args, **kwargs)
  return out, time.perf_counter() - t0


def summary(times: list[float]) -> str:
  return f"best {min(times):.2f} s, median {statistics.median(times):.2f} s"


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--n", type=int, default=30000)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--repeat", type=int, default=5, help="timed runs of ours")
  ap.add_argument("--ref-repeat", type=int, default=3, help="timed runs of pycocoevalcap")
  ap.add_argument("--skip-reference", action="store_true", help="time ours only")
  ap.add_argument("--workers", type=int, default=1, help="processes for our METEOR")
  args = ap.parse_args()
  images, refs, hyps = corpus(args.n, args.seed)
  # Java's tokenizer may keep the case of its input's very first token: start with a
  # lower-case word so both sides see the same text.
  refs = ["the " + r for r in refs]
  hyps = ["the " + h for h in hyps]
  print(f"corpus: {args.n} samples, {len(MODALITIES)} modalities")

  def run_ours(split: dict[str, float] | None = None):
    return caption_scores_by_modality(images, refs, hyps, meteor="python",
                                      workers=args.workers, timings=split)

  first: dict[str, float] = {}
  compiled = [0.0, 0]
  with compiling(compiled):
    _, t_first = timed(run_ours, first)
  print(f"ours, first call: {t_first:.2f} s, of which JAX compilation {compiled[0]:.2f} s "
        f"({compiled[1]} programs; JAX phase {first['jax']:.2f} s); also the regexes, the "
        "METEOR aligner and paraphrase cache if absent")
  ref_runs = 0 if args.skip_reference else args.ref_repeat
  t_ours, t_ref, t_ref_meteor, splits = [], [], [], []
  ours = ref = None
  for r in range(max(args.repeat, ref_runs)):
    if r < args.repeat:
      split: dict[str, float] = {}
      ours, t = timed(run_ours, split)
      t_ours.append(t)
      splits.append(split)
    if r < ref_runs:
      (ref, t_m), t = timed(reference, images, refs, hyps)
      t_ref.append(t)
      t_ref_meteor.append(t_m)
  med = statistics.median
  print(f"ours (PTB + BLEU + METEOR + ROUGE-L + CIDEr), runs: {len(t_ours)}, {summary(t_ours)} "
        f"(METEOR workers: {args.workers})")
  at = sorted(range(len(t_ours)), key=t_ours.__getitem__)[len(t_ours) // 2]
  phase = {p: splits[at].get(p, 0.0) for p in PHASES}
  print(f"ours, time split of the median run ({t_ours[at]:.2f} s): "
        + ", ".join(f"{p} {phase[p]:.2f} s" for p in PHASES)
        + f", other {t_ours[at] - sum(phase.values()):.2f} s (METEOR's aligner runs in threads "
        "during ids and JAX)")
  if not ref_runs:
    return
  t_ref_rest = [a - b for a, b in zip(t_ref, t_ref_meteor)]
  print(f"pycocoevalcap (same protocol), runs: {len(t_ref)}, {summary(t_ref)} "
        f"(without METEOR: {summary(t_ref_rest)})")
  print(f"speed-up: best {min(t_ref) / min(t_ours):.1f}x, median {med(t_ref) / med(t_ours):.1f}x")
  worst = 0.0
  for k in KEYS:
    diff = max(abs(ours.per_modality[m].as_dict()[k] - ref[m][k]) for m in MODALITIES
               if ours.per_modality[m] is not None)
    print(f"max |ours - pycocoevalcap| {k}: {diff:.2e}")
    worst = max(worst, diff)
  assert worst == 0.0, "scores differ from pycocoevalcap's"


if __name__ == "__main__":
  main()
