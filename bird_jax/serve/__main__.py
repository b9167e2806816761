"""A local server for a model: a web page to talk about an image and see the boxes, and an
OpenAI-compatible endpoint (bird_jax/serve/app.py):

    python -m bird_jax.serve [--ckpt CKPT|HF_DIR] [--host 127.0.0.1] [--port 8000]

Without --ckpt the demo's trained model (runs/demo/train) is served. It binds to 127.0.0.1
unless --host says otherwise. When the environment variable BIRD_JAX_API_KEY is set, the /v1/
routes require ``Authorization: Bearer $BIRD_JAX_API_KEY`` (the key is never printed or logged).
Concurrent requests are answered in batches of up to --batch-size (bird_jax/serve/batcher.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from bird_jax import exit_codes


def main(argv: list[str] | None = None) -> None:
  from bird_jax.assistant import DEFAULT_MAX_PIXELS

  ap = argparse.ArgumentParser(prog="python -m bird_jax.serve", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--ckpt", default="", help="a training workdir, Orbax checkpoint or HF Qwen-VL "
                  "folder (default: the demo's model, runs/demo/train)")
  ap.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
  ap.add_argument("--port", type=int, default=8000)
  ap.add_argument("--name", default="", help="the model name clients send (default: the "
                  "checkpoint folder's name)")
  ap.add_argument("--batch-size", type=int, default=8, help="requests answered together")
  ap.add_argument("--max-wait-ms", type=float, default=10.0,
                  help="how long the first request of a batch waits for others")
  ap.add_argument("--max-queue", type=int, default=256, help="waiting requests before 429")
  ap.add_argument("--max-new-tokens", type=int, default=80, help="the longest answer")
  ap.add_argument("--max-images", type=int, default=1, help="images per conversation")
  ap.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_PIXELS)
  ap.add_argument("--max-body-mb", type=float, default=20.0, help="request body size limit")
  ap.add_argument("--dtype", default="", help="compute dtype, e.g. bfloat16 (default: the model's)")
  args = ap.parse_args(argv)

  def fail(message: str, code: int = exit_codes.BAD_INPUT):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)

  if min(args.batch_size, args.max_new_tokens, args.max_images, args.max_queue) < 1:
    fail("--batch-size, --max-new-tokens, --max-images and --max-queue must be >= 1")
  from bird_jax.assistant import Assistant, Message, NoModel, resolve_checkpoint
  from bird_jax.checkpoint.verify import NonFiniteWeights

  try:
    ckpt = resolve_checkpoint(args.ckpt)
  except NoModel as e:
    fail(str(e))
  print(f"loading {ckpt} ...", flush=True)
  try:
    bot = Assistant.load(ckpt, dtype=args.dtype or None, name=args.name or None,
                         batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                         max_images=args.max_images, max_image_pixels=args.max_image_pixels)
  except NonFiniteWeights as e:
    fail(str(e), exit_codes.NON_FINITE)
  except (OSError, ValueError) as e:
    fail(f"cannot load {ckpt}: {e}")

  warm = time.perf_counter()
  blank = np.zeros((bot.cfg.vision.image_size,) * 2 + (3,), np.uint8)
  bot.answer([bot.prompt([Message("user", "Where is it?", (blank,))])])
  print(f"compiled for a one-image question in {time.perf_counter() - warm:.1f} s (other prompt "
        "lengths compile on first use)", flush=True)
  import uvicorn

  from bird_jax.serve.app import API_KEY_ENV, create_app
  from bird_jax.serve.batcher import Batcher

  api_key = os.environ.get(API_KEY_ENV) or None
  batcher = Batcher(bot, max_wait_s=args.max_wait_ms / 1000, max_queue=args.max_queue)
  app = create_app(bot, batcher, api_key=api_key, max_body_bytes=int(args.max_body_mb * 2**20))
  if args.host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
    print(f"warning: listening on {args.host} without an API key (set {API_KEY_ENV})", flush=True)
  print(f"model {bot.name!r}: http://{args.host}:{args.port}/ (page), "
        f"http://{args.host}:{args.port}/v1 (OpenAI API); API key "
        f"{'required' if api_key else 'not required'}", flush=True)
  try:
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
  finally:
    batcher.close()


if __name__ == "__main__":
  main()
