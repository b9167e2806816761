"""Caption metrics: ours vs pycocoevalcap on a 30,000-sample synthetic corpus, BiRD's protocol.

Both sides score each of the 8 modalities separately (PTB tokenization of references and
candidates, BLEU-1..4, METEOR 1.5, ROUGE-L, CIDEr), as BiRD's RC/MIA scripts do with
pycocoevalcap (a new METEOR JVM per modality). Prints wall times, their ratio and the largest
per-modality differences (values rounded to 6 decimals, as BiRD reports them).

  .venv/bin/python bench/bench_metrics.py [--n 30000] [--skip-reference]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time

from bird_jax.metrics.modality import MODALITIES, group_by_modality
from bird_jax.metrics.synthetic import corpus
from bird_jax.metrics.text import caption_scores_by_modality

KEYS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")


def reference(images, refs, hyps) -> dict[str, dict[str, float]]:
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
    with contextlib.redirect_stdout(io.StringIO()):
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


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--n", type=int, default=30000)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--skip-reference", action="store_true", help="time ours only")
  ap.add_argument("--workers", type=int, default=1, help="processes for our METEOR")
  args = ap.parse_args()
  images, refs, hyps = corpus(args.n, args.seed)
  # Java's tokenizer may keep the case of its input's very first token: start with a
  # lower-case word so both sides see the same text.
  refs = ["the " + r for r in refs]
  hyps = ["the " + h for h in hyps]
  print(f"corpus: {args.n} samples, {len(MODALITIES)} modalities")

  t0 = time.perf_counter()
  caption_scores_by_modality(images, refs, hyps, meteor="none")
  t_rest = time.perf_counter() - t0
  t0 = time.perf_counter()
  ours = caption_scores_by_modality(images, refs, hyps, meteor="python", workers=args.workers)
  t_ours = time.perf_counter() - t0
  print(f"ours (PTB + BLEU + METEOR + ROUGE-L + CIDEr): {t_ours:.1f} s "
        f"(without METEOR: {t_rest:.1f} s; METEOR workers: {args.workers})")
  if args.skip_reference:
    return
  t0 = time.perf_counter()
  ref, t_ref_meteor = reference(images, refs, hyps)
  t_ref = time.perf_counter() - t0
  print(f"pycocoevalcap (same protocol): {t_ref:.1f} s (without METEOR: "
        f"{t_ref - t_ref_meteor:.1f} s)")
  print(f"speed-up: {t_ref / t_ours:.1f}x (without METEOR: "
        f"{(t_ref - t_ref_meteor) / t_rest:.1f}x; METEOR alone: "
        f"{t_ref_meteor / (t_ours - t_rest):.1f}x)")
  for k in KEYS:
    diff = max(abs(ours.per_modality[m].as_dict()[k] - ref[m][k]) for m in MODALITIES
               if ours.per_modality[m] is not None)
    print(f"max |ours - pycocoevalcap| {k}: {diff:.2e}")


if __name__ == "__main__":
  main()
