"""ChatML rendering of conversations, image spans and training labels (Qwen-VL's finetune).

A conversation is Med-GRIT's list of ``{"from": "user" | "assistant", "value": str}``. It is
rendered as (docs/tokenizer.md, "Chat format")::

  <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
  <|im_start|>user\\n{q}<|im_end|>\\n<|im_start|>assistant\\n{a}<|im_end|>\\n ...

with the role word, "\\n" and the content encoded separately (no BPE merge across them).
``<img>PATH</img>`` in a content becomes ``<img>`` + ``n_image_tokens`` x ``<imgpad>`` +
``</img>``; the PATHs are returned in order so the caller can load the pixels.

Label modes (labels are aligned with the ids; the loss shifts them; ``IGNORE_ID`` = ignored):
- ``"qwen_vl"``: the reference finetune. Every turn's ``<|im_start|>``, ``<|im_end|>`` and
  the "\\n" after it are supervised, the system turn's included; role words, their "\\n"
  and system/user contents are ignored; assistant contents are supervised.
- ``"assistant_only"``: only assistant contents and the ``<|im_end|>`` closing them.

Roles: ``ROLES`` are the three of the format; a Med-GRIT conversation holds the
``CONVERSATION_ROLES`` (user and assistant), the system turn is written by :func:`encode_chat`.

This is the library layer that the data pipeline, evaluation and the assistant share; the
terminal chat (``python -m bird_jax.chat``) is an app over it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

import numpy as np

from bird_jax.tokenizer import Tokenizer
from bird_jax.vocabulary import IGNORE_ID, IMAGE_TAGS, IMG, IMG_END

DEFAULT_SYSTEM = "You are a helpful assistant."
LABEL_MODES = ("qwen_vl", "assistant_only")
IMAGE_FILLS = ("pad", "path")
ROLES: tuple[str, ...] = ("system", "user", "assistant")
CONVERSATION_ROLES = ROLES[1:]  # the "from" of a conversation's messages, user first
_IMAGE_SPAN = re.compile(re.escape(IMG) + "(.*?)" + re.escape(IMG_END), re.DOTALL)


@dataclasses.dataclass(frozen=True)
class EncodedChat:
  ids: np.ndarray  # int32 [L]
  labels: np.ndarray  # int32 [L], IGNORE_ID where not supervised
  image_paths: list[str]  # one per <img> span, in order
  dropped_turns: int  # trailing exchanges (a user turn + its replies) dropped to fit max_len

  def __len__(self) -> int:
    return len(self.ids)


class ChatTooLong(ValueError):
  """Not even the first exchange (or, for generation, the whole prompt) fits ``max_len``."""

  def __init__(self, what: str, length: int, max_len: int):
    super().__init__(f"{what} needs {length} tokens, more than max_len {max_len}")
    self.length, self.max_len = length, max_len


def image_prompt(paths: Sequence[str], first: int = 1) -> str:
  """``Picture {i}: <img>{path}</img>\\n`` for each image (the reference's prompt prefix)."""
  return "".join(f"Picture {i}: {IMG}{p}{IMG_END}\n" for i, p in enumerate(paths, first))


def find_image_paths(text: str) -> list[str]:
  """The PATHs of the ``<img>PATH</img>`` spans in ``text``, in order."""
  return _IMAGE_SPAN.findall(text)


def encode_content(tok: Tokenizer, text: str, n_image_tokens: int, image_fill: str = "pad"
                   ) -> tuple[list[int], list[str]]:
  """One message's text -> (ids, image paths), expanding ``<img>PATH</img>`` spans.

  ``image_fill="pad"`` fills a span with ``n_image_tokens`` x ``<imgpad>``; ``"path"`` writes
  the reference's layout (the path's UTF-8 bytes as ids 0..255, then ``<imgpad>``s). The model
  overwrites those positions with image features, so both give the same model outputs.
  """
  if image_fill not in IMAGE_FILLS:
    raise ValueError(f"image_fill {image_fill!r} not in {IMAGE_FILLS}")
  ids: list[int] = []
  paths: list[str] = []
  pos = 0
  for m in _IMAGE_SPAN.finditer(text):
    ids += _encode_text(tok, text[pos:m.start()])
    path = m.group(1)
    fill = list(path.encode("utf-8")) if image_fill == "path" else []
    if len(fill) > n_image_tokens:
      raise ValueError(f"image path {path!r} is {len(fill)} bytes, longer than the "
                       f"{n_image_tokens} image tokens of its span")
    ids += [tok.img_id, *fill, *[tok.imgpad_id] * (n_image_tokens - len(fill)), tok.img_end_id]
    paths.append(path)
    pos = m.end()
  ids += _encode_text(tok, text[pos:])
  return ids, paths


def _encode_text(tok: Tokenizer, text: str) -> list[int]:
  """Message text -> ids: the image/ref/box/quad tags become their special ids, every other
  special token written in the text (``<|im_start|>``, ``<|endoftext|>``, ...) stays plain text,
  so no message can open or close a turn (as the reference's make_context)."""
  ids = tok.encode(text, allowed_special=IMAGE_TAGS)
  if tok.img_id in ids or tok.img_end_id in ids:
    raise ValueError(f"unpaired {IMG} or {IMG_END} tag in message text {text[:120]!r}")
  return ids


@dataclasses.dataclass
class _Block:
  ids: list[int]
  labels: list[int]
  paths: list[str]


def _turn(tok: Tokenizer, role: str, content: list[int], paths: list[str], label_mode: str,
          role_ids: list[int], nl: list[int]) -> _Block:
  """``<|im_start|>`` role "\\n" content ``<|im_end|>`` "\\n" with its labels."""
  ids = [tok.im_start_id, *role_ids, *nl, *content, tok.im_end_id, *nl]
  head = [IGNORE_ID] * (len(role_ids) + len(nl))
  hidden = [IGNORE_ID] * len(content)
  if label_mode == "qwen_vl":
    body = content if role == "assistant" else hidden
    labels = [tok.im_start_id, *head, *body, tok.im_end_id, *nl]
  elif role == "assistant":
    labels = [IGNORE_ID, *head, *content, tok.im_end_id, *[IGNORE_ID] * len(nl)]
  else:
    labels = [IGNORE_ID] * len(ids)
  return _Block(ids, labels, paths)


def _exchanges(conversations: Sequence[Mapping[str, str]]) -> list[list[Mapping[str, str]]]:
  """Groups messages into exchanges: a user message and the messages up to the next one."""
  groups: list[list[Mapping[str, str]]] = []
  for i, msg in enumerate(conversations):
    role, value = msg.get("from"), msg.get("value")
    if role not in CONVERSATION_ROLES:
      raise ValueError(f"conversation message {i}: 'from' is {role!r}, expected one of "
                       f"{CONVERSATION_ROLES}")
    if not isinstance(value, str):
      raise ValueError(f"conversation message {i}: 'value' is {type(value).__name__}, expected str")
    if i == 0 and role != "user":
      raise ValueError(f"conversation message 0 is from {role!r}: conversations start with a user turn")
    if role == "user":
      groups.append([])
    groups[-1].append(msg)
  return groups


def encode_chat(tok: Tokenizer, conversations: Sequence[Mapping[str, str]], *,
                n_image_tokens: int, label_mode: str = "qwen_vl", max_len: int | None = None,
                system: str = DEFAULT_SYSTEM, add_generation_prompt: bool = False,
                image_fill: str = "pad") -> EncodedChat:
  """Renders a conversation as ChatML ids with labels.

  ``max_len``: when the whole conversation is longer, trailing exchanges are dropped (never
  part of one, so image spans stay whole) and counted in ``dropped_turns``; when not even
  the first exchange fits, :class:`ChatTooLong` is raised. With ``add_generation_prompt``
  (inference) nothing is dropped: the prompt fits or :class:`ChatTooLong` is raised.
  ``add_generation_prompt`` appends ``<|im_start|>assistant\\n`` (labels ignored).
  """
  if label_mode not in LABEL_MODES:
    raise ValueError(f"label_mode {label_mode!r} not in {LABEL_MODES}")
  if not conversations:
    raise ValueError("empty conversation")
  nl = tok.encode("\n")
  role_ids = {r: tok.encode(r) for r in ROLES}

  def turn(role: str, text: str) -> _Block:
    content, paths = encode_content(tok, text, n_image_tokens, image_fill)
    return _turn(tok, role, content, paths, label_mode, role_ids[role], nl)

  head = [turn("system", system)]
  exchanges = [[turn(m["from"], m["value"]) for m in ex] for ex in _exchanges(conversations)]
  tail: list[_Block] = []
  if add_generation_prompt:
    prompt = [tok.im_start_id, *role_ids["assistant"], *nl]
    tail.append(_Block(prompt, [IGNORE_ID] * len(prompt), []))
  lengths = [sum(len(b.ids) for b in ex) for ex in exchanges]
  fixed = len(head[0].ids) + sum(len(b.ids) for b in tail)
  keep = len(exchanges)
  if max_len is not None:
    total = fixed + sum(lengths)
    if add_generation_prompt:
      if total > max_len:
        raise ChatTooLong("the prompt", total, max_len)
    else:
      while keep and fixed + sum(lengths[:keep]) > max_len:
        keep -= 1
      if keep == 0:
        raise ChatTooLong("the system turn and first exchange", fixed + lengths[0], max_len)
  blocks = head + [b for ex in exchanges[:keep] for b in ex] + tail
  return EncodedChat(
      ids=np.asarray([i for b in blocks for i in b.ids], np.int32),
      labels=np.asarray([i for b in blocks for i in b.labels], np.int32),
      image_paths=[p for b in blocks for p in b.paths],
      dropped_turns=len(exchanges) - keep)


def encode_prompt(tok: Tokenizer, question: str, *, n_image_tokens: int,
                  images: Sequence[str] = (), system: str = DEFAULT_SYSTEM,
                  max_len: int | None = None, image_fill: str = "pad") -> EncodedChat:
  """Inference prompt for one question: ``Picture i: <img>..</img>\\n`` for ``images`` (if
  given; a question may also carry its own spans), then the generation prompt."""
  value = image_prompt(images) + question
  return encode_chat(tok, [{"from": "user", "value": value}], n_image_tokens=n_image_tokens,
                     label_mode="assistant_only", max_len=max_len, system=system,
                     add_generation_prompt=True, image_fill=image_fill)
