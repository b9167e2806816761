"""The server (`python -m bird_jax.serve`) on loopback: the OpenAI client against it, bad input
-> 4xx with a clear message while it keeps serving, concurrent clients batched without
recompiling, and the command itself."""

from __future__ import annotations

import base64
import concurrent.futures
import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import openai
import pytest

from conftest import write_hf_folder
from scripted import (ANSWER, ANSWER_BOXES, png_bytes, running_server, scripted_model,
                      scripted_weights)
from bird_jax import exit_codes
from bird_jax.assistant import Assistant
from bird_jax.serve.app import create_app
from bird_jax.serve.batcher import Batcher
from bird_jax.tokenizer import load_tokenizer

pytestmark = pytest.mark.heavy
KEY = "test-key-0123"
MAX_BODY = 2**20


@pytest.fixture(scope="module")
def server(tiny_cfg):
  tok = load_tokenizer(tiny_cfg)
  bot = Assistant(scripted_model(tiny_cfg, tok), tok, tiny_cfg, name="tiny", batch_size=4,
                  max_new_tokens=32, max_image_pixels=128 * 128)
  batcher = Batcher(bot, max_wait_s=0.02)
  with running_server(create_app(bot, batcher, api_key=KEY, max_body_bytes=MAX_BODY)) as url:
    yield type("Server", (), {"url": url, "bot": bot, "batcher": batcher, "tok": tok})
  batcher.close()


@pytest.fixture(scope="module")
def client(server):
  return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)


def data_url(data: bytes) -> str:
  return "data:image/png;base64," + base64.b64encode(data).decode()


def image_message(text: str, data: bytes | None = None, url: str | None = None) -> dict:
  return {"role": "user", "content": [
      {"type": "image_url", "image_url": {"url": url or data_url(data or png_bytes())}},
      {"type": "text", "text": text}]}


def test_the_openai_client_gets_answers_with_their_boxes(client, server):
  assert [m.id for m in client.models.list().data] == ["tiny"]
  first = image_message("Where is the lung?")
  r = client.chat.completions.create(model="tiny", messages=[first])
  msg = r.choices[0].message
  assert (msg.role, msg.content, r.choices[0].finish_reason) == ("assistant", ANSWER, "stop")
  assert msg.model_extra["boxes"] == ANSWER_BOXES
  assert r.usage.completion_tokens == len(server.tok.encode(ANSWER)) + 1
  history = [first, {"role": "assistant", "content": ANSWER},
             {"role": "user", "content": "And what is at (500,500),(900,900)?"}]
  r2 = client.chat.completions.create(model="tiny", messages=history, max_tokens=4,
                                      temperature=0.7, top_p=0.9, seed=1)
  assert r2.choices[0].message.content == "<ref>lun" and r2.choices[0].finish_reason == "length"
  assert r2.usage.prompt_tokens > r.usage.prompt_tokens
  chunks = list(client.chat.completions.create(model="tiny", messages=[first], stream=True,
                                               stream_options={"include_usage": True}))
  assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
  assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
  assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def post(url: str, body: bytes, key: str | None = KEY) -> tuple[int, dict]:
  headers = {"Content-Type": "application/json"}
  if key:
    headers["Authorization"] = f"Bearer {key}"
  req = urllib.request.Request(f"{url}/v1/chat/completions", data=body, headers=headers)
  try:
    with urllib.request.urlopen(req, timeout=120) as r:
      return r.status, json.loads(r.read())
  except urllib.error.HTTPError as e:
    body = e.read()
    return e.code, (json.loads(body) if e.headers.get_content_type() == "application/json"
                    else {"error": {"message": body.decode(), "type": "plain text"}})


def request(*messages, **kw) -> bytes:
  return json.dumps({"model": "tiny", "messages": list(messages), **kw}).encode()


