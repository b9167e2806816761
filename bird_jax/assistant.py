"""Answering a conversation about images with a loaded model: what the terminal chat
(``python -m bird_jax.chat``) and the server (``python -m bird_jax.serve``) share.

A conversation is a list of :class:`Message` (system, user or assistant text; a user message
may carry images). It is rendered in Qwen-VL-Chat's format (bird_jax/chatml.py): the system turn,
every turn in order, the images of a user message in front of its text as
``Picture k: <img>image k</img>\\n`` (k counts over the conversation), then the generation
prompt. Message text is encoded as chat does (only the image, ref, box and quad tags are
special ids; ``<|im_end|>`` and the like stay plain text). ``<img>``, ``</img>`` and
``<imgpad>`` are refused in text (images travel as pixels, never as paths), and every box in a
user's text (``<box>(x1,y1),(x2,y2)</box>`` or a bare ``(x1,y1),(x2,y2)``, 0..1000 grid) is
read with bird_jax/boxes.py and rewritten in the one canonical form.

Decoding: BiRD's evaluation settings by default (greedy, min_new_tokens 1, max_new_tokens 80),
ending at ``<|endoftext|>``, ``<|im_end|>`` or ``<|im_start|>`` as Qwen-VL-Chat does;
temperature > 0 samples (top_p: nucleus). Every call is padded to the generator's batch_size
rows and ``max_images`` image slots, so each prompt bucket compiles once (once more when
sampling) and no request recompiles.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from bird_jax.boxes import TextBox, box_span, parse_boxes
from bird_jax.chatml import DEFAULT_SYSTEM, ROLES, ChatTooLong, encode_chat, image_prompt
from bird_jax import exit_codes
from bird_jax.data.image import ImageDecodeError, ImageTooLarge, decode, resize
from bird_jax.generate import GenerationConfig, Generator, default_buckets
from bird_jax.vocabulary import IMG, IMG_END, IMGPAD

DEFAULT_CKPT = "runs/demo/train"  # where `python -m bird_jax_demo` leaves its trained model
DEFAULT_MAX_PIXELS = 4096 * 4096  # an image's width x height
DEFAULT_MAX_NEW_TOKENS = 80  # the longest answer: BiRD's evaluation setting
_PATH_TAGS = (IMG, IMG_END, IMGPAD)


class Refused(ValueError):
  """A conversation that cannot be answered; the message says why, `code` names the case."""

  def __init__(self, message: str, code: str = "invalid_request"):
    super().__init__(message)
    self.code = code


class NoModel(FileNotFoundError):
  """No checkpoint was given and the default one does not exist (yet)."""

  exit_code = exit_codes.BAD_INPUT  # the tools refuse it in one line


def resolve_checkpoint(ckpt: str | None) -> Path:
  """The checkpoint to load: `ckpt`, else the demo's trained model (DEFAULT_CKPT)."""
  if ckpt:
    if not Path(ckpt).exists():
      raise NoModel(f"--ckpt {ckpt}: no such file or folder")
    return Path(ckpt)
  if not (Path(DEFAULT_CKPT) / "checkpoints").is_dir():
    raise NoModel(f"no --ckpt given and no demo model at {DEFAULT_CKPT} (under the current "
                  "folder): train it with `python -m bird_jax_demo` (about 11 minutes on 2 CPU "
                  "cores), or pass --ckpt with a training workdir, an Orbax checkpoint or an HF "
                  "Qwen-VL folder")
  return Path(DEFAULT_CKPT)


@dataclasses.dataclass(frozen=True)
class Message:
  role: str  # one of ROLES
  text: str
  images: tuple[np.ndarray, ...] = ()  # uint8 [S, S, 3] each (user messages only)


@dataclasses.dataclass(frozen=True)
class Prompt:
  ids: list[int]
  pixels: np.ndarray  # uint8 [max_images, S, S, 3]; unused slots are zeros
  max_new_tokens: int  # the answer is cut here (the program always decodes the generator's)


@dataclasses.dataclass(frozen=True)
class Answer:
  text: str  # without the stop token
  finish_reason: str  # "stop" (a stop token) or "length" (max_new_tokens reached)
  prompt_tokens: int
  completion_tokens: int

  @property
  def boxes(self) -> tuple[TextBox, ...]:
    return parse_boxes(self.text).boxes


def canonical_boxes(text: str) -> str:
  """`text` with every box rewritten as ``<box>(x1,y1),(x2,y2)</box>``; Refused for a box that
  cannot be read or is not a region of the 0..1000 grid."""
  parsed = parse_boxes(text)
  for issue in parsed.issues:
    if issue.kind in ("unparseable_box", "unclosed_box"):
      raise Refused(f"cannot read the box {issue.text!r}: write <box>(x1,y1),(x2,y2)</box> or "
                    "(x1,y1),(x2,y2) with x and y on the 0..1000 grid", "invalid_box")
  spans: dict[tuple[int, int], list[TextBox]] = {}
  for b in parsed.boxes:
    spans.setdefault((b.start, b.end), []).append(b)
  out, pos = [], 0
  for (start, end), group in sorted(spans.items()):
    if not all(b.valid for b in group):
      raise Refused(f"the box {text[start:end]!r} is not a region of the 0..1000 grid "
                    "(0 <= x1 < x2 <= 1000 and 0 <= y1 < y2 <= 1000)", "invalid_box")
    out += [text[pos:start], "".join(box_span(b.normalised) for b in group)]
    pos = end
  return "".join(out) + text[pos:]


def _check_text(text: str, where: str) -> None:
  found = [t for t in _PATH_TAGS if t in text]
  if found:
    raise Refused(f"{where}: the text holds {', '.join(found)}; images are sent as images "
                  "(an image_url part, the chat's --image), never as tags in the text")


