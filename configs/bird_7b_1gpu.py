"""BiRD's full fine-tune on ONE large GPU (an H200, 141 GB): bird_7b.py's recipe (fp32 masters
for the trained LLM and resampler, ViT frozen in bf16) with Adam moments in bf16, one
2048-token row per micro-step and 128 accumulation steps. `python -m bird_jax.plan` gives the
memory (docs/training.md): it fits 141 GB, not 80 GB (use LoRA, lora_7b_1gpu.py, or FSDP over
two or more GPUs there).

    .venv/bin/python train.py --config configs/bird_7b_1gpu.py --config.init.hf=... \\
        --config.data.shards=...
    .venv/bin/python -m bird_jax.plan --config configs/bird_7b_1gpu.py --mesh fsdp=1 \\
        --device_gib 141
"""

import os

from bird_jax.train.config import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(__file__), "bird_7b.py"))
  c.optim.moments_dtype = "bfloat16"
  c.data.batch_size = 1
  c.data.worker_count = 4
  c.optim.grad_accum = 128
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 1, 1
  c.train.workdir = "runs/bird_7b_1gpu"
  return c
