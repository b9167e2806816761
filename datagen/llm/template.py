"""The offline backend (default): varied phrasings filled from meta, deterministic per image.

Phrasings are drawn with a generator seeded by ``(seed, image id)``, so an image gets the
same text whatever worker or chunk writes it. Every box goes through
:func:`bird_jax.boxes.box_span` / :func:`bird_jax.boxes.ref_span`; a VG answer names its
label inside ``<ref></ref>`` followed by all boxes of that label. With ``concise`` answers a
VG answer is only that grounded phrase (``<ref>label</ref><box>..</box>..``, BiRD's answer
format without the surrounding sentence; fewer tokens to train on), its boxes ordered left to
right, and an MIA answer lists every structure that way (a grounded listing, structures ordered
by their leftmost box).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from bird_jax.boxes import box_span, ref_span
from bird_jax.vocabulary import REF, REF_END
from datagen import language as lang
from datagen.llm.base import QA, Generation, Item
from datagen.meta import ImageMeta
from datagen.sources.base import stable_seed
from datagen.tasks import TurnSpec

VERSION = "template-1"

VG_Q = (
    "Where is the {label} in this image?",
    "Can you tell me where the {label} is located in the image?",
    "Please locate the {label}.",
    "Find the {label} in this {M} image.",
    "Where can the {label} be found?",
    "Show me the location of the {label}.",
    "Could you point out the {label} in the image?",
    "What are the coordinates of the {label}?",
)
VG_A1 = (
    "The {R} is located at the coordinates {B}.",
    "{RS}",
    "The {R} can be found at {B}, in the {pos} of the image.",
    "The {RS} is in the {pos} of the image.",
    "You can see the {R} at {B}.",
    "The {R} is situated at {B}.",
)
VG_AN = (
    "The {R} appears {n} times in the image, at {B}.",
    "{RS}",
    "There are {n} instances of the {R}, at {B}.",
    "The {R} is located at the coordinates {B}.",
)
NEG_A = (
    "There is no {label} in this image.",
    "The {label} is not present in this image.",
    "No {label} can be seen in this image.",
    "This image does not contain the {label}.",
)
ROC_Q = (
    "What is the object at {B}?",
    "What structure is located at {B}?",
    "Can you identify the object in the region {B}?",
    "What is shown in the area {B}?",
    "What does the region {B} contain?",
    "Classify the object at {B}.",
    "Which structure can be seen at {B}?",
    "Name the object at {B}.",
)
RC_Q = (
    "Can you tell me more about the structure at {B}?",
    "Describe the region {B}.",
    "Please give a short description of the object at {B}.",
    "What can you say about the area at {B}?",
    "Provide details about the structure located at {B}.",
    "Explain what is seen at {B}.",
)
RC_ID1 = ("This is the {label}.", "The region shows the {label}.", "It is the {label}.")
RC_IDN = ("This is one of the {n} {plural} in the image.",
          "The region shows one of {n} {plural}.")
RC_POS = ("It is located in the {pos} of the image.", "It lies in the {pos} of the image.")
RC_LOOK = ("It appears as {note}.", "It looks like {note}.")
RC_SIZE = ("It is {size}, covering about {pct} of the image.",
           "Its area is about {pct} of the image.")
MIA_Q = (
    "Can you provide a general interpretation of this image?",
    "Please analyse this medical image.",
    "What does this image show?",
    "Give a brief report of the findings in this image.",
    "Describe this image in detail.",
    "What are the main findings in this {M} image?",
)
MIA_INTRO = ("This is {a} {M} image{of}{view}.", "The image is {a} {M} scan{of}{view}.")
MIA_FIND = ("It shows {list}.", "Visible structures include {list}.",
            "The annotated structures are {list}.")
MIA_WHERE = ("{What} {is} seen in the {pos}.", "{What} {is} located in the {pos}.")


def _region(meta: ImageMeta) -> tuple[str, str]:
  of = f" of the {meta.region}" if meta.region else ""
  view = f" ({meta.orientation} view)" if meta.orientation else ""
  return of, view


MAX_LISTED = 8  # labels named in captions and analyses (the largest first)


def main_labels(meta: ImageMeta) -> tuple[list[str], int]:
  """Up to MAX_LISTED labels (largest total area first, ties in meta order), and how many
  more there are."""
  area: Counter = Counter()
  for o in meta.objects:
    area[o.label] += o.area
  labels = meta.labels
  if len(labels) <= MAX_LISTED:
    return labels, 0
  top = sorted(labels, key=lambda l: (-area[l], labels.index(l)))[:MAX_LISTED]
  return [l for l in labels if l in top], len(labels) - MAX_LISTED


def count_list(meta: ImageMeta) -> list[str]:
  counts = Counter(o.label for o in meta.objects)
  labels, more = main_labels(meta)
  out = [lang.count_phrase(label, counts[label]) for label in labels]
  if more:
    out.append(f"{lang.number(more)} other annotated structure" + ("s" if more > 1 else ""))
  return out


def caption(meta: ImageMeta) -> str:
  """The global caption from meta (one fixed phrasing)."""
  m = lang.modality_name(meta.modality)
  of, view = _region(meta)
  return lang.capitalise(f"{lang.article(m)} {m} image{of}{view} showing "
                         f"{lang.join(count_list(meta))}.")


ANSWER_STYLES = ("varied", "concise")


class Phraser:
  """Phrases the turns of one image with its own seeded generator."""

  def __init__(self, meta: ImageMeta, seed: int, concise: bool = False):
    self.meta, self.concise = meta, concise
    self.rng = np.random.default_rng(stable_seed(seed, "phrase", meta.id))
    self.m = lang.modality_name(meta.modality)

  def pick(self, options: Sequence[str]) -> str:
    return options[int(self.rng.integers(len(options)))]

  def qa(self, spec: TurnSpec) -> QA:
    return {"vg": self.vg, "roc": self.roc, "rc": self.rc, "mia": self.mia}[spec.task](spec)

  def vg(self, spec: TurnSpec) -> QA:
    q = self.pick(VG_Q).format(label=spec.label, M=self.m)
    if spec.negative:
      return QA("vg", q, self.pick(NEG_A).format(label=spec.label), negative=True)
    boxes = [self.meta.objects[j].box for j in spec.objects]
    if self.concise:  # instances left to right (then top to bottom): one answer per image
      return QA("vg", q, ref_span(spec.label, sorted(boxes, key=_left_to_right)))
    spans = [box_span(b) for b in boxes]
    ref = REF + spec.label + REF_END
    template = self.pick(VG_A1 if len(boxes) == 1 else VG_AN)
    a = template.format(R=ref, B=lang.join(spans), RS=ref_span(spec.label, boxes),
                        pos=lang.position(boxes[0]), n=lang.number(len(boxes)))
    return QA("vg", q, a)

  def roc(self, spec: TurnSpec) -> QA:
    b = box_span(self.meta.objects[spec.objects[0]].box)
    return QA("roc", self.pick(ROC_Q).format(B=b), lang.capitalise(spec.label) + ".")

  def rc(self, spec: TurnSpec) -> QA:
    obj = self.meta.objects[spec.objects[0]]
    q = self.pick(RC_Q).format(B=box_span(obj.box))
    n = sum(o.label == obj.label for o in self.meta.objects)
    parts = [self.pick(RC_ID1).format(label=obj.label) if n == 1 else
             self.pick(RC_IDN).format(n=lang.number(n), plural=lang.plural(obj.label)),
             self.pick(RC_POS).format(pos=lang.position(obj.box))]
    note = self.meta.notes.get(obj.label)
    if note:
      parts.append(self.pick(RC_LOOK).format(note=note))
    parts.append(self.pick(RC_SIZE).format(size=lang.size_word(obj.area),
                                           pct=lang.percent(obj.area)))
    parts += self._relations(obj)
    return QA("rc", q, " ".join(parts))

  def _relations(self, obj) -> list[str]:
    inside, contains = [], []
    for o in self.meta.objects:
      if o.label == obj.label:
        continue
      if _within(obj.box, o.box) and o.label not in inside:
        inside.append(o.label)
      elif _within(o.box, obj.box) and o.label not in contains:
        contains.append(o.label)
    out = []
    if inside:
      out.append(f"It lies within the {lang.join(inside)}.")
    if contains:
      out.append(f"It contains the {lang.join(contains)}.")
    return out

  def mia(self, spec: TurnSpec) -> QA:
    meta = self.meta
    if self.concise:
      spans = sorted((sorted(meta.boxes_of(label), key=_left_to_right), label)
                     for label in main_labels(meta)[0])
      return QA("mia", self.pick(MIA_Q).format(M=self.m),
                "".join(ref_span(label, boxes) for boxes, label in spans))
    of, view = _region(meta)
    parts = [self.pick(MIA_INTRO).format(a=lang.article(self.m), M=self.m, of=of, view=view),
             self.pick(MIA_FIND).format(list=lang.join(count_list(meta)))]
    counts = Counter(o.label for o in meta.objects)
    for label in main_labels(meta)[0][:6]:
      where = list(dict.fromkeys(lang.position(b) for b in meta.boxes_of(label)))
      what = lang.capitalise(lang.count_phrase(label, counts[label]))
      parts.append(self.pick(MIA_WHERE).format(What=what, pos=lang.join(where),
                                               **{"is": "is" if counts[label] == 1 else "are"}))
    return QA("mia", self.pick(MIA_Q).format(M=self.m), " ".join(parts))


def _left_to_right(box) -> tuple:
  return box[0], box[1]


def _within(inner, outer) -> bool:
  return (outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2]
          and inner[3] <= outer[3] and inner != outer)


def template_generation(meta: ImageMeta, specs: Sequence[TurnSpec], seed: int,
                        backend: str = "template", model: str = "",
                        prompt_version: str = VERSION, concise: bool = False) -> Generation:
  ph = Phraser(meta, seed, concise)
  return Generation(caption(meta), tuple(ph.qa(s) for s in specs), backend, model,
                    prompt_version)


class TemplateBackend:
  name = "template"
  model = ""
  prompt_version = VERSION

  def __init__(self, seed: int = 0, answer_style: str = "varied"):
    if answer_style not in ANSWER_STYLES:
      raise ValueError(f"answer style {answer_style!r} is not one of {ANSWER_STYLES}")
    self.seed, self.concise = seed, answer_style == "concise"
    self._stats: Counter = Counter()

  def generate_many(self, items: Sequence[Item]) -> list[Generation]:
    self._stats["images"] += len(items)
    return [template_generation(meta, specs, self.seed, concise=self.concise)
            for meta, specs in items]

  def take_stats(self) -> Counter:
    out, self._stats = self._stats, Counter()
    return out