class Assistant:
  """A model, its tokenizer and a Generator, answering conversations.

  batch_size: rows of every generation call (the server batches concurrent requests up to it);
  max_new_tokens: the decoding length of the compiled program and the most an answer may have;
  max_images: image slots per conversation; max_image_pixels: the largest image accepted.
  """

  def __init__(self, model, tok, cfg, *, name: str = "bird_jax", batch_size: int = 1,
               max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, max_images: int = 1,
               max_image_pixels: int = DEFAULT_MAX_PIXELS):
    if max_images < 1:
      raise ValueError(f"max_images must be >= 1, got {max_images}")
    self.tok, self.cfg, self.name = tok, cfg, name
    self.max_images, self.max_image_pixels = max_images, max_image_pixels
    self.gen = Generator(model, GenerationConfig.chat(tok, max_new_tokens), batch_size=batch_size,
                         buckets=default_buckets(cfg.llm.seq_length - max_new_tokens))

  @classmethod
  def load(cls, path: str | Path, *, dtype: str | None = None, **kw) -> "Assistant":
    """From an HF Qwen-VL folder, an Orbax checkpoint or a training workdir (load_pretrained)."""
    from bird_jax.pretrained import load_pretrained

    model, tok, cfg = load_pretrained(path, dtype=dtype, progress=True)
    return cls(model, tok, cfg, name=kw.pop("name", None) or Path(path).resolve().name, **kw)

  @property
  def max_new_tokens(self) -> int:
    return self.gen.cfg.max_new_tokens

  @property
  def max_prompt_tokens(self) -> int:
    return self.gen.buckets[-1]

  def read_image(self, data: bytes, name: str = "image") -> Image.Image:
    """Encoded bytes -> RGB image; Refused when it does not decode or is too large."""
    try:
      return decode(data, name, self.max_image_pixels)
    except ImageTooLarge as e:
      raise Refused(str(e), "image_too_large") from None
    except ImageDecodeError as e:
      raise Refused(str(e), "invalid_image") from None

  def pixels(self, image: Image.Image) -> np.ndarray:
    """The model's input for an image: uint8 [S, S, 3] (Qwen-VL's resize)."""
    return resize(image, self.cfg.vision.image_size)

  def prompt(self, messages: Sequence[Message], max_new_tokens: int | None = None) -> Prompt:
    """The prompt of a conversation that ends with a user message; Refused says what is wrong."""
    n_new = self.max_new_tokens if max_new_tokens is None else max_new_tokens
    if not 1 <= n_new <= self.max_new_tokens:
      raise Refused(f"max_tokens {n_new} is outside 1..{self.max_new_tokens} (this model's "
                    "limit, --max-new-tokens)", "too_many_tokens")
    system, conv, images = DEFAULT_SYSTEM, [], []
    for i, m in enumerate(messages):
      where = f"message {i} ({m.role})"
      if m.role not in ROLES:
        raise Refused(f"{where}: the role must be one of {', '.join(ROLES)}")
      _check_text(m.text, where)
      if m.role == "system":
        if i:
          raise Refused(f"{where}: a system message may only come first")
        system = m.text
        continue
      if m.images and m.role != "user":
        raise Refused(f"{where}: only user messages may carry images")
      text = canonical_boxes(m.text) if m.role == "user" else m.text
      first = len(images) + 1
      prefix = image_prompt([f"image {k}" for k in range(first, first + len(m.images))], first)
      images += m.images
      conv.append({"from": m.role, "value": prefix + text})
    if not conv or conv[-1]["from"] != "user":
      raise Refused("the conversation must end with a user message")
    if len(images) > self.max_images:
      raise Refused(f"the conversation has {len(images)} images, more than the limit "
                    f"{self.max_images} (--max-images)", "too_many_images")
    try:
      enc = encode_chat(self.tok, conv, n_image_tokens=self.cfg.vision.n_queries,
                        label_mode="assistant_only", max_len=self.max_prompt_tokens,
                        system=system, add_generation_prompt=True)
    except ChatTooLong as e:
      raise Refused(f"the conversation needs {e.length} tokens, more than the {e.max_len} a "
                    "prompt may have with this model: start a new conversation",
                    "context_length_exceeded") from None
    except ValueError as e:
      raise Refused(str(e)) from None
    s = self.cfg.vision.image_size
    pixels = np.zeros((self.max_images, s, s, 3), np.uint8)
    for k, im in enumerate(images):
      if im.shape != (s, s, 3) or im.dtype != np.uint8:
        raise ValueError(f"image {k + 1}: expected uint8 [{s}, {s}, 3] (Assistant.pixels), "
                         f"got {im.dtype} {im.shape}")
      pixels[k] = im
    return Prompt(enc.ids.tolist(), pixels, n_new)

  def answer(self, prompts: Sequence[Prompt], *, temperature: float = 0.0, top_p: float = 1.0,
             seed: int = 0) -> list[Answer]:
    """One answer per prompt, generated in one batch (at most the generator's batch_size)."""
    cfg = dataclasses.replace(self.gen.cfg, temperature=temperature, top_p=top_p)
    outs = self.gen.generate([p.ids for p in prompts], np.stack([p.pixels for p in prompts]),
                             seed=seed, cfg=cfg)
    answers = []
    for p, out in zip(prompts, outs):
      ids = out.tolist()[:p.max_new_tokens]
      stopped = bool(ids) and ids[-1] in cfg.stop_ids
      text = self.tok.decode(ids[:-1] if stopped else ids)
      answers.append(Answer(text, "stop" if stopped else "length", len(p.ids), len(ids)))
    return answers
