"""A tiny Qwen-VL that gives one grounded answer whatever it is asked, and a server over it on
loopback: the fixtures of the chat and server tests.

The model's blocks add nothing (every attention and MLP output projection is zero), so the
hidden state at a position is its token's embedding and the next token depends on the current
token only. The embeddings and the LM head chain the prompt's last token ("\\n" of
``<|im_start|>assistant\\n``) to the tokens of ANSWER, then ``<|im_end|>``; no token repeats in
the chain, so greedy (and, the logits being this peaked, sampled) decoding spells ANSWER through
the real Generator, whatever the question and image.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time

import numpy as np
from PIL import Image

from conftest import build_from_hf
from bird_jax_testing.reference import random_hf_weights

ANSWER = "<ref>lung</ref><box>[14,25;690 873]</box>"
ANSWER_BOXES = [{"ref": "lung", "box": [14, 25, 690, 873]}]  # as bird_jax.boxes reads ANSWER


def scripted_weights(cfg, tok, answer: str = ANSWER, seed: int = 0) -> dict[str, np.ndarray]:
  w = dict(random_hf_weights(cfg, seed))
  for name in w:
    if name.startswith("transformer.h.") and name.endswith(("attn.c_proj.weight",
                                                            "mlp.c_proj.weight")):
      w[name] = np.zeros_like(w[name])
  chain = [*tok.encode("\n"), *tok.encode(answer), tok.im_end_id]
  assert len(set(chain[:-1])) == len(chain) - 1, "a token repeats: the chain would be ambiguous"
  wte, head = w["transformer.wte.weight"].copy(), w["lm_head.weight"].copy()
  for i, (tok_id, nxt) in enumerate(zip(chain, chain[1:])):
    wte[tok_id] = 0.0
    wte[tok_id, i] = 1.0
    head[nxt, i] = 100.0
  w["transformer.wte.weight"], w["lm_head.weight"] = wte, head
  return w


def scripted_model(cfg, tok):
  return build_from_hf(cfg, scripted_weights(cfg, tok))


def png_bytes(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
  rng = np.random.default_rng(seed)
  im = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
  buf = io.BytesIO()
  im.save(buf, format="PNG")
  return buf.getvalue()


@contextlib.contextmanager
def running_server(app):
  """Serves the ASGI `app` with uvicorn on 127.0.0.1 (a free port) in a thread; yields the
  base URL and stops the server on exit."""
  import uvicorn

  sock = socket.socket()
  sock.bind(("127.0.0.1", 0))
  server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
  thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
  thread.start()
  deadline = time.monotonic() + 30
  while not server.started:
    if time.monotonic() > deadline or not thread.is_alive():
      raise RuntimeError("the test server did not start")
    time.sleep(0.02)
  try:
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
  finally:
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()
