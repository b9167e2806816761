"""Runs the training loop of tests/test_train.py in a child process (for kill -9 / SIGTERM)."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from test_train import run_config  # noqa: E402
from bird_jax.train.loop import train  # noqa: E402

if __name__ == "__main__":
  ap = argparse.ArgumentParser()
  ap.add_argument("--shards", required=True)
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--steps", type=int, default=8)
  ap.add_argument("--ckpt_every", type=int, default=2)
  a = ap.parse_args()
  result = train(run_config(a.shards, a.workdir, steps=a.steps, ckpt_every=a.ckpt_every))
  print(f"stopped at step {result.step} ({result.stopped_by})")
