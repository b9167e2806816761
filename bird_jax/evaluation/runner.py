"""Model mode: test samples -> prompts + pixels -> batched greedy generation -> predictions.

Each sample's question (with its `<img>` span) becomes the reference's chat prompt
(`chatml.encode_prompt`: system turn, user turn, `<|im_start|>assistant\\n`); its images are read
with the reference preprocessing (`data.image.load_pixels`, normalised on device). Samples are
sorted by prompt length and cut into fixed-size batches, so each batch is padded to a nearby
prompt bucket and the whole test set compiles a few programs (per bucket and max_new_tokens).
Pixels of the next batch are read on host threads while the current one decodes. Responses
are decoded WITHOUT skipping special tokens and written unprocessed, as BiRD's inference does.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from bird_jax.chatml import ChatTooLong, encode_prompt
from bird_jax.config import QwenVLConfig
from bird_jax.data.image import load_pixels
from bird_jax.evaluation.config import MAX_NEW_TOKENS
from bird_jax.evaluation.predictions import Prediction
from bird_jax.evaluation.testsets import EvalSample, image_exists
from bird_jax.generate import GenerationConfig, Generator, default_buckets
from bird_jax.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class RunOptions:
  batch_size: int = 8
  max_new_tokens: dict[str, int] = dataclasses.field(default_factory=lambda: dict(MAX_NEW_TOKENS))
  min_new_tokens: int = 1
  temperature: float = 0.0  # 0 = greedy (BiRD)
  top_p: float = 1.0
  seed: int = 0
  buckets: tuple[int, ...] = ()  # prompt widths; () = generate.default_buckets
  loader_threads: int = 8


@dataclasses.dataclass(frozen=True)
class _Prompt:
  index: int
  ids: list[int]
  images: list[str]


def build_prompts(samples: Sequence[EvalSample], tok: Tokenizer, cfg: QwenVLConfig,
                  max_len: int) -> list[_Prompt]:
  out = []
  for i, s in enumerate(samples):
    try:
      enc = encode_prompt(tok, s.question, n_image_tokens=cfg.vision.n_queries, max_len=max_len)
    except ChatTooLong as e:
      raise ValueError(f"sample {s.id!r} ({s.image}): {e}") from None
    except ValueError as e:
      raise ValueError(f"sample {s.id!r} ({s.image}): bad question text: {e}") from None
    out.append(_Prompt(i, enc.ids.tolist(), enc.image_paths))
  return out


def _pixels(batch: Sequence[_Prompt], find_image: Callable[[str], Path], size: int,
            pool: concurrent.futures.Executor) -> np.ndarray | None:
  m = max(len(p.images) for p in batch)
  if m == 0:
    return None

  def read(path: str) -> np.ndarray:
    file = find_image(path)
    return load_pixels(file.read_bytes(), size, name=str(file))

  out = np.zeros((len(batch), m, size, size, 3), np.uint8)
  jobs = {(r, k): pool.submit(read, path) for r, p in enumerate(batch)
          for k, path in enumerate(p.images)}
  for (r, k), job in jobs.items():
    out[r, k] = job.result()
  return out


def predict(task: str, samples: Sequence[EvalSample], gen: Generator, tok: Tokenizer,
            cfg: QwenVLConfig, find_image: Callable[[str], Path], opts: RunOptions,
            progress: bool = True) -> list[Prediction]:
  """Generates a response for every sample (input order kept)."""
  if not samples:
    return []
  n_new = opts.max_new_tokens[task]
  gcfg = GenerationConfig.bird(tok, max_new_tokens=n_new, temperature=opts.temperature,
                               top_p=opts.top_p)
  gcfg = dataclasses.replace(gcfg, min_new_tokens=opts.min_new_tokens)
  prompts = build_prompts(samples, tok, cfg, gen.buckets[-1])
  missing = sorted({p for pr in prompts for p in pr.images if not image_exists(find_image, p)})
  if missing:
    raise FileNotFoundError(f"{task}: {len(missing)} image(s) not found, e.g. {missing[:5]}")
  prompts.sort(key=lambda p: len(p.ids))
  batches = [prompts[i:i + opts.batch_size] for i in range(0, len(prompts), opts.batch_size)]
  responses: list[str] = [""] * len(samples)
  size = cfg.vision.image_size
  bar = tqdm(total=len(samples), desc=f"{task} generation", unit="sample", disable=not progress)
  with concurrent.futures.ThreadPoolExecutor(opts.loader_threads) as pool, \
      concurrent.futures.ThreadPoolExecutor(1) as ahead:  # assembles the next batch
    nxt = ahead.submit(_pixels, batches[0], find_image, size, pool)
    for b, batch in enumerate(batches):
      pixels = nxt.result()
      if b + 1 < len(batches):
        nxt = ahead.submit(_pixels, batches[b + 1], find_image, size, pool)
      outs = gen.generate([p.ids for p in batch], pixels, cfg=gcfg, seed=opts.seed + b)
      for p, ids in zip(batch, outs):
        responses[p.index] = tok.decode(ids.tolist())
      bar.update(len(batch))
  bar.close()
  return [Prediction(s.id, s.image, s.question, s.annotation, r)
          for s, r in zip(samples, responses)]


def make_generator(model, cfg: QwenVLConfig, tok: Tokenizer, opts: RunOptions,
                   mesh: jax.sharding.Mesh | None) -> Generator:
  """One generator for all tasks (its compiled programs are shared between them)."""
  longest = max(opts.max_new_tokens.values())
  buckets = opts.buckets or default_buckets(cfg.llm.seq_length - longest)
  base = GenerationConfig.bird(tok, max_new_tokens=longest)
  return Generator(model, base, batch_size=opts.batch_size, buckets=buckets, mesh=mesh)
