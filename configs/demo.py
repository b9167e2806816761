"""The demo's training run (README command 1, `python -m bird_jax_demo`): the tiny model from
scratch on the phantom training cases, on CPU, about 11 minutes.

    .venv/bin/python train.py --config configs/demo.py --config.data.shards=runs/demo/data/train
"""

from bird_jax_demo.config import get_config

__all__ = ["get_config"]  # the config lives with the demo
