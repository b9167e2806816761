"""Text from an OpenAI-compatible chat-completions server (the paper's two stages).

Per image: (1) a global caption from the meta, (2) one question/answer pair per planned
turn (VG, ROC, RC, MIA) from the meta and the caption. Negative (absent-structure) turns are
phrased by the template backend. Every answer is validated (:mod:`datagen.llm.validate`);
a rejected answer is sent back with the reasons and asked again, up to ``max_attempts``
answers per stage, after which the template backend writes that stage for the image
(counted as ``fallback_caption`` / ``fallback_conversation``).

Transport: the ``openai`` client (its own retries off) with ``base_url`` and a per-request
``timeout``; the key is read from ``OPENAI_API_KEY`` only and never written anywhere.
429 and 5xx answers, timeouts, connection errors and HTTP 200 answers that are not a
well-formed chat completion (a proxy's HTML error page, a body that is not JSON, a choice
without a message) are retried up to ``max_retries`` times, waiting what ``Retry-After`` /
``retry-after-ms`` says or else an exponential backoff (with jitter, capped at
``max_backoff``). Other 4xx errors (bad key, unknown model) stop the run. An image whose
requests keep failing falls back to the template backend; past ``max_failures`` such images
the run stops (a rerun resumes it). Every image that fell back is counted
(``fallback_images``); a run whose share of them exceeds ``max_fallback_fraction`` fails,
and a rerun generates the chunks that hold fallbacks again. At most ``concurrency`` requests
are in flight (one thread per image). Responses are cached on disk by request hash
(:mod:`datagen.llm.cache`).
"""

from __future__ import annotations

import email.utils
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai

from datagen.llm.config import BackendConfig, api_key
from datagen.llm import template
from datagen.llm.base import QA, FatalAPIError, Generation, Item
from datagen.llm.cache import ResponseCache, request_key
from datagen.llm.prompts import load_prompts, meta_text, request_lines
from datagen.llm.validate import CAPTION_SCHEMA, ITEMS_SCHEMA, Rejected, check_caption
from datagen.llm.validate import check_items
from datagen.meta import ImageMeta
from datagen.sources.base import stable_seed
from datagen.tasks import TurnSpec

class RequestFailed(RuntimeError):
  """One request still failed after all retries."""


def completion_text(resp: Any) -> str | None:
  """The answer text of a well-formed chat completion ("" when its message has no content);
  None for anything else the client returns for an HTTP 200: the body as a string (a proxy's
  HTML page), no choices, a choice without a message."""
  choices = getattr(resp, "choices", None)
  if not isinstance(choices, list) or not choices:
    return None
  message = getattr(choices[0], "message", None)
  if message is None:
    return None
  content = getattr(message, "content", None)
  if content is not None and not isinstance(content, str):
    return None
  return content or ""


def retry_after(response: Any) -> float | None:
  """Seconds to wait from ``retry-after-ms`` / ``Retry-After`` (seconds or HTTP date)."""
  headers = getattr(response, "headers", None) or {}
  ms = headers.get("retry-after-ms")
  if ms:
    try:
      return max(0.0, float(ms) / 1000)
    except ValueError:
      pass
  value = headers.get("retry-after")
  if not value:
    return None
  try:
    return max(0.0, float(value))
  except ValueError:
    try:
      when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
      return None
    return max(0.0, when.timestamp() - time.time())


