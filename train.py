"""Train (fine-tune) Qwen-VL / BiRD.

    .venv/bin/python train.py --config configs/demo.py --config.data.shards=runs/demo/data/train
    .venv/bin/python train.py --config configs/bird_7b.py --config.data.shards=data/train \\
        --config.init.hf=Qwen-VL-Chat --config.train.workdir=runs/bird7b

Every field of the config file can be overridden with --config.a.b=value. The run resumes
from the newest usable checkpoint in train.workdir when there is one (--config.train.resume_step
picks one; --config.train.resume=false starts anew, and refuses a workdir holding a run unless
--config.train.overwrite=true); SIGTERM/SIGINT save a checkpoint and exit.

Exit codes (bird_jax/exit_codes.py, docs/faults.md): 0 finished, 2 refused input, 3 out of
data, 4 non-finite loss/gradients, 5 a checkpoint could not be written, 75 preempted (saved;
rerun to resume), 1 anything unexpected.
"""

from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Python config file (get_config()).",
                                          lock_config=True)


def main(argv) -> int:
  del argv
  from bird_jax.train.cli import main as run

  return run(_CONFIG.value)


if __name__ == "__main__":
  from absl import flags

  from bird_jax.cli import run_absl

  flags.mark_flags_as_required(["config"])
  run_absl("train.py", main, configs=[_CONFIG], resumable=True)
