"""The long demo (about 70 minutes on 2 CPU cores): the demo's tiny model from scratch on 20k
phantom images for 5500 steps, then BiRD's evaluation on 600 questions per task spread over the
held-out cases.

    .venv/bin/python -m bird_jax_demo --config configs/demo_long.py --out runs/demo_long
"""

from bird_jax_demo.config import get_config as demo_config


def get_config():
  c = demo_config()
  c.train.steps = 5500
  c.train.ckpt_every = 500
  c.optim.warmup_steps = 100
  c.train.workdir = "runs/demo_long"
  c.demo.datagen.num_images = 20000
  c.demo.eval.limit = 600  # per task, spread over the test file (all modalities)
  return c
