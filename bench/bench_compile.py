"""Ahead-of-time lowering + compiling of the full-size Qwen-VL forward on abstract inputs.

    .venv/bin/python bench/bench_compile.py [--preset qwen_vl_7b] [--tokens 512] [--layers N]

Nothing of the model is allocated (`nnx.eval_shape` + `jax.jit(...).lower(...)`). Prints the
parameter count, lowering and compile seconds, and the compiled FLOPs. `--layers` overrides
both depths, to show that compile time stays flat in depth (layers run under `lax.scan`).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
from flax import nnx

from bird_jax.config import get_preset
from bird_jax.model import abstract_model


def compile_forward(cfg, tokens: int = 512, images: int = 1) -> dict[str, float]:
  model = abstract_model(cfg)
  graphdef, state = nnx.split(model)
  n_params = sum(x.size for x in jax.tree.leaves(state))

  def forward(state, tokens, pixels):
    return nnx.merge(graphdef, state)(tokens, pixels)

  s = cfg.vision.image_size
  args = (state, jax.ShapeDtypeStruct((1, tokens), jnp.int32),
          jax.ShapeDtypeStruct((1, images, s, s, 3), jnp.float32))
  t0 = time.perf_counter()
  lowered = jax.jit(forward).lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {"params": n_params, "lower_s": t1 - t0, "compile_s": t2 - t1,
          "flops": float((cost or {}).get("flops", float("nan")))}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--preset", default="qwen_vl_7b")
  ap.add_argument("--tokens", type=int, default=512)
  ap.add_argument("--layers", type=int, default=None, help="override LLM and ViT depth")
  args = ap.parse_args()
  cfg = get_preset(args.preset)
  if args.layers:
    cfg = cfg.replace(llm=dataclasses.replace(cfg.llm, layers=args.layers),
                      vision=dataclasses.replace(cfg.vision, layers=args.layers))
  r = compile_forward(cfg, args.tokens)
  print(f"preset {args.preset}: LLM {cfg.llm.layers} layers, ViT {cfg.vision.layers} layers, "
        f"{args.tokens} tokens + 1 image of {cfg.vision.image_size}px")
  print(f"parameters          {r['params'] / 1e9:.3f} B")
  print(f"lower               {r['lower_s']:.1f} s")
  print(f"compile             {r['compile_s']:.1f} s")
  print(f"compiled GFLOPs     {r['flops'] / 1e9:.1f} (scan bodies counted once by XLA)")


if __name__ == "__main__":
  main()
