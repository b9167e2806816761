"""The data stage of `python -m bird_jax_demo.base` alone, with the same flags:

    python bench/base_datagen.py --config FILE[:VARIANT] [--config.a.b=value ...] --out RUN

writes RUN/data/{train_scenes,train_listings,probe} exactly as the base command would (the
same `bird_jax_demo.base.datagen` calls); the base command run later with the same flags finds
them complete and goes straight to training. `bench/first_gpu.py` runs this on the CPU while
the device suite holds the GPU.
"""

from __future__ import annotations

import time
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from bird_jax_demo.base import BASE_CONFIG, FOLDERS, datagen

CONFIG = config_flags.DEFINE_config_file("config", BASE_CONFIG, "the pre-training config",
                                         lock_config=True)
OUT = flags.DEFINE_string("out", "runs/demo_base", "the base command's run folder")
flags.DEFINE_string("export", "", "accepted (the base command's flag) and unused")


def main(argv) -> None:
  del argv
  for name in ("scenes", "listings", "probe"):
    t0 = time.perf_counter()
    summary = datagen(CONFIG.value.base, name, Path(OUT.value) / "data" / FOLDERS[name])
    images = summary["split"]["train"]["images"] + summary["split"]["test"]["images"]
    print(f"{name}: {images} images in {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
  app.run(main)