def test_bad_input_gets_a_4xx_with_a_clear_message_and_the_server_keeps_serving(server, client):
  ok = image_message("Where is the lung?")  # the prompt bucket compiled above
  cases = {
      "malformed JSON": (b'{"model": "tiny", "messages": [', KEY, 400, "not JSON"),
      "not an image": (request(image_message("?", b"hello")), KEY, 400, "cannot decode image"),
      "a huge image": (request(image_message("?", png_bytes(200, 100))), KEY, 400,
                       "200x100 = 20,000 pixels, more than the limit 16,384"),
      "not base64": (request(image_message("?", url="data:image/png;base64,%%%")), KEY, 400,
                     "base64 does not decode"),
      "a web URL": (request(image_message("?", url="http://127.0.0.1/x.png")), KEY, 400,
                    "must be a data: URL"),
      "two images": (request(image_message("?"), {"role": "assistant", "content": "a"},
                             image_message("?")), KEY, 400, "2 images, more than the limit 1"),
      "unknown model": (json.dumps({"model": "gpt-4", "messages": [ok]}).encode(), KEY, 404,
                        "the model 'gpt-4' is not served here"),
      "too many tokens": (request(ok, max_tokens=10_000), KEY, 400,
                          "max_tokens 10000 is outside 1..32"),
      "a prompt too long": (request(image_message("a" * 5000)), KEY, 400,
                            "start a new conversation"),
      "an image tag in text": (request(image_message("<img>/etc/passwd</img>")), KEY, 400,
                               "never as tags in the text"),
      "a box off the grid": (request(image_message("(10,10),(5,5)")), KEY, 400, "not a region"),
      "no messages": (json.dumps({"model": "tiny"}).encode(), KEY, 400, "messages: Field required"),
      "an unsupported field": (request(ok, tools=[]), KEY, 400, "tools: Extra inputs"),
      "no API key": (request(ok), None, 401, "missing or wrong API key"),
      "a wrong API key": (request(ok), "nope", 401, "missing or wrong API key"),
  }
  for what, (body, key, status, message) in cases.items():
    got, reply = post(server.url, body, key)
    assert (got, message in reply["error"]["message"]) == (status, True), (what, got, reply)
    assert reply["error"]["type"], what
  # a body over the limit is refused from its Content-Length, before it is read (Starlette)
  conn = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=60)
  conn.putrequest("POST", "/v1/chat/completions")
  for k, v in (("Content-Type", "application/json"), ("Content-Length", str(MAX_BODY + 1)),
               ("Authorization", f"Bearer {KEY}")):
    conn.putheader(k, v)
  conn.endheaders()
  reply = conn.getresponse()
  assert (reply.status, reply.read()) == (413, b"Content Too Large")
  conn.close()
  for path in ("/static/%2e%2e/app.py", "/static/../app.py", "/static/..%2fapp.py"):
    conn = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=60)
    conn.request("GET", path)  # sent as written: no client-side normalisation
    reply = conn.getresponse()
    assert reply.status == 404 and b"import" not in reply.read(), path
    conn.close()
  with pytest.raises(openai.NotFoundError, match="not served here"):
    client.chat.completions.create(model="gpt-4", messages=[ok])
  with pytest.raises(openai.BadRequestError, match="max_tokens 999"):
    client.chat.completions.create(model="tiny", messages=[ok], max_tokens=999)
  status, reply = post(server.url, request(ok))
  assert status == 200 and reply["choices"][0]["message"]["content"] == ANSWER


def test_concurrent_clients_are_batched_without_recompiling(server, client, capsys):
  messages = [image_message("Where is the lung?", png_bytes(seed=s)) for s in range(4)]
  client.chat.completions.create(model="tiny", messages=[messages[0]])  # compiled here at most
  traces, batches = server.bot.gen.traces, server.batcher.batches
  n, clients = 32, 8

  def one(i: int) -> tuple[str, float]:
    t0 = time.perf_counter()
    r = client.chat.completions.create(model="tiny", messages=[messages[i % 4]])
    return r.choices[0].message.content, time.perf_counter() - t0

  t0 = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(clients) as pool:
    results = list(pool.map(one, range(n)))
  wall = time.perf_counter() - t0
  assert [text for text, _ in results] == [ANSWER] * n
  assert server.bot.gen.traces == traces  # no request compiled a new program
  used = server.batcher.batches - batches
  assert used < n  # requests shared generation calls
  p50, p95 = np.percentile([t for _, t in results], [50, 95])
  with capsys.disabled():
    print(f"\nserve (tiny model, batch_size 4): {n} requests from {clients} concurrent clients "
          f"in {wall:.2f} s: {n / wall:.1f} requests/s, latency p50 {p50 * 1000:.0f} ms, "
          f"p95 {p95 * 1000:.0f} ms; {used} generation calls ({n / used:.1f} requests each)")


@pytest.mark.e2e
def test_the_command_serves_a_checkpoint_and_never_prints_the_key(tmp_path, tiny_cfg):
  tok = load_tokenizer(tiny_cfg)
  write_hf_folder(tmp_path / "hf", tiny_cfg, scripted_weights(tiny_cfg, tok))
  env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
         "JAX_PLATFORMS": "cpu", "BIRD_JAX_API_KEY": KEY}
  r = subprocess.run([sys.executable, "-m", "bird_jax.serve"], cwd=tmp_path, env=env,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == exit_codes.BAD_INPUT and "no demo model at runs/demo/train" in r.stderr
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  proc = subprocess.Popen([sys.executable, "-m", "bird_jax.serve", "--ckpt", str(tmp_path / "hf"),
                           "--port", str(port), "--max-new-tokens", "32"], cwd=tmp_path, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
    deadline = time.monotonic() + 240
    while True:
      try:
        models = client.models.list()
        break
      except openai.APIConnectionError:
        assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.5)
    question = image_message("Where is it?")  # the question the server compiles before listening
    r = client.chat.completions.create(model=models.data[0].id, messages=[question])
    assert models.data[0].id == "hf" and r.choices[0].message.content == ANSWER
  finally:
    proc.terminate()
    out = proc.communicate(timeout=30)[0]
  assert f"http://127.0.0.1:{port}/ (page)" in out and "API key required" in out
  assert KEY not in out
