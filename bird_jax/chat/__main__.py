"""Terminal chat about one image, in Qwen-VL-Chat's format with the history kept:

    python -m bird_jax.chat --image scan.png [--ckpt CKPT|HF_DIR] [--temperature 0.7 --top-p 0.8]

Each line typed is a question; `/reset` starts a new conversation about the same image, `/quit`
(or the end of the input) leaves. Refer to a region by typing its box on the 0..1000 grid,
`<box>(x1,y1),(x2,y2)</box>` or just `(x1,y1),(x2,y2)`. After every answer the image is saved
with the answer's boxes (red, its <ref> phrase written beside) and the question's (yellow); the
path is printed (images under 448 px are enlarged first). Without --ckpt the demo's trained
model (runs/demo/train) is used. Decoding is BiRD's evaluation setting (greedy, at most 80 new
tokens) unless --temperature is set. Exit codes: 0 left, 2 refused input (one line: a flag,
the image, the checkpoint), 4 the weights hold NaN/inf, 1 anything unexpected (with its
traceback).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bird_jax.cli import ToolParser, run_tool
from bird_jax.exit_codes import BadInput, refusing

PROG = "python -m bird_jax.chat"

MIN_SIDE = 448  # smaller images are enlarged (whole multiples) so that boxes and text can be read


def draw_answer(image, question: str, answer):
  """A copy of `image` with the boxes of `question` (yellow) and of `answer` (red, with the
  phrase of their <ref>)."""
  from PIL import Image, ImageDraw

  from bird_jax.boxes import SCALE, parse_boxes
  from bird_jax.draw import PREDICTED, QUESTION, draw_box

  k = -(-MIN_SIDE // min(image.size))
  im = image.resize((image.width * k, image.height * k), Image.NEAREST) if k > 1 else image.copy()
  draw = ImageDraw.Draw(im)
  width = max(2, round(min(im.size) / 160))
  for b in parse_boxes(question).boxes:
    draw_box(draw, b.coords, QUESTION, width, im.size)
  for b in answer.boxes:
    if draw_box(draw, b.coords, PREDICTED, width, im.size) and b.ref:
      x, y = b.coords[0] / SCALE * im.width, b.coords[1] / SCALE * im.height
      draw.text((x + width, max(0, y - 12 - width)), b.ref, fill=PREDICTED)
  return im


def main(argv: list[str] | None = None) -> None:
  from bird_jax.assistant import (DEFAULT_MAX_NEW_TOKENS, DEFAULT_MAX_PIXELS, Message, Refused,
                                  resolve_checkpoint)
  from bird_jax.chatml import DEFAULT_SYSTEM

  ap = ToolParser(prog=PROG, description=__doc__,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--image", required=True, help="the image to talk about")
  ap.add_argument("--ckpt", default="", help="a training workdir, Orbax checkpoint or HF Qwen-VL "
                  "folder (default: the demo's model, runs/demo/train)")
  ap.add_argument("--out", default="runs/chat", help="folder of the images with boxes drawn")
  ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (BiRD's eval)")
  ap.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (with --temperature)")
  ap.add_argument("--seed", type=int, default=0, help="sampling seed of the first answer")
  ap.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                  help=f"answer length limit (default {DEFAULT_MAX_NEW_TOKENS})")
  ap.add_argument("--system", default=DEFAULT_SYSTEM, help="the system message")
  ap.add_argument("--dtype", default="", help="compute dtype, e.g. bfloat16 (default: the model's)")
  ap.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_PIXELS)
  args = ap.parse_args(argv)
  if not args.temperature >= 0:
    raise BadInput(f"--temperature {args.temperature:g}: must be >= 0")
  if not 0 < args.top_p <= 1:
    raise BadInput(f"--top-p {args.top_p:g}: must be in (0, 1]")
  if args.max_new_tokens < 1:
    raise BadInput(f"--max-new-tokens {args.max_new_tokens}: must be >= 1")
  ckpt = resolve_checkpoint(args.ckpt)  # NoModel: exit 2
  with refusing(OSError, where="--image"):
    data = Path(args.image).read_bytes()
  print(f"loading {ckpt} ...", flush=True)
  from bird_jax.assistant import Assistant

  with refusing(OSError, ValueError, where=f"cannot load {ckpt}"):  # NaN/inf weights: exit 4
    bot = Assistant.load(ckpt, dtype=args.dtype or None, max_new_tokens=args.max_new_tokens,
                         max_image_pixels=args.max_image_pixels)
  with refusing(Refused, where="--image"):
    image = bot.read_image(data, args.image)
  pixels = bot.pixels(image)
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  print(f"model {bot.name}, image {args.image} ({image.width}x{image.height}). Ask a question; "
        "a box (x1,y1),(x2,y2) on the 0..1000 grid refers to a region; /reset starts over, "
        "/quit leaves.", flush=True)

  history: list[Message] = []
  turn = 0
  while True:
    try:
      line = input("you> ").strip()
    except (EOFError, KeyboardInterrupt):
      print()
      break
    if line in ("/quit", "/exit"):
      break
    if line == "/reset":
      history = []
      print("(new conversation)", flush=True)
      continue
    if not line:
      continue
    question = Message("user", line, () if history else (pixels,))
    try:
      prompt = bot.prompt([Message("system", args.system), *history, question])
    except Refused as e:
      print(f"refused: {e}", flush=True)
      continue
    answer = bot.answer([prompt], temperature=args.temperature, top_p=args.top_p,
                        seed=args.seed + turn)[0]
    turn += 1
    history += [question, Message("assistant", answer.text)]
    path = out / f"{Path(args.image).stem}_turn{turn:02d}.png"
    draw_answer(image, line, answer).save(path)
    print(f"bird> {answer.text}", flush=True)
    print(f"      ({len(answer.boxes)} box(es) drawn: {path})", flush=True)


if __name__ == "__main__":
  run_tool(PROG, main)
