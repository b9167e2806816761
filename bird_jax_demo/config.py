"""The demo's run config (`python -m bird_jax_demo`): the tiny model from scratch on the phantom
training cases, on CPU, about 11 minutes; the `demo` block holds its datagen and eval settings.
configs/demo.py returns the same config for `train.py`.

`get_config("quick")` (`python -m bird_jax_demo --quick`) is the CI-sized variant: a few
minutes that check the pipeline, not the learning."""

import ml_collections

from bird_jax.train.config import default_config


def get_config(arg: str | None = None):
  if arg not in (None, "", "quick"):
    raise ValueError(f"bird_jax_demo/config.py: unknown variant {arg!r} (variants: quick)")
  c = default_config()
  c.model.preset = "tiny"
  c.init.seed = 0
  c.freeze = ()  # from scratch: everything is trained
  c.data.batch_size = 8
  c.data.max_len = 512
  c.data.max_images_per_row = 4
  c.data.num_epochs = 0  # repeat; the step budget decides
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 30
  c.optim.weight_decay = 0.01
  c.train.steps = 1000
  c.train.log_every = 10
  c.train.ckpt_every = 250
  c.train.keep = 1
  c.train.tensorboard = False
  c.train.workdir = "runs/demo"
  c.mesh.data = 1
  # the demo's own stages (bird_jax_demo/run.py): phantom conversations with BiRD's bare grounded
  # answers (fewer tokens per box), VG and ROC turns about different structures
  c.demo = ml_collections.ConfigDict({
      "datagen": {"num_images": 1000, "image_size": 112, "vg": 3, "roc": 3, "rc": 0, "mia": 0,
                  "negatives": 0.0, "disjoint": True, "answer_style": "concise", "seed": 0},
      "eval": {"tasks": ("vg", "roc"), "limit": 0, "batch_size": 32},
  })
  if arg == "quick":
    c.demo.datagen.num_images = 48
    c.demo.eval.limit = 8
    c.train.update({"steps": 12, "log_every": 2, "ckpt_every": 1000})
    c.data.worker_count = 0
  return c
