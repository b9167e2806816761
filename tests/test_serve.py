"""The server (`python -m bird_jax.serve`) on loopback: the OpenAI client against it, bad input
-> 4xx with a clear message while it keeps serving, concurrent clients batched without
recompiling, failures (a generation error, a stopped worker, a request over the time limit, a
hung generation, equal prompts in the queue) answered instead of hanging, and the command
itself, SIGTERM and refused flags included."""

from __future__ import annotations

import base64
import concurrent.futures
import http.client
import json
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import types
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
from bird_jax.assistant import Answer, Assistant, Message, Prompt
from bird_jax.serve.app import create_app
from bird_jax.serve.batcher import Batcher, Sampling, Unavailable
from bird_jax.tokenizer import load_tokenizer
from bird_jax_testing.images import png_header
from bird_jax_testing.tools import exit_code

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


def post(url: str, body: bytes | None, key: str | None = KEY, timeout: float = 120,
         path: str = "/v1/chat/completions") -> tuple[int, dict]:
  """(status, JSON reply) of a POST of `body` (a GET when None)."""
  headers = {"Content-Type": "application/json"}
  if key:
    headers["Authorization"] = f"Bearer {key}"
  req = urllib.request.Request(f"{url}{path}", data=body, headers=headers)
  try:
    with urllib.request.urlopen(req, timeout=timeout) as r:
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
      "a decompression bomb": (request(image_message("?", png_header(20000, 20000))), KEY, 400,
                               "header declares 400,000,000 pixels, more than the limit 16,384"),
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
  _, reply = post(server.url, request(image_message("?", png_header(20000, 20000))))
  assert reply["error"]["code"] == "image_too_large"
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


def test_any_seed_and_the_smallest_top_p_are_answered(server):
  first = image_message("Where is the lung?")  # the programs of the first test, if it ran
  history = [first, {"role": "assistant", "content": ANSWER},
             {"role": "user", "content": "And what is at (500,500),(900,900)?"}]
  for messages, kw in (([first], {"seed": -3}),
                       (history, {"temperature": 1.0, "top_p": 1e-300, "seed": 7}),
                       (history, {"temperature": 0.7, "top_p": 0.9, "seed": 2**64 + 5}),
                       (history, {"temperature": 0.7, "top_p": 0.9, "seed": 2**63})):
    status, reply = post(server.url, request(*messages, **kw))
    assert status == 200 and reply["choices"][0]["message"]["content"] == ANSWER, (kw, reply)


# ---- failures: answered, never a hang (a stand-in assistant: no model, answers on cue) ------

class StandIn:
  """Answers a batch without a model: each answer names its prompt's length and the batch's
  temperature. `gate` holds every call until set; `raises` are raised by the next calls."""

  def __init__(self, batch_size: int = 4):
    self.gen = types.SimpleNamespace(batch_size=batch_size)
    self.calls: list[tuple[float, int]] = []  # (temperature, prompts) of each call
    self.started, self.gate = threading.Event(), threading.Event()
    self.gate.set()
    self.raises: list[BaseException] = []

  def answer(self, prompts, *, temperature, top_p, seed):
    self.calls.append((temperature, len(prompts)))
    self.started.set()
    assert self.gate.wait(60)
    if self.raises:
      raise self.raises.pop(0)
    return [Answer(f"{len(p.ids)} tokens at temperature {temperature}", "stop", len(p.ids), 1)
            for p in prompts]


@contextlib.contextmanager
def stand_in_server(bot, stand_in, max_batch_s: float | None = None, **kw):
  """The app over `bot` (prompts) and a batcher over `stand_in` (answers): (url, batcher)."""
  batcher = Batcher(stand_in, max_wait_s=0.05, max_batch_s=max_batch_s)
  try:
    with running_server(create_app(bot, batcher, api_key=KEY, **kw)) as url:
      yield url, batcher
  finally:
    stand_in.gate.set()
    batcher.close()


def wait_until(condition, timeout_s: float = 30) -> None:
  deadline = time.monotonic() + timeout_s
  while not condition():
    assert time.monotonic() < deadline, "timed out"
    time.sleep(0.01)


