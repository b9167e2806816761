"""Parity of the JAX model with the PyTorch reference at the release's widths, fewer layers.

Builds Qwen-VL with the released widths (LLM hidden 4096, 32 heads, MLP 11008, vocab 151936;
the 448 px ViT: width 1664, 16 heads, patch 14, MLP 8192; the 256-query resampler) but 2 LLM
and 2 ViT layers, makes random fp32 weights once in the HF layout (the tiny parity tests'
`random_hf_weights`), and runs one prompt (text, an image, text) through the PyTorch reference
of bird_jax_testing, then through the JAX model converted from the same arrays by
`bird_jax.checkpoint.hf` (as tests/test_model_parity.py does). It checks, with the tiny parity
tests' bound (bird_jax_testing/bounds.py, MODEL_PARITY):

  - max |difference| of the logits of the whole prompt;
  - max |difference| of the image features (ViT + resampler + projection);
  - 16 greedy tokens equal (transformers' `generate` on the reference's input embeddings vs
    `bird_jax.generate.Generator`, each with its own KV cache).

It prints each figure, the wall time and the peak RSS, and exits 1 when a check fails.

    python bench/width_parity.py             # the release's widths (7.28 GB of weights)
    python bench/width_parity.py --small     # hidden 1024, vocab 32768, ViT width 416
    python bench/width_parity.py --vocab 8192   # the release's widths, a small vocabulary

Memory: the weights exist once, as fp32 numpy. The reference holds them without copies (its
modules start on the meta device and its parameters are the arrays themselves, checked here),
runs, and is deleted; the JAX model is then converted from the same arrays, each handed over
and freed as its converted copy is made. Two moments make the peak: making the weights
(`random_hf_weights` draws each tensor in float64: wte plus 3x lm_head's size) and converting
them (all of them plus one more copy of lm_head). On 2 CPU cores: --small, 0.42 GB of weights,
peak RSS 1.6 GB, 20-40 s; --vocab 8192, 2.57 GB, peak 4.4 GB, ~70 s; the release's widths,
7.28 GB, peak ~10.5 GB (estimated from those runs), ~2-3 minutes.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import gc
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bird_jax_testing: the checkout's
from bird_jax.config import QwenVLConfig, get_preset  # noqa: E402

GB = 1e9
SMALL = {"hidden": 1024, "vocab": 32768, "vit_width": 416}


def width_config(llm_layers: int = 2, vit_layers: int = 2, hidden: int = 4096,
                 vocab: int = 151936, vit_width: int = 1664, image_size: int = 448
                 ) -> QwenVLConfig:
  """The release's config with fewer layers, fp32 compute and, optionally, narrower widths:
  head sizes stay (LLM 128, ViT 104), head counts and MLP widths scale with the width."""
  full = get_preset("qwen_vl_7b")
  m, v = full.llm, full.vision
  if vocab < 512:
    raise ValueError(f"vocab {vocab} is below 512 (the prompt's 256 byte ids, then image ids)")
  for name, width, unit in (("hidden", hidden, m.head_dim), ("vit width", vit_width, v.head_dim)):
    if width <= 0 or width % unit:
      raise ValueError(f"{name} {width} is not a positive multiple of the head size {unit}")
  llm = dataclasses.replace(m, layers=llm_layers, hidden=hidden, heads=hidden // m.head_dim,
                            mlp_dim=round(m.mlp_dim * hidden / m.hidden), vocab_size=vocab)
  vision = dataclasses.replace(v, layers=vit_layers, width=vit_width,
                               heads=vit_width // v.head_dim,
                               mlp_dim=round(v.mlp_dim * vit_width / v.width),
                               output_dim=hidden, image_size=image_size)
  return full.replace(llm=llm, vision=vision, image_start_id=vocab - 3, tokenizer="byte",
                      dtype="float32").validate()


def peak_rss() -> int:
  """This process's peak resident set size so far, in bytes."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def max_diff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def make_inputs(cfg: QwenVLConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(tokens [1, L] int32: 5 text ids, an image span, 8 text ids; pixels uint8 [1, 1, S, S, 3])."""
  rng = np.random.default_rng(seed + 1)
  q, s = cfg.vision.n_queries, cfg.vision.image_size
  span = [cfg.image_start_id] + [cfg.image_pad_id] * q + [cfg.image_end_id]
  row = rng.integers(0, 256, 5).tolist() + span + rng.integers(0, 256, 8).tolist()
  pixels = rng.integers(0, 256, (1, 1, s, s, 3), dtype=np.uint8)
  return np.asarray([row], np.int32), pixels


