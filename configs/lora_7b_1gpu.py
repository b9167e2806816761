"""LoRA on one 40 GB GPU (an A100-40GB): Qwen-VL-Chat's weights frozen in bf16, rank-64
adapters (alpha 16) on the LLM's attention and MLP and on the resampler, trained in fp32 with
Adam; otherwise bird_7b_1gpu.py (one 2048-token row per micro-step, 128 accumulation steps).
`python -m bird_jax.plan` puts it at the figure in docs/training.md.

    .venv/bin/python train.py --config configs/lora_7b_1gpu.py --config.init.hf=... \\
        --config.data.shards=...
    .venv/bin/python -m bird_jax.plan --config configs/lora_7b_1gpu.py --mesh fsdp=1 \\
        --device_gib 40
"""

import os

from bird_jax.train.config import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(__file__), "bird_7b_1gpu.py"))
  c.model.overrides = {"dtype": "bfloat16", "param_dtype": "bfloat16",
                       "vision_param_dtype": "bfloat16", "remat": "full"}
  c.lora.rank, c.lora.alpha = 64, 16.0
  c.optim.lr = 2e-4  # adapters take a larger rate than full fine-tuning
  c.optim.moments_dtype = "float32"  # the adapters' moments are small
  c.train.workdir = "runs/lora_7b_1gpu"
  return c