def answer_of(reply: tuple[int, dict]) -> tuple[int, str]:
  status, body = reply
  return status, (body["choices"][0]["message"]["content"] if status == 200
                  else body["error"]["code"])


def prompt_tokens(bot, question: str) -> int:
  """The length of a one-image question's prompt."""
  s = bot.cfg.vision.image_size
  return len(bot.prompt([Message("user", question, (np.zeros((s, s, 3), np.uint8),))]).ids)


def test_equal_prompts_in_the_queue_are_told_apart(server):
  """A (greedy, image X, Q1), B (sampled, image Y, Q2), C (greedy, image Y, Q2) wait together:
  A and C make one batch, B the next; taking C out of the queue compares nothing of B's."""
  stand_in = StandIn()
  stand_in.gate.clear()
  x, y = png_bytes(seed=1), png_bytes(seed=2)
  hold = request(image_message("Where is it?", x))
  a, b, c = (request(image_message("Where is it?", x)),
             request(image_message("Where is the lung?", y), temperature=0.7),
             request(image_message("Where is the lung?", y)))
  with stand_in_server(server.bot, stand_in) as (url, batcher), \
       concurrent.futures.ThreadPoolExecutor(4) as pool:
    held = pool.submit(post, url, hold, timeout=30)
    assert stand_in.started.wait(30)
    queued = []
    for k, body in enumerate((a, b, c)):  # queued in this order
      queued.append(pool.submit(post, url, body, timeout=30))
      wait_until(lambda: batcher.waiting == k + 1)
    stand_in.gate.set()
    replies = [answer_of(f.result()) for f in (held, *queued)]
    assert batcher.healthy and post(url, None, path="/v1/models")[0] == 200
  q1, q2 = (prompt_tokens(server.bot, q) for q in ("Where is it?", "Where is the lung?"))
  assert replies == [(200, f"{q1} tokens at temperature 0.0"),
                     (200, f"{q1} tokens at temperature 0.0"),
                     (200, f"{q2} tokens at temperature 0.7"),
                     (200, f"{q2} tokens at temperature 0.0")]
  assert stand_in.calls == [(0.0, 1), (0.0, 2), (0.7, 1)]


def test_a_failed_generation_answers_500_and_the_next_request_is_served(server):
  stand_in = StandIn()
  stand_in.raises.append(RuntimeError("the device went away"))
  body = request(image_message("Where is it?"))
  with stand_in_server(server.bot, stand_in) as (url, batcher):
    status, reply = post(url, body, timeout=30)
    assert (status, reply["error"]["code"], reply["error"]["type"]) == (
        500, "generation_failed", "server_error")
    assert "RuntimeError: the device went away" in reply["error"]["message"]
    assert answer_of(post(url, body, timeout=30))[0] == 200
    assert batcher.healthy and post(url, None, path="/v1/models")[0] == 200


def test_a_stopped_worker_answers_503_to_every_request_and_to_health_checks(server):
  stand_in = StandIn()
  stand_in.gate.clear()
  stand_in.raises.append(SystemExit(3))  # not an Exception: the worker cannot go on
  greedy, sampled = (request(image_message("Where is it?")),
                     request(image_message("Where is it?"), temperature=0.5))
  with stand_in_server(server.bot, stand_in) as (url, batcher), \
       concurrent.futures.ThreadPoolExecutor(2) as pool:
    assert post(url, None, path="/health") == (200, {"status": "ok"})
    held = pool.submit(post, url, greedy, timeout=30)
    assert stand_in.started.wait(30)
    queued = pool.submit(post, url, sampled, timeout=30)
    wait_until(lambda: batcher.waiting == 1)
    stand_in.gate.set()
    for reply in (held.result(), queued.result(), post(url, greedy, timeout=30),
                  post(url, None, path="/v1/models"), post(url, None, key=None, path="/health")):
      status, body = reply
      assert (status, body["error"]["code"]) == (503, "unavailable"), reply
      assert "the generation worker stopped (SystemExit: 3)" in body["error"]["message"]
    assert not batcher.healthy and stand_in.calls == [(0.0, 1)]


