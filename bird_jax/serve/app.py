"""The HTTP layer: the page, its static files, and an OpenAI-compatible chat endpoint.

    GET  /                      the page (static/index.html)
    GET  /static/...            its script and style (served from the package folder only)
    GET  /ui/config             what the page needs: model name, box colours, limits
    GET  /v1/models             the one model served (503 while nothing can be answered)
    GET  /health                200 {"status": "ok"} while requests are answered, else 503
    POST /v1/chat/completions   OpenAI's request and response; images as data: URLs

The response's message carries, beside `content`, `boxes`: every box of the answer as read by
bird_jax/boxes.py, ``{"ref": phrase or null, "box": [x1, y1, x2, y2]}`` on the 0..1000 grid.
With ``stream: true`` the answer comes as server-sent chunks in OpenAI's format; the text
arrives in one chunk once decoded (decoding runs on the device in one loop).

Errors are OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, with a 4xx
status for anything wrong in the request; the server goes on serving. A generation that fails
answers 500 (``generation_failed``) and the next request is served as usual; a request without
an answer after `request_timeout_s` answers 504 (``timeout``; its answer, if it comes later, is
dropped); once the batcher answers nothing more (closed, its worker stopped) every request
answers 503 (``unavailable``), and so do /v1/models and /health, for a health check to see.
/v1/models and /health also answer 503, with the reason, while a batch has been generating for
longer than the batcher's `max_batch_s` (the command gives it the request time limit), so a
hung generation, which would make every request answer 504, is seen by a health check too.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import hmac
import json
import time
import uuid
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from bird_jax.assistant import Answer, Assistant, Message, Refused
from bird_jax.boxes import SCALE
from bird_jax.draw import PREDICTED, QUESTION, css
from bird_jax.serve.batcher import Batcher, Busy, Sampling, Unavailable

STATIC = Path(__file__).parent / "static"
API_KEY_ENV = "BIRD_JAX_API_KEY"
DEFAULT_REQUEST_TIMEOUT_S = 600.0  # the longest a chat request waits for its answer (504 after)


# ---- the request schema (the part of OpenAI's that this server honours) ---------------------

class _Strict(BaseModel):
  model_config = ConfigDict(extra="forbid")


class ImageURL(_Strict):
  url: str
  detail: str | None = None


class TextPart(_Strict):
  type: Literal["text"]
  text: str


class ImagePart(_Strict):
  type: Literal["image_url"]
  image_url: ImageURL


class ChatMessage(_Strict):
  role: Literal["system", "user", "assistant"]
  content: str | list[Annotated[TextPart | ImagePart, Field(discriminator="type")]]
  name: str | None = None


class StreamOptions(_Strict):
  include_usage: bool = False


class ChatRequest(_Strict):
  model: str
  messages: list[ChatMessage] = Field(min_length=1)
  max_tokens: int | None = Field(None, ge=1)
  max_completion_tokens: int | None = Field(None, ge=1)
  temperature: float | None = Field(None, ge=0, le=2)  # None: 0, BiRD's greedy decoding
  top_p: float | None = Field(None, gt=0, le=1)
  seed: int | None = None
  n: int | None = Field(None, ge=1, le=1)
  stream: bool | None = None
  stream_options: StreamOptions | None = None
  user: str | None = None


class ApiError(Exception):
  def __init__(self, status: int, message: str, code: str | None = None,
               param: str | None = None, kind: str = "invalid_request_error"):
    super().__init__(message)
    self.status, self.message, self.code, self.param, self.kind = status, message, code, param, kind

  def response(self) -> JSONResponse:
    return JSONResponse({"error": {"message": self.message, "type": self.kind,
                                   "param": self.param, "code": self.code}}, self.status)


def _validation_error(e: ValidationError) -> ApiError:
  first = e.errors()[0]
  where = ".".join(str(p) for p in first["loc"]) or "body"
  more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
  return ApiError(400, f"invalid request: {where}: {first['msg']}{more}", param=where)


def _image_bytes(url: str, where: str) -> bytes:
  """The bytes of a ``data:image/...;base64,...`` URL (nothing is ever fetched)."""
  head, sep, data = url.partition(",")
  if not head.startswith("data:") or not sep:
    raise ApiError(400, f"{where}: the image must be a data: URL (data:image/png;base64,...); "
                   "this server fetches nothing", "invalid_image", where)
  if not head.endswith(";base64"):
    raise ApiError(400, f"{where}: the data URL must be base64 (data:image/...;base64,...)",
                   "invalid_image", where)
  try:
    return base64.b64decode(data, validate=True)
  except (binascii.Error, ValueError):
    raise ApiError(400, f"{where}: the data URL's base64 does not decode", "invalid_image",
                   where) from None


def _messages(req: ChatRequest, bot: Assistant) -> list[Message]:
  out = []
  for i, m in enumerate(req.messages):
    parts = [TextPart(type="text", text=m.content)] if isinstance(m.content, str) else m.content
    text = "".join(p.text for p in parts if isinstance(p, TextPart))
    images = tuple(
        bot.pixels(bot.read_image(_image_bytes(p.image_url.url, f"messages.{i}.content.{k}"),
                                  f"messages.{i}.content.{k}"))
        for k, p in enumerate(parts) if isinstance(p, ImagePart))
    out.append(Message(m.role, text, images))
  return out


def _boxes(answer: Answer) -> list[dict]:
  return [{"ref": b.ref, "box": [int(v) if float(v).is_integer() else v for v in b.coords]}
          for b in answer.boxes]


def _usage(answer: Answer) -> dict:
  return {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
          "total_tokens": answer.prompt_tokens + answer.completion_tokens}


def _completion(answer: Answer, model: str) -> dict:
  return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
          "created": int(time.time()), "model": model,
          "choices": [{"index": 0, "finish_reason": answer.finish_reason, "logprobs": None,
                       "message": {"role": "assistant", "content": answer.text,
                                   "boxes": _boxes(answer)}}],
          "usage": _usage(answer)}


def _chunks(answer: Answer, model: str, usage: bool):
  head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk",
          "created": int(time.time()), "model": model}
  events = [
      {**head, "choices": [{"index": 0, "finish_reason": None,
                            "delta": {"role": "assistant", "content": answer.text}}]},
      {**head, "choices": [{"index": 0, "finish_reason": answer.finish_reason,
                            "delta": {"boxes": _boxes(answer)}}]}]
  if usage:
    events.append({**head, "choices": [], "usage": _usage(answer)})
  for e in events:
    yield f"data: {json.dumps(e)}\n\n"
  yield "data: [DONE]\n\n"


async def _wait(future: concurrent.futures.Future, timeout_s: float) -> Answer:
  """The answer of a submitted request, as an ApiError when there is none within `timeout_s`
  (504; the request is withdrawn) or when generating it failed (500). Unavailable passes."""
  waiter = asyncio.wrap_future(future)
  try:
    done, _ = await asyncio.wait({waiter}, timeout=timeout_s)
    if not done:
      raise ApiError(504, f"no answer within the server's time limit of {timeout_s:g} s "
                     "(--request-timeout-s)", "timeout", kind="server_error")
    return waiter.result()
  except (ApiError, Unavailable):
    raise
  except Exception as e:  # noqa: BLE001 -- the batch's error, for every request of it
    raise ApiError(500, f"generating the answer failed ({type(e).__name__}: {e})",
                   "generation_failed", kind="server_error") from e
  finally:
    # withdraws a request still queued, before the answer goes out (cancelling only `waiter`
    # would reach `future` later, from the event loop); a running or finished one is unaffected
    future.cancel()
    waiter.cancel()


def create_app(bot: Assistant, batcher: Batcher, *, api_key: str | None = None,
               max_body_bytes: int = 20 * 2**20,
               request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S) -> Starlette:
  """The ASGI app over `batcher` (which answers with `bot`); `api_key`: required as
  ``Authorization: Bearer KEY`` on /v1/ routes when given; `request_timeout_s`: the longest a
  chat request waits for its answer (queue and generation) before a 504."""

  def check_key(request: Request) -> None:
    if api_key is None:
      return
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
      raise ApiError(401, "missing or wrong API key (send Authorization: Bearer KEY)",
                     "invalid_api_key", kind="authentication_error")

  async def index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html")

  async def ui_config(request: Request) -> Response:
    return JSONResponse({"model": bot.name, "grid": SCALE, "api_key_required": api_key is not None,
                         "colors": {"answer": css(PREDICTED), "question": css(QUESTION)},
                         "max_image_pixels": bot.max_image_pixels, "max_body_bytes": max_body_bytes,
                         "max_new_tokens": bot.max_new_tokens})

  def check_serving() -> None:
    if not batcher.healthy:
      raise Unavailable(batcher.status)

  async def health(request: Request) -> Response:
    check_serving()
    return JSONResponse({"status": "ok"})

  async def models(request: Request) -> Response:
    check_key(request)
    check_serving()
    return JSONResponse({"object": "list", "data": [
        {"id": bot.name, "object": "model", "created": 0, "owned_by": "bird_jax"}]})

  async def chat_completions(request: Request) -> Response:
    check_key(request)
    try:
      body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ApiError(400, f"the request body is not JSON: {e}", "invalid_json") from None
    try:
      req = ChatRequest.model_validate(body)
    except ValidationError as e:
      raise _validation_error(e) from None
    if req.model != bot.name:
      raise ApiError(404, f"the model {req.model!r} is not served here; this server serves "
                     f"{bot.name!r} (GET /v1/models)", "model_not_found", "model")
    messages = await run_in_threadpool(_messages, req, bot)
    prompt = bot.prompt(messages, req.max_completion_tokens or req.max_tokens)
    sampling = Sampling(req.temperature or 0.0, req.top_p or 1.0, req.seed)
    answer = await _wait(batcher.submit(prompt, sampling), request_timeout_s)
    if req.stream:
      usage = bool(req.stream_options and req.stream_options.include_usage)
      return StreamingResponse(_chunks(answer, bot.name, usage), media_type="text/event-stream")
    return JSONResponse(_completion(answer, bot.name))

  async def api_error(request: Request, e: ApiError) -> Response:
    return e.response()

  async def refused(request: Request, e: Refused) -> Response:
    return ApiError(400, str(e), e.code).response()

  async def busy(request: Request, e: Busy) -> Response:
    r = ApiError(429, f"the server is busy: {e}", "busy", kind="rate_limit_error").response()
    r.headers["Retry-After"] = "1"
    return r

  async def unavailable(request: Request, e: Unavailable) -> Response:
    return ApiError(503, f"the server cannot answer: {e}", "unavailable",
                    kind="server_error").response()

  async def http_error(request: Request, e: HTTPException) -> Response:
    message = (f"the request body is larger than the limit of {max_body_bytes:,} bytes"
               if e.status_code == 413 else str(e.detail))
    return ApiError(e.status_code, message).response()

  return Starlette(
      routes=[Route("/", index), Route("/ui/config", ui_config), Route("/health", health),
              Route("/v1/models", models),
              Route("/v1/chat/completions", chat_completions, methods=["POST"]),
              Mount("/static", StaticFiles(directory=STATIC), name="static")],
      exception_handlers={ApiError: api_error, Refused: refused, Busy: busy,
                          Unavailable: unavailable, HTTPException: http_error},
      max_body_size=max_body_bytes)
