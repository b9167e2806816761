"""The openai backend's options and its API key (read from the environment only)."""

from __future__ import annotations

import dataclasses
import os

KEY_ENV = "OPENAI_API_KEY"  # the only place the openai backend reads its key from


@dataclasses.dataclass(frozen=True)
class BackendConfig:
  """The openai backend (see datagen.llm.openai_backend)."""

  base_url: str = "https://api.openai.com/v1"
  model: str = "gpt-4o-mini"
  temperature: float = 0.7
  json_mode: str = "json_object"  # json_object | json_schema | none
  prompt_version: str = "v1"
  max_attempts: int = 3  # answers rejected by validation -> ask again, then template fallback
  concurrency: int = 8  # requests in flight
  timeout: float = 60.0  # seconds per request
  max_retries: int = 6  # per request, on 429 / 5xx / timeouts / connection errors
  backoff: float = 1.0  # first retry wait (doubles each time) when no Retry-After is given
  max_backoff: float = 60.0
  max_failures: int = 20  # images whose requests failed for good before the run stops
  max_fallback_fraction: float = 0.05  # fail the run when more images fall back to templates
  cache_dir: str = ""  # default: OUT/.work/llm_cache
  price_in: float | None = None  # USD per 1M prompt tokens (for the cost estimate)
  price_out: float | None = None  # USD per 1M completion tokens
  max_tokens: int = 1500


def api_key() -> str:
  """The openai backend's key, from the environment only (never logged or stored)."""
  key = os.environ.get(KEY_ENV)
  if not key:
    raise ValueError(f"the openai backend reads its API key from {KEY_ENV} only: set it (any "
                     "non-empty value for servers without keys)")
  return key
