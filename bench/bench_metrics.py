"""Caption metrics: ours vs pycocoevalcap on a 30,000-sample synthetic corpus, BiRD's protocol.

Both sides score each of the 8 modalities separately (PTB tokenization of references and
candidates, BLEU-1..4, METEOR 1.5, ROUGE-L, CIDEr), as BiRD's RC/MIA scripts do with
pycocoevalcap (a new METEOR JVM per modality). The machine is shared, so both sides are timed
several times, interleaved, and the best and the median are reported; ours is also timed
without METEOR. Ours runs once untimed first (regex compilation, the compiled aligner and the
paraphrase-table cache, which persist across processes). Prints wall times, the speed-ups and
the largest per-modality differences (values rounded to 6 decimals, as BiRD reports them).

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

from bird_jax.metrics.modality import group_by_modality
from bird_jax.metrics.text import caption_scores_by_modality
from bird_jax.vocabulary import MODALITIES

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bird_jax_testing: the checkout's
from bird_jax_testing.captions import corpus

KEYS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")


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
  return f"best {min(times):.1f} s, median {statistics.median(times):.1f} s"


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
  run_ours = lambda meteor: caption_scores_by_modality(  # noqa: E731
    images, refs, hyps, meteor=meteor, workers=args.workers)
  _, t_first = timed(run_ours, "python")
  print(f"ours, first call (compiles regexes; aligner and paraphrase cache if absent): "
        f"{t_first:.1f} s")
  ref_runs = 0 if args.skip_reference else args.ref_repeat
  t_ours, t_rest, t_ref, t_ref_meteor = [], [], [], []
  ours = ref = None
  for r in range(max(args.repeat, ref_runs)):
    if r < args.repeat:
      t_rest.append(timed(run_ours, "none")[1])
      ours, t = timed(run_ours, "python")
      t_ours.append(t)
    if r < ref_runs:
      (ref, t_m), t = timed(reference, images, refs, hyps)
      t_ref.append(t)
      t_ref_meteor.append(t_m)
  print(f"ours (PTB + BLEU + METEOR + ROUGE-L + CIDEr), runs: {len(t_ours)}, {summary(t_ours)} "
        f"(without METEOR: {summary(t_rest)}; METEOR workers: {args.workers})")
  if not ref_runs:
    return
  t_ref_rest = [a - b for a, b in zip(t_ref, t_ref_meteor)]
  t_our_meteor = [a - b for a, b in zip(t_ours, t_rest)]
  print(f"pycocoevalcap (same protocol), runs: {len(t_ref)}, {summary(t_ref)} "
        f"(without METEOR: {summary(t_ref_rest)})")
  med = statistics.median
  print(f"speed-up: best {min(t_ref) / min(t_ours):.1f}x, median {med(t_ref) / med(t_ours):.1f}x "
        f"(without METEOR: median {med(t_ref_rest) / med(t_rest):.1f}x; METEOR alone: median "
        f"{med(t_ref_meteor) / med(t_our_meteor):.1f}x)")
  for k in KEYS:
    diff = max(abs(ours.per_modality[m].as_dict()[k] - ref[m][k]) for m in MODALITIES
               if ours.per_modality[m] is not None)
    print(f"max |ours - pycocoevalcap| {k}: {diff:.2e}")


if __name__ == "__main__":
  main()
