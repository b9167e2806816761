"""The main job on the embedded default, end to end on CPU.

    .venv/bin/python -m bird_jax.demo

Builds the tiny Qwen-VL (random weights), draws a synthetic scan with one bright structure,
renders a grounding question in ChatML with the image span, runs the jitted forward pass and a
few greedy steps, and parses whatever boxes the (untrained) model writes.
"""

from __future__ import annotations

import io
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from bird_jax import boxes, chat
from bird_jax.config import get_preset
from bird_jax.data import image
from bird_jax.model import QwenVL
from bird_jax.tokenizer import load_tokenizer


def synthetic_scan(size: int = 256, seed: int = 0) -> tuple[bytes, list[float]]:
  """A grey disc on noise, as PNG bytes, and its normalised box."""
  rng = np.random.default_rng(seed)
  img = rng.normal(40, 10, (size, size)).clip(0, 255)
  cy, cx, r = size * 0.35, size * 0.6, size * 0.12
  yy, xx = np.mgrid[:size, :size]
  img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 200
  buf = io.BytesIO()
  Image.fromarray(img.astype(np.uint8)).save(buf, format="PNG")
  return buf.getvalue(), [(cx - r) / size, (cy - r) / size, (cx + r) / size, (cy + r) / size]


def main(new_tokens: int = 8) -> None:
  cfg = get_preset("tiny")
  tok = load_tokenizer(cfg)
  model = QwenVL(cfg, rngs=nnx.Rngs(0))
  n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  print(f"model: tiny preset, {n / 1e6:.2f}M parameters, {cfg.vision.image_size}px images, "
        f"{cfg.vision.n_queries} image tokens")

  png, box = synthetic_scan()
  pixels = image.normalize(image.load_pixels(png, cfg.vision.image_size))[None, None]
  prompt = chat.encode_prompt(tok, "Where is the lesion?", images=["scan.png"],
                              n_image_tokens=cfg.vision.n_queries)
  print(f"reference answer: {boxes.ref_span('lesion', [box])}")

  graphdef, state = nnx.split(model)

  @jax.jit
  def next_token(state, tokens, pixels, last):
    return jnp.argmax(nnx.merge(graphdef, state)(tokens, pixels)[0, last])

  # one fixed-length buffer (right padding never affects earlier positions): one compile
  start = len(prompt.ids)
  buf = np.full((1, start + new_tokens), tok.endoftext_id, np.int32)
  buf[0, :start] = prompt.ids
  t0 = time.perf_counter()
  for i in range(start, start + new_tokens):  # full re-forward per step: a demo, not a decoder
    buf[0, i] = int(next_token(state, buf, pixels, i - 1))
  dt = time.perf_counter() - t0
  answer = tok.decode(buf[0, start:].tolist())
  parsed = boxes.parse_boxes(answer)
  print(f"prompt: {start} tokens; {new_tokens} greedy steps in {dt:.1f}s")
  print(f"untrained model says: {answer!r} -> {len(parsed.boxes)} box(es), "
        f"{len(parsed.issues)} parse issue(s)")


if __name__ == "__main__":
  main()