class _ToDevice(dict):
  """{path: numpy array} whose values move to the device as they are read, one at a time: each
  host array is gone before the next is read (JAX keeps the host array of a transfer alive
  until a garbage collection). `jax.device_put`, not `jnp.asarray`: the latter makes one more
  host copy of an array that is not 64-byte aligned (large numpy arrays are 16)."""

  def __getitem__(self, key):
    import jax

    x = jax.device_put(self.pop(key))
    x.block_until_ready()
    if x.nbytes >= 1 << 24:
      gc.collect()
    return x


def copied_parameters(module, weights: dict[str, np.ndarray]) -> list[str]:
  """Names of the parameters of torch `module` whose memory lies in none of `weights`' arrays."""
  spans = sorted((a.ctypes.data, a.ctypes.data + a.nbytes) for a in weights.values())
  starts = [s for s, _ in spans]

  def shared(ptr: int) -> bool:
    i = bisect.bisect_right(starts, ptr) - 1
    return i >= 0 and ptr < spans[i][1]

  return [n for n, t in module.named_parameters() if not shared(t.data_ptr())]


def torch_reference(cfg: QwenVLConfig, weights: dict[str, np.ndarray]):
  """bird_jax_testing's QwenVLReference, whose parameters are the arrays of `weights`."""
  from bird_jax_testing.reference import QwenVLReference

  ref = QwenVLReference(cfg, weights)
  copied = copied_parameters(ref, weights)
  if copied:
    raise RuntimeError(f"the reference copied {len(copied)} weights (e.g. {copied[0]})")
  return ref


def run_torch(cfg: QwenVLConfig, weights: dict[str, np.ndarray], tokens: np.ndarray,
              images: np.ndarray, new_tokens: int) -> dict[str, Any]:
  """Logits, image features and greedy tokens of the PyTorch reference."""
  import torch

  ref = torch_reference(cfg, weights)
  captured: dict[str, torch.Tensor] = {}

  def keep_embeds(module, args, kwargs):
    captured["embeds"] = kwargs["inputs_embeds"]

  with torch.no_grad():
    features = ref.visual(torch.from_numpy(images[0]).permute(0, 3, 1, 2)).numpy()
    hook = ref.llm.register_forward_pre_hook(keep_embeds, with_kwargs=True)
    logits = ref(tokens, images)
    hook.remove()
    embeds = captured["embeds"]
    out = ref.llm.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2]),
                           do_sample=False, max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, pad_token_id=0, eos_token_id=None)
  return {"logits": logits, "features": features, "tokens": out[0, -new_tokens:].tolist()}


def run_jax(cfg: QwenVLConfig, weights: dict[str, np.ndarray], tokens: np.ndarray,
            pixels: np.ndarray, images: np.ndarray, new_tokens: int) -> dict[str, Any]:
  """The same from the JAX model; `weights` is emptied as it is converted."""
  import jax
  from flax import nnx

  from bird_jax.checkpoint import hf
  from bird_jax.generate import GenerationConfig, Generator
  from bird_jax.model import abstract_model, model_from_params

  shapes = hf.param_shapes(nnx.state(abstract_model(cfg)))
  entries = hf.expected_tensors(cfg, shapes)
  params = _ToDevice(hf.hf_to_params(weights.pop, entries, shapes))
  weights.clear()
  model = model_from_params(cfg, params)
  if params:
    raise RuntimeError(f"parameters not taken by the model: {sorted(params)[:3]}")
  # jax.jit on the split state: nnx.jit would also return (copy) every parameter
  graphdef, state = nnx.split(model)
  features = jax.jit(lambda s, x: nnx.merge(graphdef, s).visual(x))(state, images[0])
  logits = jax.jit(lambda s, t, x: nnx.merge(graphdef, s)(t, x))(state, tokens, images)
  gen = Generator(model, GenerationConfig(max_new_tokens=new_tokens, pad_id=0),
                  buckets=(tokens.shape[1],))
  out = gen.generate([tokens[0].tolist()], pixels)[0]
  return {"logits": np.asarray(logits), "features": np.asarray(features), "tokens": out.tolist()}


