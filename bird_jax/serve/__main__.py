"""A local server for a model: a web page to talk about an image and see the boxes, and an
OpenAI-compatible endpoint (bird_jax/serve/app.py):

    python -m bird_jax.serve [--ckpt CKPT|HF_DIR] [--host 127.0.0.1] [--port 8000]

Without --ckpt the demo's trained model (runs/demo/train) is served. It binds to 127.0.0.1
unless --host says otherwise. When the environment variable BIRD_JAX_API_KEY is set, the /v1/
routes require ``Authorization: Bearer $BIRD_JAX_API_KEY`` (the key is never printed or logged).
Concurrent requests are answered in batches of up to --batch-size (bird_jax/serve/batcher.py);
a request without an answer after --request-timeout-s answers 504. SIGTERM or Ctrl-C stops the
server within seconds: requests still queued or being answered get a 503.
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import numpy as np

from bird_jax.cli import ToolParser, run_tool
from bird_jax.exit_codes import BadInput, refusing

PROG = "python -m bird_jax.serve"


def main(argv: list[str] | None = None) -> None:
  from bird_jax.assistant import DEFAULT_MAX_NEW_TOKENS, DEFAULT_MAX_PIXELS
  from bird_jax.serve.app import DEFAULT_REQUEST_TIMEOUT_S

  ap = ToolParser(prog=PROG, description=__doc__,
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
  ap.add_argument("--request-timeout-s", type=float, default=DEFAULT_REQUEST_TIMEOUT_S,
                  help="the longest a request waits for its answer before a 504, and the "
                  "longest a batch may generate before /health answers 503 (default "
                  f"{DEFAULT_REQUEST_TIMEOUT_S:g})")
  ap.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                  help=f"the longest answer (default {DEFAULT_MAX_NEW_TOKENS})")
  ap.add_argument("--max-images", type=int, default=1, help="images per conversation")
  ap.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_PIXELS)
  ap.add_argument("--max-body-mb", type=float, default=20.0, help="request body size limit")
  ap.add_argument("--dtype", default="", help="compute dtype, e.g. bfloat16 (default: the model's)")
  args = ap.parse_args(argv)
  for flag, value in (("--batch-size", args.batch_size), ("--max-new-tokens", args.max_new_tokens),
                      ("--max-images", args.max_images), ("--max-queue", args.max_queue)):
    if value < 1:
      raise BadInput(f"{flag} {value}: must be >= 1")
  if not args.request_timeout_s > 0:
    raise BadInput(f"--request-timeout-s {args.request_timeout_s:g}: must be > 0")
  from bird_jax.assistant import Assistant, Message, resolve_checkpoint

  ckpt = resolve_checkpoint(args.ckpt)  # NoModel: exit 2
  print(f"loading {ckpt} ...", flush=True)
  with refusing(OSError, ValueError, where=f"cannot load {ckpt}"):  # NaN/inf weights: exit 4
    bot = Assistant.load(ckpt, dtype=args.dtype or None, name=args.name or None,
                         batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                         max_images=args.max_images, max_image_pixels=args.max_image_pixels)

  warm = time.perf_counter()
  blank = np.zeros((bot.cfg.vision.image_size,) * 2 + (3,), np.uint8)
  bot.answer([bot.prompt([Message("user", "Where is it?", (blank,))])])
  print(f"compiled for a one-image question in {time.perf_counter() - warm:.1f} s (other prompt "
        "lengths compile on first use)", flush=True)
  from bird_jax.serve.app import API_KEY_ENV, create_app
  from bird_jax.serve.batcher import Batcher

  api_key = os.environ.get(API_KEY_ENV) or None
  batcher = Batcher(bot, max_wait_s=args.max_wait_ms / 1000, max_queue=args.max_queue,
                    max_batch_s=args.request_timeout_s)
  app = create_app(bot, batcher, api_key=api_key, max_body_bytes=int(args.max_body_mb * 2**20),
                   request_timeout_s=args.request_timeout_s)
  if args.host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
    print(f"warning: listening on {args.host} without an API key (set {API_KEY_ENV})", flush=True)
  print(f"model {bot.name!r}: http://{args.host}:{args.port}/ (page), "
        f"http://{args.host}:{args.port}/v1 (OpenAI API); API key "
        f"{'required' if api_key else 'not required'}", flush=True)
  serve(app, batcher, host=args.host, port=args.port)


SHUTDOWN_GRACE_S = 5.0  # after a signal, how long responses still open may take to finish


def serve(app, batcher, *, host: str, port: int) -> None:
  """Runs uvicorn until SIGINT or SIGTERM. The signal closes the batcher at once (from a thread:
  a signal handler must not wait for its lock), so queued and in-flight requests answer 503 and
  uvicorn's wait for open requests ends; what is still open after SHUTDOWN_GRACE_S is cancelled.
  uvicorn then re-raises the signal (the process ends as signalled)."""
  import uvicorn

  class Server(uvicorn.Server):
    def handle_exit(self, sig, frame) -> None:
      super().handle_exit(sig, frame)
      threading.Thread(target=batcher.close, name="bird_jax-shutdown", daemon=True).start()

  config = uvicorn.Config(app, host=host, port=port, log_level="info",
                          timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
  try:
    Server(config).run()
  finally:
    batcher.close()


if __name__ == "__main__":
  run_tool(PROG, main)
