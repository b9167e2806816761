"""The openai backend against a real HTTP server on 127.0.0.1 speaking the chat-completions
API: normal answers, 429 + Retry-After, 500, timeouts, malformed JSON, hallucinated boxes
and labels (rejected, retried, then template fallback), the response cache, token/cost
accounting, and a run killed midway (SIGKILL) then resumed: exactly the records of an
uninterrupted run, without paying twice."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from bird_jax.boxes import parse_boxes, quantize_box
from bird_jax.data.shards import read_shards
from datagen.config import BackendConfig, GenConfig
from datagen.llm.base import FatalAPIError
from datagen.llm.openai_backend import OpenAIBackend, retry_after
from datagen.meta import ImageMeta, MetaObject
from datagen.run import TooManyFallbacks, generate
from datagen.summary import format_summary
from datagen.tasks import TaskCounts, TurnSpec

KEY = "sk-test-7f3a9c-do-not-log"
REPO = Path(__file__).resolve().parent.parent


class FakeLLM:
  """A chat-completions server whose answers are computed from the prompt.

  ``fault(request, first_time) -> None | "429" | "500" | "timeout" | "html" | "html_page" |
  "no_message" | "malformed" | "hallucinate"``: transport faults are meant for the first time a request is seen;
  content faults may depend on the request only, so reruns see the same answers.
  ``pause_after``: once that many answers were paid, further requests hang until released.
  """

  def __init__(self, fault=None, pause_after: int | None = None, sleep_s: float = 1.5):
    self.fault = fault or (lambda req, first: None)
    self.pause_after, self.sleep_s = pause_after, sleep_s
    self.lock = threading.Lock()
    self.seen: Counter = Counter()
    self.log: list[tuple[str, float, str, dict]] = []  # (request hash, time, outcome, request)
    self.events: Counter = Counter()
    self.paid = 0
    self.release = threading.Event()
    outer = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def log_message(self, *args):
        pass

      def do_POST(self):
        outer.handle(self)

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.httpd.daemon_threads = True
    self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
    self.thread.start()
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

  def close(self):
    self.release.set()
    self.httpd.shutdown()
    self.httpd.server_close()

  def _send(self, h, status: int, body: dict | str, headers: dict | None = None,
            content_type: str = "application/json"):
    data = (body if isinstance(body, str) else json.dumps(body)).encode()
    try:
      h.send_response(status)
      h.send_header("Content-Type", content_type)
      h.send_header("Content-Length", str(len(data)))
      for k, v in (headers or {}).items():
        h.send_header(k, v)
      h.end_headers()
      h.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError):
      pass

  def handle(self, h):
    req = json.loads(h.rfile.read(int(h.headers["Content-Length"])))
    if h.path != "/v1/chat/completions" or h.headers.get("Authorization") != f"Bearer {KEY}":
      return self._send(h, 401, {"error": {"message": "bad key or path"}})
    key = hashlib.sha256(json.dumps(req, sort_keys=True).encode()).hexdigest()
    with self.lock:
      self.seen[key] += 1
      first = self.seen[key] == 1
      now = time.monotonic()
      pause = self.pause_after is not None and self.paid >= self.pause_after
    if pause:
      self.events["paused"] += 1
      self.release.wait(60)
      return self._send(h, 503, {"error": {"message": "shutting down"}})
    kind = self.fault(req, first)
    with self.lock:
      self.events[kind or "ok"] += 1
      self.log.append((key, now, kind or "ok", req))
    if kind == "429":
      return self._send(h, 429, {"error": {"message": "slow down"}}, {"Retry-After": "1"})
    if kind == "500":
      return self._send(h, 500, {"error": {"message": "boom"}})
    if kind == "timeout":
      time.sleep(self.sleep_s)
      return self._send(h, 500, {"error": {"message": "too late"}})
    if kind == "html":  # a proxy's page with status 200: not a chat completion
      return self._send(h, 200, "<html><body>502 Bad Gateway</body></html>")
    if kind == "html_page":  # the same, said to be HTML: the client returns it as a string
      return self._send(h, 200, "<html><body>502 Bad Gateway</body></html>",
                        content_type="text/html; charset=utf-8")
    if kind == "no_message":  # JSON, but its choice has no message
      return self._send(h, 200, {"id": "chatcmpl-1", "object": "chat.completion", "created": 0,
                                 "model": req["model"],
                                 "choices": [{"index": 0, "finish_reason": "stop"}]})
    content = answer(req, kind)
    with self.lock:
      self.paid += 1
    prompt = sum(len(m["content"]) for m in req["messages"]) // 4
    self._send(h, 200, {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": req["model"],
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": len(content) // 4,
                  "total_tokens": prompt + len(content) // 4}})


def answer(req: dict, kind: str | None) -> str:
  """A well-formed answer derived from the prompt (or the requested kind of bad one)."""
  if kind == "malformed":
    return '{"items": [ {"n": 1, "question": "unterminated'
  user = req["messages"][1]["content"]
  labels = re.findall(r"^Object \d+: (.+?) at \[", user, re.MULTILINE)
  if "Requests (one JSON object per line):" not in user:
    return json.dumps({"caption": "A scan showing " + ", ".join(dict.fromkeys(labels)) + "."})
  block = user.split("Requests (one JSON object per line):\n", 1)[1].split("\n\n", 1)[0]
  items = []
  for line in block.splitlines():
    r = json.loads(line)
    n, task = r["n"], r["task"]
    if task == "vg":
      boxes = r["boxes"]
      if kind == "hallucinate":
        boxes = ["<box>(1,2),(3,4)</box>"]
      items.append({"n": n, "question": f"Where is the {r['structure']}?",
                    "answer": f"The <ref>{r['structure']}</ref> is at {' and '.join(boxes)}."})
    elif task == "roc":
      name = "unicorn" if kind == "hallucinate" else r["structure"]
      items.append({"n": n, "question": f"What is at {r['box']}?",
                    "answer": name.capitalize() + "."})
    elif task == "rc":
      items.append({"n": n, "question": f"Describe {r['box']}.",
                    "answer": f"This is the {r['structure']}, as the meta says."})
    else:
      items.append({"n": n, "question": "Interpret this image.", "answer": "A short report."})
  return json.dumps({"items": items})


def is_conversation(req) -> bool:
  return "Requests (one JSON object per line):" in req["messages"][1]["content"]


def first_attempt(req) -> bool:
  return len(req["messages"]) == 2


def h(req) -> int:
  return int(hashlib.sha256(json.dumps(req["messages"]).encode()).hexdigest(), 16)


def mixed_faults(req, first):
  """Content-stable faults on first attempts plus transport faults the first time seen."""
  if first_attempt(req) and is_conversation(req):
    if h(req) % 5 == 0:
      return "malformed"
    if h(req) % 5 == 1:
      return "hallucinate"
  if first and h(req) % 7 == 2:
    return "500"
  return None


@pytest.fixture
def server():
  servers = []

  def make(**kw):
    s = FakeLLM(**kw)
    servers.append(s)
    return s

  yield make
  for s in servers:
    s.close()


def llm_cfg(url: str, **kw) -> BackendConfig:
  base = dict(base_url=url, model="fake-model", concurrency=4, timeout=0.5, max_retries=4,
              backoff=0.01, max_backoff=2.0, price_in=1.0, price_out=2.0)
  return BackendConfig(**{**base, **kw})


def meta_fixture() -> ImageMeta:
  objs = (MetaObject("liver", (0.1, 0.2, 0.4, 0.5), 0.05),
          MetaObject("kidney", (0.6, 0.6, 0.7, 0.8), 0.01),
          MetaObject("kidney", (0.2, 0.6, 0.3, 0.8), 0.01))
  return ImageMeta("ct_00--Fake--case1--z_0001", "ct", "Fake", "case1", 1, 64, 64, "abdomen",
                   "axial", objs, ("liver", "kidney"), ("liver", "kidney", "spleen"), {}, {})


SPECS = [TurnSpec("vg", "kidney", (1, 2)), TurnSpec("roc", "liver", (0,)),
         TurnSpec("rc", "kidney", (1,)), TurnSpec("mia"), TurnSpec("vg", "spleen", (), True)]


def backend(url, tmp_path, monkeypatch, **kw) -> OpenAIBackend:
  monkeypatch.setenv("OPENAI_API_KEY", KEY)
  return OpenAIBackend(llm_cfg(url, **kw), seed=0, cache_dir=str(tmp_path / "cache"))


def test_normal_answers_are_validated_canonical_and_cached(server, tmp_path, monkeypatch):
  s = server()
  be = backend(s.url, tmp_path, monkeypatch)
  meta = meta_fixture()
  gen = be.generate(meta, SPECS)
  assert gen.backend == "openai" and gen.model == "fake-model" and gen.prompt_version == "v1"
  assert gen.caption == "A scan showing liver, kidney."
  assert [q.task for q in gen.qas] == ["vg", "roc", "rc", "mia", "vg"]
  assert gen.qas[0].answer == ("The <ref>kidney</ref> is at <box>(600,600),(700,800)</box> and "
                               "<box>(200,600),(300,800)</box>.")
  assert gen.qas[1].answer == "Liver."
  assert gen.qas[4].negative and "spleen" in gen.qas[4].answer  # negatives: template
  known = {quantize_box(o.box) for o in meta.objects}
  for qa in gen.qas:
    for b in parse_boxes(qa.question + qa.answer).boxes:
      assert tuple(int(v) for v in b.coords) in known
  stats = be.take_stats()
  assert stats["requests"] == 2 and s.paid == 2 and stats.get("retries", 0) == 0
  assert stats["prompt_tokens"] > 0 and stats["completion_tokens"] > 0
  again = backend(s.url, tmp_path, monkeypatch).generate(meta, SPECS)  # fresh client, same cache
  assert again == gen and s.paid == 2


def test_429_waits_retry_after_and_500_timeouts_are_retried(server, tmp_path, monkeypatch):
  def fault(req, first):
    if not first:
      return None
    return "429" if not is_conversation(req) else "timeout"

  s = server(fault=fault, sleep_s=1.0)
  be = backend(s.url, tmp_path, monkeypatch)
  gen = be.generate(meta_fixture(), SPECS)
  assert gen.backend == "openai"
  stats = be.take_stats()
  assert stats["rate_limited"] == 1 and stats["timeouts"] == 1 and stats["retries"] == 2
  limited = next(k for k, _, kind, _ in s.log if kind == "429")
  t0, t1 = [t for k, t, _, _ in s.log if k == limited]
  assert t1 - t0 >= 0.95  # Retry-After: 1 honoured

  s500 = server(fault=lambda req, first: "500" if first else None)
  be = backend(s500.url, tmp_path / "b", monkeypatch)
  assert be.generate(meta_fixture(), SPECS).backend == "openai"
  assert be.take_stats()["server_errors"] == 2


def test_malformed_and_hallucinated_answers_are_retried_then_fall_back(server, tmp_path,
                                                                       monkeypatch):
  s = server(fault=lambda req, first: "malformed" if first_attempt(req) and is_conversation(req)
             else None)
  be = backend(s.url, tmp_path, monkeypatch)
  gen = be.generate(meta_fixture(), SPECS)
  stats = be.take_stats()
  assert gen.backend == "openai" and stats["rejected_conversation"] == 1
  retry = next(r for _, _, _, r in s.log if len(r["messages"]) == 4)
  assert retry["messages"][2]["content"].startswith('{"items"')  # the rejected answer
  assert "not valid JSON" in retry["messages"][3]["content"]

  always = server(fault=lambda req, first: "hallucinate" if is_conversation(req) else None)
  be = backend(always.url, tmp_path / "b", monkeypatch, max_attempts=3)
  gen = be.generate(meta_fixture(), SPECS)
  stats = be.take_stats()
  assert gen.backend == "template-fallback" and gen.caption == "A scan showing liver, kidney."
  assert stats["rejected_conversation"] == 3 and stats["fallback_conversation"] == 1
  assert always.paid == 1 + 3


def test_requests_failing_for_good_fall_back_then_stop_the_run(server, tmp_path, monkeypatch):
  s = server(fault=lambda req, first: "500")
  be = backend(s.url, tmp_path, monkeypatch, max_retries=1, max_failures=1)
  gen = be.generate(meta_fixture(), SPECS)
  assert gen.backend == "template-fallback"
  stats = be.take_stats()
  assert stats["failed_images"] == 1 and stats["failed_requests"] == 1
  assert stats["server_errors"] == 2 and stats["retries"] == 1
  with pytest.raises(FatalAPIError, match="2 images failed"):
    be.generate(meta_fixture(), SPECS)


def test_retry_after_forms():
  class R:
    def __init__(self, headers):
      self.headers = headers
  assert retry_after(R({"retry-after": "2"})) == 2.0
  assert retry_after(R({"retry-after-ms": "250", "retry-after": "9"})) == 0.25
  assert retry_after(R({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0.0
  assert retry_after(R({})) is None


def test_missing_key_and_rejected_key_stop_with_a_message(server, tmp_path, monkeypatch):
  monkeypatch.delenv("OPENAI_API_KEY", raising=False)
  with pytest.raises(ValueError, match="OPENAI_API_KEY"):
    OpenAIBackend(llm_cfg("http://127.0.0.1:9/v1"), seed=0, cache_dir=str(tmp_path))
  s = server()
  monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
  be = OpenAIBackend(llm_cfg(s.url), seed=0, cache_dir=str(tmp_path))
  with pytest.raises(FatalAPIError, match="HTTP 401") as e:
    be.generate(meta_fixture(), SPECS)
  assert "sk-wrong" not in str(e.value)


# ---- whole runs -------------------------------------------------------------------------


def run_cfg(out: Path, url: str) -> GenConfig:
  return GenConfig(out=str(out), source="phantom", num_images=24, image_size=32, chunk_size=4,
                   workers=1, backend="openai", llm=llm_cfg(url), progress=False,
                   tasks=TaskCounts(negatives=0.5), test_fraction=0.3)


def records_of(out: Path) -> list[dict]:
  return [{**r.to_dict(), "png": r.image_bytes} for side in ("train", "test")
          for r in read_shards(out / side)]


def cli_args(out: Path, url: str) -> list[str]:
  return [sys.executable, "-m", "datagen", "--source", "phantom", "--out", str(out),
          "--num-images", "24", "--image-size", "32", "--chunk-size", "4", "--workers", "1",
          "--backend", "openai", "--base-url", url, "--model", "fake-model", "--concurrency",
          "4", "--timeout", "0.5", "--max-retries", "4", "--backoff", "0.01", "--max-backoff",
          "2", "--price-in", "1", "--price-out", "2", "--negatives", "0.5", "--test-fraction",
          "0.3", "--no-progress"]


@pytest.mark.e2e
def test_killed_run_resumes_to_the_records_of_an_uninterrupted_run(server, tmp_path,
                                                                     monkeypatch):
  ref_server = server(fault=mixed_faults)
  monkeypatch.setenv("OPENAI_API_KEY", KEY)
  summary = generate(run_cfg(tmp_path / "ref", ref_server.url))
  want = records_of(tmp_path / "ref")
  b = summary["backend_stats"]
  assert summary["images"]["written"] == len(want) > 15
  assert b["requests"] == ref_server.paid and b["rejected_conversation"] > 0
  assert b["server_errors"] > 0 and b.get("fallback_conversation", 0) == 0
  assert b["cost_usd"] == pytest.approx((b["prompt_tokens"] + 2 * b["completion_tokens"]) / 1e6)
  for rec in want:
    known = {quantize_box(o["box"]) for o in rec["objects"]}
    assert rec["provenance"]["backend"] == "openai"
    for turn in rec["conversations"]:
      for box in parse_boxes(turn["value"]).boxes:
        assert tuple(int(v) for v in box.coords) in known

  env = {**os.environ, "OPENAI_API_KEY": KEY, "PYTHONPATH": str(REPO)}
  out = tmp_path / "killed"
  s = server(fault=mixed_faults, pause_after=ref_server.paid // 2)
  proc = subprocess.Popen(cli_args(out, s.url), cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
  deadline = time.time() + 120
  while not s.events["paused"] and time.time() < deadline and proc.poll() is None:
    time.sleep(0.05)
  proc.kill()
  killed_log = proc.communicate()[0].decode()
  assert s.events["paused"], killed_log
  done = list((out / ".work" / "text").glob("chunk-*.json"))
  assert 0 < len(done) < 6 and not (out / "summary.json").exists()
  s.pause_after = None
  s.release.set()
  paid_before = s.paid
  res = subprocess.run(cli_args(out, s.url), cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=180)
  assert res.returncode == 0, res.stderr
  assert re.search(r"openai: \d+ requests, \d+ cache hits, .* estimated cost \$\d", res.stdout)
  assert records_of(out) == want
  assert json.loads((out / "medgrit" / "test_VG.json").read_text()) == json.loads(
      (tmp_path / "ref" / "medgrit" / "test_VG.json").read_text())
  # answers cached before the kill are not bought again (the ones in flight were never
  # answered), so both runs together paid exactly what the uninterrupted run paid
  assert 0 < paid_before < ref_server.paid and s.paid == ref_server.paid
  for text in (killed_log, res.stdout, res.stderr):
    assert KEY not in text
  for p in out.rglob("*"):
    if p.is_file():
      assert KEY.encode() not in p.read_bytes(), p


@pytest.mark.faults
def test_a_200_that_is_not_json_is_retried(server, tmp_path, monkeypatch, fault_log):
  s = server(fault=lambda req, first: "html" if first else None)
  be = backend(s.url, tmp_path, monkeypatch)
  assert be.generate(meta_fixture(), SPECS).backend == "openai"
  assert be.take_stats()["bad_responses"] == 2  # caption and conversation, once each
  fault_log(what="HTTP 200 with a non-JSON body", recovered=True)


@pytest.mark.faults
@pytest.mark.parametrize("kind", ["html_page", "no_message"])
def test_a_200_that_is_not_a_chat_completion_is_retried_then_falls_back(server, tmp_path,
                                                                       monkeypatch, kind,
                                                                       fault_log):
  """A proxy's HTML page (Content-Type text/html) or a choice without a message: retried like
  a 5xx, answered on a later try; an image whose requests keep getting such answers falls back
  to template text and is counted."""
  s = server(fault=lambda req, first: kind if first else None)
  be = backend(s.url, tmp_path, monkeypatch)
  assert be.generate(meta_fixture(), SPECS).backend == "openai"
  stats = be.take_stats()
  assert stats["bad_responses"] == 2 and stats["retries"] == 2 and stats["requests"] == 2
  always = server(fault=lambda req, first: kind)
  be = backend(always.url, tmp_path / "b", monkeypatch, max_retries=1)
  gen = be.generate(meta_fixture(), SPECS)
  stats = be.take_stats()
  assert gen.backend == "template-fallback"
  assert stats["bad_responses"] == 2 and stats["failed_requests"] == 1
  assert stats["failed_images"] == 1 and stats["fallback_images"] == 1
  assert not list((tmp_path / "b" / "cache").rglob("*.json"))  # nothing cached
  fault_log(what=f"HTTP 200 that is not a chat completion ({kind})", recovered=True)


@pytest.mark.faults
def test_an_outage_fails_the_run_and_a_rerun_regenerates_the_fallbacks(server, tmp_path,
                                                                      monkeypatch, fault_log):
  """Every request fails (server down): the run stops with exit 7 naming the share, writes no
  final files and publishes no shards (train.py finds nothing to read); the same command
  against a healthy server replaces every template record."""
  monkeypatch.setenv("OPENAI_API_KEY", KEY)
  down = server(fault=lambda req, first: "500")
  cfg = dataclasses.replace(run_cfg(tmp_path / "out", down.url),
                            llm=llm_cfg(down.url, max_retries=0, max_failures=1000))
  with pytest.raises(TooManyFallbacks, match=r"(\d+) of \1 images \(100%\) fell back .* "
                                             r"--max-fallback-fraction 0.05 \(\1 with requests "
                                             r"failing"):
    generate(cfg)
  assert not (tmp_path / "out" / "summary.json").exists()
  assert not (tmp_path / "out" / "medgrit").exists()
  assert not (tmp_path / "out" / "train").exists() and not (tmp_path / "out" / "test").exists()
  assert list((tmp_path / "out" / ".work" / "shards" / "train").glob("*.array_record"))
  up = server()
  summary = generate(dataclasses.replace(cfg, llm=llm_cfg(up.url)))
  assert summary["backend_stats"].get("fallback_images", 0) == 0
  records = records_of(tmp_path / "out")
  assert {r["provenance"]["backend"] for r in records} == {"openai"}
  assert "template fallbacks: 0 of" in format_summary(summary)
  ids = [r["id"] for r in records]
  planned = summary["images"]["written"]
  assert len(ids) == len(set(ids)) == planned  # every image once
  fault_log(what="LLM server down for a whole run", recovered=True,
            lost=planned - len(set(ids)), duplicated=len(ids) - len(set(ids)))


@pytest.mark.faults
@pytest.mark.e2e
def test_fallbacks_are_reported_and_overwrite_keeps_paid_answers(server, tmp_path, monkeypatch,
                                                                 fault_log):
  """Conversations always rejected: every image falls back; the summary says so, a higher
  limit accepts it; --overwrite deletes the run but not the paid answers."""
  s = server(fault=lambda req, first: "hallucinate" if is_conversation(req) else None)
  out = tmp_path / "out"
  env = {**os.environ, "OPENAI_API_KEY": KEY, "PYTHONPATH": str(REPO)}
  args = cli_args(out, s.url) + ["--max-attempts", "1"]
  res = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
  assert res.returncode == 7, res.stderr
  assert re.search(r"error: (\d+) of \1 images \(100%\) fell back to template text", res.stderr)
  res = subprocess.run(args + ["--max-fallback-fraction", "1"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=180)
  assert res.returncode == 0, res.stderr
  n = json.loads((out / "summary.json").read_text())["images"]["written"]
  assert f"template fallbacks: {n} of {n} images (0 with requests failing after all retries, " \
         f"0 captions and {n} conversations rejected)" in res.stdout
  paid = s.paid
  res = subprocess.run(args + ["--max-fallback-fraction", "1", "--overwrite"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=180)
  assert res.returncode == 0, res.stderr
  assert s.paid == paid and (out / ".work" / "llm_cache").is_dir()
  fault_log(what="every conversation rejected; --overwrite after paying")
