"""Tiny model on CPU, minutes: the demo's training run.

    .venv/bin/python train.py --config configs/demo.py --config.data.shards=out/demo/train
"""

from bird_jax.train.config import default_config


def get_config():
  c = default_config()
  c.model.preset = "tiny"
  c.init.seed = 0
  c.freeze = []  # from scratch: everything is trained
  c.data.batch_size = 16
  c.data.max_len = 256
  c.data.max_images_per_row = 2
  c.data.num_epochs = 0  # repeat; the step budget decides
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 20
  c.optim.weight_decay = 0.0
  c.train.steps = 300
  c.train.log_every = 10
  c.train.ckpt_every = 100
  c.train.workdir = "runs/demo"
  c.mesh.data = 1
  return c