def test_a_request_over_the_time_limit_answers_504_and_is_withdrawn(server):
  stand_in = StandIn()
  stand_in.gate.clear()
  body = request(image_message("Where is it?"))
  with stand_in_server(server.bot, stand_in, request_timeout_s=0.5) as (url, batcher), \
       concurrent.futures.ThreadPoolExecutor(2) as pool:
    t0 = time.monotonic()
    held = pool.submit(post, url, body, timeout=30)  # being answered when its time is up
    assert stand_in.started.wait(30)
    queued = pool.submit(post, url, body, timeout=30)  # still queued when its time is up
    for status, reply in (held.result(), queued.result()):
      assert (status, reply["error"]["code"]) == (504, "timeout"), reply
      assert "time limit of 0.5 s (--request-timeout-s)" in reply["error"]["message"]
    assert time.monotonic() - t0 < 10 and batcher.waiting == 0
    stand_in.gate.set()  # the held answer comes now, for nobody
    assert answer_of(post(url, body, timeout=30))[0] == 200
  assert stand_in.calls == [(0.0, 1), (0.0, 1)]  # the withdrawn request was never generated


def test_a_hung_generation_turns_health_checks_503_with_the_reason(server):
  """A generation call that does not return: past max_batch_s, /health and /v1/models answer 503
  saying for how long the batch has been generating; requests still queue, and once the call
  returns every request is answered and the health check is 200 again."""
  stand_in = StandIn()
  stand_in.gate.clear()  # the generation call blocks until the gate opens
  body = request(image_message("Where is it?"))
  with stand_in_server(server.bot, stand_in, max_batch_s=0.3) as (url, batcher), \
       concurrent.futures.ThreadPoolExecutor(2) as pool:
    assert post(url, None, key=None, path="/health") == (200, {"status": "ok"})
    held = pool.submit(post, url, body, timeout=30)
    assert stand_in.started.wait(30)
    wait_until(lambda: not batcher.healthy)
    assert batcher.batch_age_s > 0.3
    for path in ("/health", "/v1/models"):
      status, reply = post(url, None, path=path)
      assert (status, reply["error"]["code"]) == (503, "unavailable"), (path, reply)
      assert re.search(r"a batch has been generating for \d+ s, longer than the limit of 0.3 s",
                       reply["error"]["message"]), reply
    queued = pool.submit(post, url, body, timeout=30)  # still accepted: the batch may yet end
    wait_until(lambda: batcher.waiting == 1)
    stand_in.gate.set()
    assert [answer_of(f.result())[0] for f in (held, queued)] == [200, 200]
    assert batcher.healthy and batcher.batch_age_s is None
    assert post(url, None, key=None, path="/health") == (200, {"status": "ok"})


def test_without_a_batch_limit_a_long_generation_stays_healthy():
  stand_in = StandIn()
  stand_in.gate.clear()
  batcher = Batcher(stand_in, max_wait_s=0.01)  # max_batch_s None: no limit
  try:
    future = batcher.submit(Prompt([1, 2, 3], np.zeros((1, 4, 4, 3), np.uint8), 4))
    assert stand_in.started.wait(30)
    time.sleep(0.2)
    assert batcher.batch_age_s >= 0.2 and batcher.healthy and batcher.status == "ok"
    stand_in.gate.set()
    assert future.result(timeout=30).text == "3 tokens at temperature 0.0"
  finally:
    stand_in.gate.set()
    batcher.close()


def test_close_fails_queued_and_in_flight_requests_at_once():
  stand_in = StandIn()
  stand_in.gate.clear()  # the batch in flight never ends by itself
  batcher = Batcher(stand_in, max_wait_s=0.01)
  prompt = Prompt([1, 2, 3], np.zeros((1, 4, 4, 3), np.uint8), 4)
  held = batcher.submit(prompt)
  assert stand_in.started.wait(30)
  queued = batcher.submit(prompt, Sampling(temperature=0.5))
  t0 = time.monotonic()
  batcher.close(timeout_s=0.2)
  assert time.monotonic() - t0 < 2
  for future in (held, queued):
    assert isinstance(future.exception(timeout=1), Unavailable)
  with pytest.raises(Unavailable, match="shutting down"):
    batcher.submit(prompt)
  assert not batcher.healthy
  stand_in.gate.set()


