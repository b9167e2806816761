"""Train-step throughput and MFU of the `small` preset on this machine.

    .venv/bin/python bench/bench_train.py [--rows 4] [--length 512] [--steps 5]

Prints tokens/s, the MFU the trainer's logger reports (analytic FLOPs, bird_jax/train/flops.py)
against this machine's peak measured in the same run (a large fp32 matmul), and XLA's compiled
FLOPs divided by the analytic FLOPs. XLA's cost analysis counts a scanned loop body once, so
that ratio is taken on a depth-1 variant of the model, where the loop runs once.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import jax

from bird_jax.config import get_preset
from bird_jax.train import optimizer as O
from bird_jax.train.flops import mfu, step_flops
from measure import matmul_peak

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bird_jax_testing: the checkout's
from bird_jax_testing.numerics import train_setup  # noqa: E402


def setup(cfg, freeze, rows, length):
  return train_setup(cfg, freeze, rows, length, lr=1e-4)


def compiled_flops(cfg, freeze, rows, length) -> float:
  mesh, state, frozen, step, b = setup(cfg, freeze, rows, length)
  with jax.set_mesh(mesh):
    cost = step.lower(state, frozen, b).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--preset", default="small")
  ap.add_argument("--rows", type=int, default=4)
  ap.add_argument("--length", type=int, default=512)
  ap.add_argument("--steps", type=int, default=5)
  args = ap.parse_args()
  cfg = get_preset(args.preset).replace(dtype="float32")
  freeze = list(O.BIRD_FREEZE)
  analytic = step_flops(cfg, rows=args.rows, length=args.length, images=args.rows)

  peak = matmul_peak()
  mesh, state, frozen, step, b = setup(cfg, freeze, args.rows, args.length)
  with jax.set_mesh(mesh):
    for _ in range(2):  # compile + warm up
      state, m = step(state, frozen, b)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(args.steps):
      state, m = step(state, frozen, b)
    jax.block_until_ready(m)
    dt = (time.perf_counter() - t0) / args.steps

  shallow = cfg.replace(llm=dataclasses.replace(cfg.llm, layers=1),
                        vision=dataclasses.replace(cfg.vision, layers=1))
  ratio = compiled_flops(shallow, freeze, args.rows, args.length) / step_flops(
      shallow, rows=args.rows, length=args.length, images=args.rows).total

  tokens = args.rows * args.length
  print(f"preset {args.preset} (fp32, ViT frozen): {args.rows} rows x {args.length} tokens, "
        f"1 image per row, {jax.devices()[0].platform}")
  print(f"matmul peak (baseline)       {peak / 1e9:.1f} GFLOP/s")
  print(f"step time                    {dt * 1e3:.0f} ms")
  print(f"throughput                   {tokens / dt:.0f} tokens/s")
  print(f"analytic FLOPs per step      {analytic.total / 1e9:.1f} GFLOP "
        f"(LLM {analytic.llm / 1e9:.1f}, vision {analytic.vision / 1e9:.1f})")
  print(f"MFU vs measured matmul peak  {mfu(analytic.total, dt, 1, peak):.2f}")
  print(f"compiled / analytic FLOPs    {ratio:.3f} (depth-1 variant; no remat)")


if __name__ == "__main__":
  main()
