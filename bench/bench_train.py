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
import time

import jax
import numpy as np

from bird_jax import sharding
from bird_jax.config import get_preset
from bird_jax.train import optimizer as O
from bird_jax.train import state as S
from bird_jax.train import step as T
from bird_jax.train.flops import mfu, step_flops
from measure import matmul_peak


def batch(cfg, rows: int, length: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  q = cfg.vision.n_queries
  tokens = rng.integers(0, 256, (1, rows, length)).astype(np.int32)
  tokens[..., 5], tokens[..., 6:6 + q], tokens[..., 6 + q] = (
      cfg.image_start_id, cfg.image_pad_id, cfg.image_end_id)
  s = cfg.vision.image_size
  return dict(tokens=tokens, labels=tokens.copy(), segment_ids=np.ones_like(tokens),
              positions=np.broadcast_to(np.arange(length, dtype=np.int32), tokens.shape).copy(),
              images=rng.integers(0, 255, (1, rows, 1, s, s, 3)).astype(np.uint8))


def setup(cfg, freeze, rows, length):
  mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  tx, lr = O.make_optimizer(O.OptimConfig(lr=1e-4, warmup_steps=1), 100)
  with jax.set_mesh(mesh):
    layout = S.make_layout(cfg, freeze, tx, mesh)
    params, frozen = S.random_params(cfg, freeze, layout, seed=0)
    state = S.initial_state(params, tx, layout)
    step = T.jit_step(T.make_train_step(layout.graphdef, tx, lr, T.StepConfig(), cfg.dtype),
                      layout.state_shardings, layout.frozen_shardings, mesh)
  return mesh, state, frozen, step, batch(cfg, rows, length)


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
