"""What the benchmarks measure on the device itself, in the same run as the figure they divide:
the matmul peak (FLOP/s), the device-to-device copy bandwidth and the read bandwidth (bytes/s),
and generation split into prefill and decode.

`phase_times` times one Generator program twice: once decoding `max_new_tokens` tokens, once
stopping right after the prefill's token (every row's first token made a stop id, a runtime
value: no second compile). decode step = (full - prefill) / (max_new_tokens - 1), from each
call's fastest round: a busy machine only ever adds time, so the minimum is the estimate least
disturbed by it (medians of two noisy times can differ by more than a tiny model's decode).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import jax.numpy as jnp

from bird_jax.generate import MAX_STOP_IDS, Generator


def seconds(fn: Callable[[], object], reps: int = 1) -> float:
  """Mean wall time of fn() over reps calls (fn's result blocked on)."""
  t0 = time.perf_counter()
  for _ in range(reps):
    jax.block_until_ready(fn())
  return (time.perf_counter() - t0) / reps


def matmul_peak(n: int = 2048, reps: int = 10, dtype: str = "float32") -> float:
  """FLOP/s of an n x n matmul chain (the ceiling MFU and fractions of peak divide by)."""
  a = jnp.ones((n, n), dtype) / n
  f = jax.jit(lambda a: a @ a)
  jax.block_until_ready(f(a))
  return 2 * n ** 3 / seconds(lambda: f(a), reps)


def copy_bandwidth(nbytes: int = 256 * 2**20, reps: int = 10) -> float:
  """Bytes/s moved (read + written) by an elementwise pass over a device array."""
  x = jnp.ones((nbytes // 4,), jnp.float32)
  f = jax.jit(lambda x: x * 2.0)
  jax.block_until_ready(f(x))
  return 2 * nbytes / seconds(lambda: f(x), reps)


def read_bandwidth(nbytes: int = 256 * 2**20, reps: int = 10) -> float:
  """Bytes/s read by a sum over a device array (nothing written back: the ceiling of a weight
  stream, which a decode step at batch 1 is)."""
  x = jnp.ones((nbytes // 4,), jnp.float32)
  f = jax.jit(jnp.sum)
  jax.block_until_ready(f(x))
  return nbytes / seconds(lambda: f(x), reps)


@dataclasses.dataclass
class Phases:
  prefill_s: float  # prefill + the first token (fastest round)
  decode_step_s: float  # one more token for every row (from the fastest rounds)
  total_s: float  # the whole call, max_new_tokens tokens per row (fastest round)
  rounds: int


def phase_times(gen: Generator, prompts: list[list[int]], repeats: int = 3,
                pixels=None) -> Phases:
  """Prefill and per-step decode time of `gen` (greedy, built with min_new_tokens =
  max_new_tokens so that every row decodes all of them) on `prompts` (and their images
  `pixels`, as `Generator.generate` takes them), in alternating rounds."""
  cfg = gen.cfg
  new = cfg.max_new_tokens
  if new < 2 or cfg.min_new_tokens != new or cfg.temperature:
    raise ValueError("phase_times needs greedy decoding with min_new_tokens = max_new_tokens >= 2")
  outs = gen.generate(prompts, pixels)  # compiles
  firsts = sorted({int(o[0]) for o in outs} | set(cfg.stop_ids))
  if len(firsts) > MAX_STOP_IDS:
    raise ValueError(f"{len(firsts)} distinct first tokens; give rows that share a prompt")
  stop_early = dataclasses.replace(cfg, stop_ids=tuple(firsts), min_new_tokens=0)
  if any(len(o) != 1 for o in gen.generate(prompts, pixels, cfg=stop_early)):
    raise RuntimeError("the prefill-only call did not stop after the first token")
  full, pre = [], []
  for _ in range(repeats):
    full.append(seconds(lambda: gen.generate(prompts, pixels)))
    pre.append(seconds(lambda: gen.generate(prompts, pixels, cfg=stop_early)))
  t_full, t_pre = min(full), min(pre)
  return Phases(t_pre, (t_full - t_pre) / (new - 1), t_full, repeats)


def decode_matmul_rate(cfg, rows: int, dtype: str = "float32", reps: int = 5) -> float:
  """FLOP/s of a decode step's matmuls alone: `rows` activations through stacked random
  weights of the LLM's shapes (scanned over the layers, as the model runs) and the lm_head.
  What the matmul kernels give at this batch size, without attention or any other op."""
  m = cfg.llm
  h = m.hidden
  shapes = [(h, 3 * h), (h, h), (h, m.mlp_dim), (h, m.mlp_dim), (m.mlp_dim, h)]
  ws = [jnp.full((m.layers, a, b), 1.0 / a, dtype) for a, b in shapes]
  head = jnp.full((h, m.vocab_size), 1.0 / h, dtype)

  def step(x, ws, head):
    def layer(x, w):
      qkv, o, w1, w2, c = w
      x = x + (x @ qkv)[:, :h] @ o
      return x + ((x @ w1) * (x @ w2)) @ c, None
    return jax.lax.scan(layer, x, ws)[0] @ head

  f = jax.jit(step)
  x = jnp.ones((rows, h), dtype)
  jax.block_until_ready(f(x, ws, head))
  flops = 2.0 * rows * (m.layers * sum(a * b for a, b in shapes) + h * m.vocab_size)
  return flops / seconds(lambda: f(x, ws, head), reps)
