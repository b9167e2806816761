"""Input pipeline throughput: samples/s from 1024x1024 PNG sources at 448 px.

    .venv/bin/python bench/bench_loader.py [--records 240] [--workers 0 1 2]

Builds self-contained shards of synthetic 1024x1024 RGB PNGs (noisy, ~2.5 MB each) with 1-3
turn conversations in a temporary folder, then times the full pipeline (decode, bicubic
resize to 448, Qwen tokenizer, packing to 2048 tokens, batches of 8) for each worker count,
after one warm-up batch. The baseline, measured in the same run, is the per-sample stage
called in a plain loop in this process (no Grain): the most one core can give. Prints one
figure per line with its ratio to that baseline.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import sys
import tempfile
import time
from pathlib import Path

from bird_jax.config import get_preset
from bird_jax.data.image import png_bytes
from bird_jax.data.pipeline import DataConfig, SampleMaker, ShardSource, make_dataset
from bird_jax.data.shards import find_shards, write_shards

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bird_jax_testing: the checkout's
from bird_jax_testing.records import synthetic_pixels, synthetic_record

N_IMAGES = 16  # distinct source images (each record still decodes its own copy)


def baseline(cfg: DataConfig, model_cfg, n: int) -> float:
  """samples/s of the per-sample stage in a plain loop (one core, no Grain)."""
  source = ShardSource(find_shards(cfg.shards))
  make = SampleMaker(cfg, model_cfg, None)
  make(source[0])  # loads the tokenizer
  t0 = time.perf_counter()
  for i in range(n):
    make(source[i % len(source)])
  return n / (time.perf_counter() - t0)


def throughput(cfg: DataConfig, model_cfg) -> tuple[float, int]:
  """(samples/s after the first batch, samples timed) of the whole pipeline."""
  it = iter(make_dataset(cfg, model_cfg, process_index=0, process_count=1))
  next(it)
  start_samples, t0 = it.stats["samples"], time.perf_counter()
  for _ in it:
    pass
  dt = time.perf_counter() - t0
  n = it.stats["samples"] - start_samples
  it.close()
  del it
  gc.collect()
  return n / dt, n


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--records", type=int, default=240)
  p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
  p.add_argument("--read-threads", type=int, default=1)
  args = p.parse_args()
  model_cfg = get_preset("qwen_vl_7b")
  with tempfile.TemporaryDirectory() as tmp:
    images = [png_bytes(synthetic_pixels(i, 1024), compress_level=6) for i in range(N_IMAGES)]
    records = (synthetic_record(i, embed=False, n_turns=1 + i % 3).replace(
        image_bytes=images[i % N_IMAGES], width=1024, height=1024) for i in range(args.records))
    write_shards(records, tmp, num_shards=4, progress=False)
    base = DataConfig(shards=tmp, batch_size=8, max_len=2048, read_threads=args.read_threads)
    ref = baseline(base, model_cfg, 60)
    print(f"baseline per-sample stage, plain loop, 1 process: {ref:.1f} samples/s", flush=True)
    for w in args.workers:
      rate, n = throughput(dataclasses.replace(base, worker_count=w), model_cfg)
      print(f"loader worker_count={w} read_threads={args.read_threads}: {rate:.1f} samples/s "
            f"({n} samples, {rate / ref:.2f}x baseline)", flush=True)


if __name__ == "__main__":
  main()
