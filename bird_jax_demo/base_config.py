"""The demo base's pre-training run (`python -m bird_jax_demo.base`): the demo's model from
random weights on generic shape scenes (datagen's `shapes` source: colours, shapes, textures
and object names that share nothing with the phantom structures), so that the demo
fine-tunes a model that already refers and grounds, as BiRD starts from Qwen-VL-Chat.
The vision tower stays frozen at an initialisation that keeps positions: image token k pools
patch k (`init.keep_positions`) and carries its grid cell as a sin-cos code
(`init.vit_positions`), so that the LLM can learn to read where a named object is.

The `base` block holds the data and probe settings:
- `scenes`: VG and ROC turns about different labels of each scene (no answer can be read off
  another turn of the same conversation): up to `vg` VG and `roc` ROC turns per scene;
- `listings`: other scenes whose one question asks for every object with its boxes (a
  grounded listing: dense box targets);
- `scenes.style`, `listings.style`, `probe.style`: "full" scenes, "plain" ones (colour +
  shape labels, one object each) or "bare" ones (such objects on black): easier first
  phases, probed on the same style; a later phase starts from the run's checkpoints with
  `init.ckpt` (or its export with `init.hf`);
- `probe`: held-out scenes (another seed) with at least `min_objects` objects; each probe
  question names a label with one instance, and the probe scores the first box of the greedy
  answer (R@0.5 and the median centre error) after every checkpoint.
The learning rate is constant after the warm-up, so every checkpoint is a usable base and the
run can be stopped and resumed at any point; `train.steps` is the budget.

Variants (`--config bird_jax_demo/base_config.py:NAME`): `quick`, a CI-sized run that checks the
pipeline, not the learning; `gpu`, for one GPU: 16 times the rows per step, more scenes, a
parallel loader (bound the run with `--config.train.max_minutes`).
"""

import ml_collections

from bird_jax.train.config import default_config


def get_config(arg: str | None = None):
  if arg not in (None, "", "quick", "gpu"):
    raise ValueError(f"bird_jax_demo/base_config.py: unknown variant {arg!r} (variants: quick, "
                     "gpu)")
  c = default_config()
  c.model.preset = "demo"
  c.init.seed = 0
  c.init.keep_positions = True  # image token k starts as patch k (Resampler.keep_positions)
  c.init.vit_positions = 2.0  # and says which cell it is (VisionTower.sincos_positions)
  c.freeze = (r"^visual\.",)  # the tower stays as initialised: it cannot wash positions out
  # rows of 1024 tokens: a scene's conversation is up to ~820 tokens
  c.data.update({"batch_size": 4, "max_len": 1024, "max_images_per_row": 4, "num_epochs": 0})
  c.optim.update({"lr": 1e-3, "schedule": "constant", "warmup_steps": 100, "weight_decay": 0.01})
  c.train.update({"steps": 20000, "log_every": 20, "ckpt_every": 250, "keep": 2,
                  "tensorboard": False, "workdir": "runs/demo_base"})
  c.mesh.data = 1
  c.base = ml_collections.ConfigDict({
      "image_size": 112,
      "max_labels": 6,
      "scenes": {"num_images": 30000, "vg": 4, "roc": 2, "seed": 0, "style": "full"},
      "listings": {"num_images": 6000, "seed": 2, "style": "full"},
      "probe": {"num_images": 400, "seed": 1, "questions": 256, "min_objects": 3,
                "batch_size": 64, "style": "full"},
  })
  if arg == "quick":
    c.base.scenes.num_images = 48
    c.base.listings.num_images = 16
    c.base.probe.update({"num_images": 24, "questions": 8, "batch_size": 8})
    c.train.update({"steps": 6, "log_every": 2, "ckpt_every": 3})
    c.data.worker_count = 0
  if arg == "gpu":
    c.base.scenes.num_images = 100000
    c.base.listings.num_images = 20000
    c.base.probe.batch_size = 256
    c.data.update({"batch_size": 64, "worker_count": 12})
    c.train.update({"log_every": 50, "ckpt_every": 500})
  return c
