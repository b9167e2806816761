"""Train (fine-tune) Qwen-VL / BiRD.

    .venv/bin/python train.py --config configs/demo.py
    .venv/bin/python train.py --config configs/bird_7b.py --config.data.shards=data/train \\
        --config.init.hf=Qwen-VL-Chat --config.train.workdir=runs/bird7b

Every field of the config file can be overridden with --config.a.b=value. The run resumes
from the latest checkpoint in train.workdir when there is one (--config.train.resume=false to
refuse); SIGTERM/SIGINT save a checkpoint and exit.
"""

from absl import app
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Python config file (get_config()).",
                                          lock_config=True)


def main(argv) -> None:
  del argv
  from absl import logging

  logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint step at INFO
  from bird_jax.train.loop import train

  result = train(_CONFIG.value)
  print(f"stopped at step {result.step} ({result.stopped_by}); "
        + ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items()
                    if k in ("loss", "accuracy", "tokens_per_s")))


if __name__ == "__main__":
  from absl import flags

  flags.mark_flags_as_required(["config"])
  app.run(main)
