"""`train.py`: one run of the training loop and the exit code its end gives
(bird_jax/exit_codes.py: 0 done, 3 out of data, 75 preempted or out of time; refused input,
non-finite steps and failed saves raise exceptions that carry 2, 4 and 5)."""

from __future__ import annotations

import ml_collections


def main(config: ml_collections.ConfigDict) -> int:
  """Trains (or resumes) the run `config` describes, prints how it stopped, returns the code."""
  from absl import logging

  logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint step at INFO
  from bird_jax import exit_codes as X
  from bird_jax.train.checkpointing import quiet_background_save_logs
  from bird_jax.train.loop import train

  quiet_background_save_logs()
  result = train(config)
  code = X.TRAIN_STOPS[result.stopped_by]
  print(f"stopped at step {result.step} ({result.stopped_by}: {X.DESCRIPTIONS[code]}); "
        + ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items()
                    if k in ("loss", "accuracy", "tokens_per_s")))
  return code