class OpenAIBackend:
  name = "openai"

  def __init__(self, cfg: BackendConfig, *, seed: int, cache_dir: str, client: Any = None):
    self.cfg, self.seed = cfg, seed
    self.model = cfg.model
    self.prompts = load_prompts(cfg.prompt_version)
    self.prompt_version = cfg.prompt_version
    self.cache = ResponseCache(cache_dir)
    if client is None:
      client = openai.OpenAI(api_key=api_key(), base_url=cfg.base_url, max_retries=0,
                             timeout=cfg.timeout)
    self.client = client
    self._lock = threading.Lock()
    self._stats: Counter = Counter()
    self._failures = 0
    self._abort: str = ""

  # -- bookkeeping

  def _count(self, **kw: int) -> None:
    with self._lock:
      self._stats.update(kw)

  def take_stats(self) -> Counter:
    with self._lock:
      out, self._stats = self._stats, Counter()
    return out

  def close(self) -> None:
    close = getattr(self.client, "close", None)
    if close:
      close()

  # -- one request, with cache and retries

  def _response_format(self, name: str, schema: dict) -> dict[str, Any]:
    if self.cfg.json_mode == "json_object":
      return {"response_format": {"type": "json_object"}}
    if self.cfg.json_mode == "json_schema":
      return {"response_format": {"type": "json_schema", "json_schema": {
          "name": name, "strict": True, "schema": schema}}}
    return {}

  def request(self, messages: list[dict[str, str]], name: str, schema: dict, seed: int) -> str:
    req = {"model": self.cfg.model, "messages": messages, "temperature": self.cfg.temperature,
           "max_tokens": self.cfg.max_tokens, "seed": seed,
           **self._response_format(name, schema)}
    key = request_key(req)
    hit = self.cache.get(key)
    if hit is not None:
      usage = hit.get("usage", {})
      self._count(cache_hits=1, cached_prompt_tokens=usage.get("prompt_tokens", 0),
                  cached_completion_tokens=usage.get("completion_tokens", 0))
      return hit["content"]
    wait = 0.0
    for attempt in range(self.cfg.max_retries + 1):
      if self._abort:
        raise FatalAPIError(self._abort)
      if attempt:
        self._count(retries=1)
        time.sleep(wait)
      try:
        resp = self.client.chat.completions.create(**req, timeout=self.cfg.timeout)
      except openai.RateLimitError as e:
        self._count(rate_limited=1)
        wait = self._wait(attempt, retry_after(e.response))
        continue
      except openai.APITimeoutError:
        self._count(timeouts=1)
        wait = self._wait(attempt, None)
        continue
      except openai.APIConnectionError:
        self._count(connection_errors=1)
        wait = self._wait(attempt, None)
        continue
      except (json.JSONDecodeError, openai.APIResponseValidationError):
        # an HTTP 200 whose body is not a chat completion (a proxy's error page, a cut body)
        self._count(bad_responses=1)
        wait = self._wait(attempt, None)
        continue
      except openai.APIStatusError as e:
        if e.status_code >= 500 or e.status_code in (408, 409):
          self._count(server_errors=1)
          wait = self._wait(attempt, retry_after(e.response))
          continue
        self._abort = (f"{self.cfg.base_url} answered HTTP {e.status_code} for model "
                       f"{self.cfg.model!r}: {str(e.message)[:300]}")
        raise FatalAPIError(self._abort) from None
      content = completion_text(resp)
      if content is None:  # an HTTP 200 that is not a chat completion: like a 5xx
        self._count(bad_responses=1)
        wait = self._wait(attempt, None)
        continue
      used = getattr(resp, "usage", None)
      usage = {"prompt_tokens": getattr(used, "prompt_tokens", 0) or 0,
               "completion_tokens": getattr(used, "completion_tokens", 0) or 0}
      self._count(requests=1, **usage)
      self.cache.put(key, req, {"content": content, "usage": usage,
                                "model": getattr(resp, "model", None)})
      return content
    self._count(failed_requests=1)
    raise RequestFailed(f"no answer after {self.cfg.max_retries + 1} tries")

  def _wait(self, attempt: int, hinted: float | None) -> float:
    if hinted is not None:
      return min(hinted, self.cfg.max_backoff)
    return min(self.cfg.max_backoff, self.cfg.backoff * 2 ** attempt) * (0.5 + random.random() / 2)

  # -- the two stages

  def _stage(self, name: str, messages: list[dict[str, str]], schema: dict, seed: int, check):
    """Asks until ``check(content)`` accepts (max_attempts answers); None if it never does."""
    for attempt in range(self.cfg.max_attempts):
      content = self.request(messages, name, schema, seed)
      try:
        return check(content)
      except Rejected as e:
        self._count(rejected=1, **{f"rejected_{name}": 1})
        errors = "\n".join(f"- {p}" for p in e.problems)
        messages = messages + [{"role": "assistant", "content": content},
                               {"role": "user", "content": self.prompts.fill("retry",
                                                                             errors=errors)}]
    return None

  def caption(self, meta: ImageMeta) -> str | None:
    messages = [{"role": "system", "content": self.prompts.fill("caption_system")},
                {"role": "user", "content": self.prompts.fill("caption_user",
                                                              meta=meta_text(meta))}]
    return self._stage("caption", messages, CAPTION_SCHEMA, self._seed(meta, 1), check_caption)

  def conversation(self, meta: ImageMeta, specs: Sequence[TurnSpec], caption: str
                   ) -> list[tuple[str, str]] | None:
    requests = [(n, s) for n, s in enumerate((s for s in specs if not s.negative), 1)]
    if not requests:
      return []
    messages = [{"role": "system", "content": self.prompts.fill("conversation_system")},
                {"role": "user", "content": self.prompts.fill(
                    "conversation_user", meta=meta_text(meta), caption=caption,
                    requests=request_lines(meta, requests))}]
    return self._stage("conversation", messages, ITEMS_SCHEMA, self._seed(meta, 2),
                       lambda content: check_items(content, meta, requests))

  def _seed(self, meta: ImageMeta, stage: int) -> int:
    return stable_seed(self.seed, "llm", stage, meta.id) % (2 ** 31)

  def generate(self, meta: ImageMeta, specs: Sequence[TurnSpec]) -> Generation:
    fallback = template.template_generation(meta, specs, self.seed, backend="template-fallback",
                                            model=self.cfg.model)
    try:
      cap = self.caption(meta)
      if cap is None:
        self._count(fallback_caption=1)
      pairs = self.conversation(meta, specs, cap or fallback.caption)
    except RequestFailed:
      with self._lock:
        self._failures += 1
        self._stats["failed_images"] += 1
        self._stats["fallback_images"] += 1
        if self._failures > self.cfg.max_failures:
          self._abort = (f"{self._failures} images failed after all retries (more than "
                         f"--max-failures {self.cfg.max_failures}); {self.cfg.base_url} may be "
                         "down; rerun to resume")
      if self._abort:
        raise FatalAPIError(self._abort) from None
      return fallback
    if cap is None or pairs is None:
      self._count(fallback_images=1)
    if pairs is None:
      self._count(fallback_conversation=1)
      return Generation(cap or fallback.caption, fallback.qas, "template-fallback",
                        self.cfg.model, fallback.prompt_version)
    it = iter(pairs)
    qas = tuple(fb if s.negative else QA(s.task, *next(it))
                for s, fb in zip(specs, fallback.qas))
    return Generation(cap or fallback.caption, qas, self.name, self.cfg.model,
                      self.prompt_version)

  def generate_many(self, items: Sequence[Item]) -> list[Generation]:
    self._count(images=len(items))
    with ThreadPoolExecutor(max_workers=self.cfg.concurrency) as ex:
      return list(ex.map(lambda it: self.generate(*it), items))
