"""BiRD's recipe on one 8 x 80 GB node: FSDP over 8 devices, 4 rows of 2048 tokens per device
per micro-step, 4 accumulation steps (8 x 4 x 4 = 128 sequences per step).

    .venv/bin/python train.py --config configs/bird_7b_8gpu.py --config.init.hf=... \\
        --config.data.shards=...
"""

import os

from bird_jax.train.config import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(__file__), "bird_7b.py"))
  c.data.batch_size = 32
  c.optim.grad_accum = 4
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 8, 1
  c.train.workdir = "runs/bird_7b_8gpu"
  return c
