"""BiRD's evaluation protocol (docs/evaluation.md): greedy, min_new_tokens 1, max_new_tokens 80
(VG/ROC/RC) or 100 (MIA), eos = pad = <|endoftext|>, BiRD's post-processing and scoring.

    .venv/bin/python eval.py --config configs/eval_bird.py --ckpt runs/bird7b --data data/test
    .venv/bin/python eval.py --predictions VG.jsonl --task vg --out runs/audit_vg
"""

from bird_jax.evaluation.config import default_config


def get_config():
  return default_config()
