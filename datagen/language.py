"""Words for meta: modality names, positions, sizes, counts, plurals, lists."""

from __future__ import annotations

from collections.abc import Sequence

MODALITY_NAMES = {"ct": "CT", "mr": "MRI", "x": "X-ray", "pet": "PET",
                  "endoscopy": "endoscopy", "dermoscopy": "dermoscopy", "fundus": "fundus",
                  "ultrasound": "ultrasound"}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten", "eleven", "twelve")


def modality_name(key: str) -> str:
  return MODALITY_NAMES.get(key, key)


def article(phrase: str) -> str:
  """'a' or 'an' for ``phrase``: by its first letter, or by how an acronym is spelled out."""
  word = phrase.split(" ", 1)[0].split("-", 1)[0]
  if len(word) > 1 and word.isupper() or len(word) == 1:
    return "an" if word[:1].upper() in "AEFHILMNORSX" else "a"
  low = phrase.lower()
  if low.startswith(("uni", "use", "usu", "ure", "uri", "uro", "eu", "one")):
    return "a"
  return "an" if low[:1] in "aeiou" else "a"


def number(n: int) -> str:
  return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def plural(label: str) -> str:
  """English plural of a label's last word; labels with punctuation keep their form."""
  if any(c in label for c in ",()/"):
    return f"instances of {label}"
  head, _, last = label.rpartition(" ")
  low = last.lower()
  if low.endswith("us") and len(low) > 4:
    last = last[:-2] + "i"
  elif low.endswith("y") and low[-2:-1] not in ("a", "e", "i", "o", "u", ""):
    last = last[:-1] + "ies"
  elif low.endswith("is") and len(low) > 4:
    last = last[:-2] + "es"
  elif low.endswith(("s", "x", "ch", "sh")):
    last = last + "es"
  else:
    last = last + "s"
  return f"{head} {last}" if head else last


def count_phrase(label: str, n: int) -> str:
  """'the liver' / 'two kidneys'."""
  return f"the {label}" if n == 1 else f"{number(n)} {plural(label)}"


def join(items: Sequence[str], conj: str = "and") -> str:
  items = list(items)
  if len(items) <= 1:
    return "".join(items)
  if len(items) == 2:
    return f"{items[0]} {conj} {items[1]}"
  return ", ".join(items[:-1]) + f" {conj} " + items[-1]


def position(box: Sequence[float]) -> str:
  """Where a box's centre lies on a 3x3 grid: 'upper left part', 'centre', 'right part'..."""
  cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
  v = "upper" if cy < 1 / 3 else "lower" if cy > 2 / 3 else ""
  h = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else ""
  if not v and not h:
    return "centre"
  if v and h:
    return f"{v} {h} part"
  return f"{v or h} part" if h else f"{v} central part"


def size_word(area: float) -> str:
  """Size class of an object from its area fraction."""
  if area < 0.01:
    return "small"
  return "medium-sized" if area < 0.08 else "large"


def percent(area: float) -> str:
  p = 100 * area
  return f"{p:.1f}%" if p < 10 else f"{p:.0f}%"


def capitalise(text: str) -> str:
  return text[:1].upper() + text[1:]
