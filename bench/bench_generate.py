"""Generation throughput: bird_jax's jitted KV-cache decoder vs transformers' generate (CPU).

    .venv/bin/python bench/bench_generate.py [--preset small] [--batch 8] [--prompt 64] [--new 64]

Both sides run the same random weights (text only: the LLM of the preset) on the same
left-padded batch, greedy, min_new_tokens = max_new_tokens so that both emit exactly
batch x new tokens. bird_jax is timed after one warm-up call (compilation excluded, as a test
set compiles once per prompt bucket); transformers is timed after a warm-up call as well; the
two are timed in interleaved rounds (this machine is shared: the load changes by the minute).
Prints tokens/s of each and the ratio, and checks the two produced the same tokens.

Then bird_jax's generation against this machine's own ceiling, measured in the same run: the
prefill and the decode steps (timed apart, bench/measure.py) as fractions of a large matmul's
FLOP/s, and the decode step's matmuls alone (the same shapes, no attention or other ops) as
the ceiling the matmul kernels give at this batch size. The phases run on `--batch` copies of
the longest prompt (the same work as the padded batch).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import measure

import numpy as np
import torch
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bird_jax_testing: the checkout's
from bird_jax_testing.reference import QwenVLReference, random_hf_weights

from bird_jax.checkpoint import hf
from bird_jax.config import get_preset
from bird_jax.generate import GenerationConfig, Generator
from bird_jax.model import abstract_model, model_from_params
from bird_jax.train.flops import decode_step_flops, prefill_flops


def timed(fn) -> float:
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--preset", default="small")
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--prompt", type=int, default=64, help="longest prompt (others shorter)")
  ap.add_argument("--new", type=int, default=64)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
  args = ap.parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)

  cfg = get_preset(args.preset).replace(dtype="float32")
  weights = random_hf_weights(cfg, seed=0)
  shapes = hf.param_shapes(nnx.state(abstract_model(cfg)))
  model = model_from_params(cfg, hf.hf_to_params(weights.__getitem__,
                                                 hf.expected_tensors(cfg, shapes), shapes))
  ref = QwenVLReference(cfg, weights).llm
  n_llm = sum(p.numel() for p in ref.parameters())

  rng = np.random.default_rng(0)
  lens = np.linspace(args.prompt // 2, args.prompt, args.batch).astype(int)
  prompts = [rng.integers(0, 256, n).tolist() for n in lens]
  eos = 256
  gcfg = GenerationConfig(max_new_tokens=args.new, min_new_tokens=args.new, stop_ids=(eos,),
                          pad_id=eos)
  gen = Generator(model, gcfg, batch_size=args.batch, buckets=(args.prompt,))

  ids = torch.full((args.batch, args.prompt), eos, dtype=torch.long)
  mask = torch.zeros_like(ids)
  for i, p in enumerate(prompts):
    ids[i, args.prompt - len(p):] = torch.tensor(p)
    mask[i, args.prompt - len(p):] = 1

  def run_hf():
    with torch.no_grad():
      return ref.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                          max_new_tokens=args.new, min_new_tokens=args.new,
                          eos_token_id=eos, pad_token_id=eos)

  t0 = time.perf_counter()
  ours = gen.generate(prompts)
  compile_s = time.perf_counter() - t0
  theirs = run_hf()[:, args.prompt:].numpy()
  same = all(np.array_equal(o, t) for o, t in zip(ours, theirs))

  # interleaved rounds: both sides see the same machine load (this host is shared)
  rounds = [(timed(lambda: gen.generate(prompts)), timed(run_hf)) for _ in range(args.repeats)]
  t_ours, t_hf = min(r[0] for r in rounds), min(r[1] for r in rounds)
  ratios = sorted(h / o for o, h in rounds)
  tokens = args.batch * args.new
  print(f"model: {args.preset} LLM, {n_llm / 1e6:.1f}M parameters, fp32; batch {args.batch}, "
        f"prompts {lens.min()}-{lens.max()} tokens, {args.new} new tokens")
  print(f"bird_jax first call (compile + run): {compile_s:.2f} s")
  print(f"bird_jax generate: {tokens / t_ours:,.0f} tokens/s ({t_ours:.3f} s)")
  print(f"transformers generate: {tokens / t_hf:,.0f} tokens/s ({t_hf:.3f} s)")
  print(f"speed ratio (bird_jax / transformers, best of {args.repeats} each): {t_hf / t_ours:.2f}x")
  print(f"per-round ratios: {', '.join(f'{r:.2f}' for r in ratios)} "
        f"(median {ratios[len(ratios) // 2]:.2f}x)")
  print(f"identical tokens: {same}")

  # against the machine itself: the peak measured before and after, the higher one kept
  peaks = [measure.matmul_peak()]
  phases = measure.phase_times(gen, [prompts[-1]] * args.batch, repeats=args.repeats)
  bound = measure.decode_matmul_rate(cfg, args.batch)
  peaks.append(measure.matmul_peak())
  peak = max(peaks)
  pre = prefill_flops(cfg, rows=args.batch, length=args.prompt) / phases.prefill_s
  dec = decode_step_flops(cfg, rows=args.batch, cache_length=args.prompt + args.new) / (
      phases.decode_step_s)
  print(f"matmul peak (2048^2 fp32, before / after): {peaks[0] / 1e9:.1f} / "
        f"{peaks[1] / 1e9:.1f} GFLOP/s")
  print(f"prefill: {phases.prefill_s * 1e3:.1f} ms, {pre / 1e9:.1f} GFLOP/s = "
        f"{pre / peak:.2f} of the matmul peak")
  print(f"decode step: {phases.decode_step_s * 1e3:.2f} ms, {dec / 1e9:.1f} GFLOP/s = "
        f"{dec / peak:.2f} of the matmul peak (fastest of {phases.rounds} rounds)")
  print(f"decode-step matmuls alone at batch {args.batch}: {bound / 1e9:.1f} GFLOP/s = "
        f"{bound / peak:.2f} of the peak; decode reaches {dec / bound:.2f} of that")


if __name__ == "__main__":
  main()
