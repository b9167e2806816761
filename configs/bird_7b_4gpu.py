"""BiRD's recipe on the paper's hardware, 4 x A100 40 GB: FSDP over 4 devices, micro-batch of
one 2048-token row per device, 32 accumulation steps (4 x 32 = 128 sequences per step), Adam
moments stored in bfloat16 (34.0 GiB per device as `python -m bird_jax.plan` reports it; 41.3
with fp32 moments, which do not fit).

    .venv/bin/python train.py --config configs/bird_7b_4gpu.py --config.init.hf=... \\
        --config.data.shards=...
"""

import os

from bird_jax.train.config import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(__file__), "bird_7b.py"))
  c.data.batch_size = 4
  c.data.worker_count = 4
  c.optim.grad_accum = 32
  c.optim.moments_dtype = "bfloat16"
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 4, 1
  c.train.workdir = "runs/bird_7b_4gpu"
  return c