def run_parity(cfg: QwenVLConfig, new_tokens: int = 16, seed: int = 0,
               log: Callable[[str], None] = print) -> dict[str, Any]:
  """Weights, the reference, then the JAX model (one after the other); the figures."""
  from bird_jax.data.image import normalize_np
  from bird_jax_testing.bounds import MODEL_PARITY
  from bird_jax_testing.reference import random_hf_weights

  t0 = time.perf_counter()
  weights = random_hf_weights(cfg, seed=seed)
  nbytes = sum(w.nbytes for w in weights.values())
  log(f"weights: {len(weights)} tensors, {nbytes / GB:.2f} GB fp32, made in "
      f"{time.perf_counter() - t0:.0f} s (peak RSS so far {peak_rss() / GB:.2f} GB)")
  tokens, pixels = make_inputs(cfg, seed)
  images = normalize_np(pixels)
  t1 = time.perf_counter()
  theirs = run_torch(cfg, weights, tokens, images, new_tokens)
  gc.collect()
  log(f"PyTorch reference: {time.perf_counter() - t1:.0f} s (peak RSS so far "
      f"{peak_rss() / GB:.2f} GB)")
  t2 = time.perf_counter()
  ours = run_jax(cfg, weights, tokens, pixels, images, new_tokens)
  gc.collect()
  log(f"JAX model: {time.perf_counter() - t2:.0f} s (peak RSS so far {peak_rss() / GB:.2f} GB)")
  if ours["logits"].shape != theirs["logits"].shape:
    raise RuntimeError(f"logits shapes differ: {ours['logits'].shape} vs {theirs['logits'].shape}")
  return {"logits": max_diff(ours["logits"], theirs["logits"]),
          "logits_scale": float(np.max(np.abs(theirs["logits"]))),
          "features": max_diff(ours["features"], theirs["features"]),
          "features_scale": float(np.max(np.abs(theirs["features"]))),
          "bound": MODEL_PARITY, "tokens_equal": ours["tokens"] == theirs["tokens"],
          "tokens": ours["tokens"], "tokens_reference": theirs["tokens"],
          "weights_bytes": nbytes, "seconds": time.perf_counter() - t0}


def passed(r: dict[str, Any]) -> bool:
  return r["logits"] <= r["bound"] and r["features"] <= r["bound"] and r["tokens_equal"]


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--llm-layers", type=int, default=2)
  p.add_argument("--vit-layers", type=int, default=2)
  p.add_argument("--hidden", type=int, help="LLM hidden size (default 4096; --small 1024)")
  p.add_argument("--vocab", type=int, help="vocabulary size (default 151936; --small 32768)")
  p.add_argument("--vit-width", type=int, help="ViT width (default 1664; --small 416)")
  p.add_argument("--image-size", type=int, default=448)
  p.add_argument("--tokens", type=int, default=16, help="greedy tokens to compare")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--small", action="store_true",
                 help="narrower widths (peak RSS ~1.6 GB, under a minute)")
  args = p.parse_args()
  widths = {"hidden": 4096, "vocab": 151936, "vit_width": 1664, **(SMALL if args.small else {})}
  widths.update({k: getattr(args, k) for k in widths if getattr(args, k) is not None})
  try:
    cfg = width_config(args.llm_layers, args.vit_layers, image_size=args.image_size, **widths)
  except ValueError as e:
    p.error(str(e))
  m, v = cfg.llm, cfg.vision
  print(f"config: LLM {m.layers} layers, hidden {m.hidden}, {m.heads} heads, MLP {m.mlp_dim}, "
        f"vocab {m.vocab_size}; ViT {v.layers} layers, width {v.width}, {v.heads} heads, MLP "
        f"{v.mlp_dim}, {v.image_size} px / patch {v.patch_size}; {v.n_queries} queries; fp32",
        flush=True)
  r = run_parity(cfg, args.tokens, args.seed, log=lambda s: print(s, flush=True))
  b = r["bound"]
  verdict = {True: "OK", False: "FAILED"}
  print(f"logits max |diff| {r['logits']:.3g} (bound {b:g}) {verdict[r['logits'] <= b]}; "
        f"max |logit| {r['logits_scale']:.3g}")
  print(f"image features max |diff| {r['features']:.3g} (bound {b:g}) "
        f"{verdict[r['features'] <= b]}; max |feature| {r['features_scale']:.3g}")
  print(f"greedy tokens ({args.tokens}) equal: {r['tokens_equal']} {verdict[r['tokens_equal']]}")
  if not r["tokens_equal"]:
    print(f"  JAX:     {r['tokens']}\n  PyTorch: {r['tokens_reference']}")
  print(f"wall time {r['seconds']:.0f} s; peak RSS {peak_rss() / GB:.2f} GB "
        f"(weights {r['weights_bytes'] / GB:.2f} GB)")
  return 0 if passed(r) else 1


if __name__ == "__main__":
  sys.exit(main())
