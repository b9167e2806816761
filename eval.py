"""Evaluate BiRD-style: generate on the test files and score, or score a prediction file.

    .venv/bin/python eval.py --config configs/eval_bird.py --ckpt runs/demo --data out/demo/test
    .venv/bin/python eval.py --predictions VG.jsonl --task vg --out runs/audit

Every field of the config file can be overridden with --config.a.b=value (e.g.
--config.batch_size=32, --config.limit=100, --config.images=SAMed2Dv1/images; a tuple
field takes the flag once per item: --config.tasks=vg --config.tasks=roc).

Exit codes (bird_jax/exit_codes.py, docs/faults.md): 0 scored, 2 refused input (one line naming
the flag, file or field), 4 the checkpoint's weights hold NaN/inf, 6 some task had nothing to
score, 1 anything unexpected (with its traceback).
"""

import os

from absl import flags

from bird_jax.cli import define_config_file

_CONFIG = define_config_file(
    "eval.py", "config",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "eval_bird.py"),
    "Python config file (get_config()).", lock_config=True)
flags.DEFINE_string("ckpt", "", "model mode: Orbax checkpoint folder, training workdir or HF folder")
flags.DEFINE_string("data", "", "model mode: folder with the per-task test files (Med-GRIT JSON)")
flags.DEFINE_list("predictions", [], "audit mode: BiRD-format JSONL file(s), comma-separated")
flags.DEFINE_list("task", [], "audit mode: vg, roc, rc or mia (one per prediction file)")
flags.DEFINE_string("out", "", "output folder (default: config.out)")


def main(argv) -> int:
  del argv
  from absl import logging

  logging.set_verbosity(logging.ERROR)  # Orbax logs checkpoint steps (INFO)
  from bird_jax.evaluation.cli import main as run

  return run(_CONFIG.value, flags.FLAGS)


if __name__ == "__main__":
  from bird_jax.cli import run_absl

  run_absl("eval.py", main, configs=[_CONFIG])
