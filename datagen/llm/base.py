"""The text backend interface: meta + turn plan -> caption and question/answer pairs."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from typing import Protocol

from bird_jax import exit_codes
from datagen.meta import ImageMeta
from datagen.tasks import TurnSpec


class FatalAPIError(RuntimeError):
  """The server refuses the requests (bad key, model, URL) or too many images failed."""

  exit_code = exit_codes.BAD_INPUT


@dataclasses.dataclass(frozen=True)
class QA:
  task: str
  question: str
  answer: str
  negative: bool = False


@dataclasses.dataclass(frozen=True)
class Generation:
  """The text of one image and where it came from."""

  caption: str
  qas: tuple[QA, ...]
  backend: str  # backend that wrote the conversation ("openai", "template", ...)
  model: str = ""
  prompt_version: str = ""


Item = tuple[ImageMeta, Sequence[TurnSpec]]


class Backend(Protocol):
  name: str
  model: str
  prompt_version: str

  def generate_many(self, items: Sequence[Item]) -> list[Generation]:
    """One generation per item, in order."""

  def take_stats(self) -> Counter:
    """Counters since the last call (requests, retries, fallbacks, tokens, ...), then reset."""