@pytest.mark.parametrize("prog, args, message", [
    ("serve", ["--max-queue", "0"], "--max-queue 0: must be >= 1"),
    ("serve", ["--batch-size", "-2"], "--batch-size -2: must be >= 1"),
    ("serve", ["--max-new-tokens", "0"], "--max-new-tokens 0: must be >= 1"),
    ("serve", ["--max-images", "0"], "--max-images 0: must be >= 1"),
    ("serve", ["--request-timeout-s", "0"], "--request-timeout-s 0: must be > 0"),
    ("chat", ["--image", "x.png", "--max-new-tokens", "0"], "--max-new-tokens 0: must be >= 1"),
    ("chat", ["--image", "x.png", "--top-p", "1.5"], "--top-p 1.5: must be in (0, 1]"),
    ("chat", ["--image", "x.png", "--temperature", "-1"], "--temperature -1: must be >= 0"),
])
def test_the_commands_name_the_one_flag_they_refuse(prog, args, message, capsys):
  from bird_jax.chat.__main__ import main as chat_main
  from bird_jax.serve.__main__ import main as serve_main

  main = {"serve": serve_main, "chat": chat_main}[prog]
  assert exit_code(main, args, prog) == exit_codes.BAD_INPUT
  err = capsys.readouterr().err
  assert f"{prog}: error: {message}\n" in err, err


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


@pytest.mark.e2e
def test_sigterm_stops_the_command_within_seconds(tmp_path, tiny_cfg):
  """Equal prompts in the queue are answered by the command too; then SIGTERM while a sampled
  request is being answered (its program compiling): the process ends within seconds and that
  request gets its 503 (or its answer, had it come first)."""
  tok = load_tokenizer(tiny_cfg)
  write_hf_folder(tmp_path / "hf", tiny_cfg, scripted_weights(tiny_cfg, tok))
  env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
         "JAX_PLATFORMS": "cpu", "BIRD_JAX_API_KEY": KEY}
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  proc = subprocess.Popen([sys.executable, "-m", "bird_jax.serve", "--ckpt", str(tmp_path / "hf"),
                           "--port", str(port), "--max-new-tokens", "32", "--max-wait-ms", "500"],
                          cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  url, stopped = f"http://127.0.0.1:{port}", None
  x, y = png_bytes(seed=1), png_bytes(seed=2)
  bodies = [json.dumps({"model": "hf", "messages": [image_message(q, image)], **kw}).encode()
            for q, image, kw in (("Where is it?", x, {}),
                                 ("Where is the lung?", y, {"temperature": 0.7}),
                                 ("Where is the lung?", y, {}))]
  try:
    deadline = time.monotonic() + 240
    while True:
      try:
        if post(url, None, path="/v1/models", timeout=5)[0] == 200:
          break
      except (urllib.error.URLError, ConnectionError):
        pass
      assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
      time.sleep(0.5)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
      replies = []
      for body in bodies:  # queued in this order, within the first one's 500 ms wait
        replies.append(pool.submit(post, url, body, timeout=90))
        time.sleep(0.1)
      assert [answer_of(replies[k].result()) for k in (0, 2)] == [(200, ANSWER)] * 2
      t0 = time.monotonic()
      proc.send_signal(signal.SIGTERM)
      proc.wait(timeout=60)
      stopped = time.monotonic() - t0
      assert answer_of(replies[1].result())[0] in (200, 503)
  finally:
    if proc.poll() is None:
      proc.kill()
    out = proc.communicate(timeout=30)[0]
  assert stopped is not None and stopped < 10, out
  assert proc.returncode == -signal.SIGTERM, out  # uvicorn ends the process as signalled
