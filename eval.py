"""Evaluate BiRD-style: generate on the test files and score, or score a prediction file.

    .venv/bin/python eval.py --config configs/eval_bird.py --ckpt runs/demo --data out/demo/test
    .venv/bin/python eval.py --predictions VG.jsonl --task vg --out runs/audit

Every field of the config file can be overridden with --config.a.b=value (e.g.
--config.batch_size=32, --config.limit=100, --config.images=SAMed2Dv1/images; a tuple
field takes the flag once per item: --config.tasks=vg --config.tasks=roc).
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "eval_bird.py"),
    "Python config file (get_config()).", lock_config=True)
flags.DEFINE_string("ckpt", "", "model mode: Orbax checkpoint folder (or a training workdir)")
flags.DEFINE_string("data", "", "model mode: folder with the per-task test files (Med-GRIT JSON)")
flags.DEFINE_list("predictions", [], "audit mode: BiRD-format JSONL file(s), comma-separated")
flags.DEFINE_list("task", [], "audit mode: vg, roc, rc or mia (one per prediction file)")
flags.DEFINE_string("out", "", "output folder (default: config.out)")


def main(argv) -> int:
  del argv
  from absl import logging

  logging.set_verbosity(logging.ERROR)  # Orbax warns about read-only checkpoint folders
  from bird_jax.evaluation.cli import main as run

  try:
    return run(_CONFIG.value, flags.FLAGS)
  except (ValueError, FileNotFoundError) as e:
    print(f"eval.py: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  app.run(main)
