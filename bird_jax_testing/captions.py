"""Seeded synthetic Med-GRIT-like captions for metric tests and benchmarks.

Captions mix the things BiRD's references and model responses contain (box and ref tags,
coordinates, organ names, numbers with units, abbreviations, hyphenated and slashed terms,
parentheses, quotes, contractions, a little Unicode) so that tokenizer and metric parity is
exercised on varied text. Candidates are references with random edits (drops, swaps,
substitutions by synonyms and inflections, insertions), which gives METEOR's stem, synonym and
paraphrase stages something to match.
"""

from __future__ import annotations

import random

from bird_jax.vocabulary import MODALITIES

_ORGANS = [
  "liver", "left kidney", "right kidney", "spleen", "pancreas", "gallbladder", "stomach",
  "aorta", "bladder", "prostate", "uterus", "heart", "lungs", "brain", "cerebellum",
  "brainstem", "optic disc", "macula", "polyp", "lesion", "nodule", "tumour", "tumor", "mass",
  "cyst", "vessel", "esophagus", "duodenum", "colon", "rectum", "femur", "vertebra", "skin",
  "melanoma", "nevus", "thyroid gland", "adrenal gland", "lymph node", "breast", "fetus"]
_ADJ = [
  "small", "large", "irregular", "round", "oval", "bright", "dark", "hyperintense",
  "hypointense", "enhancing", "heterogeneous", "homogeneous", "well-defined", "ill-defined",
  "T2-weighted", "contrast-enhanced", "non-specific", "benign", "malignant", "pigmented",
  "calcified", "cystic", "solid", "inflamed", "abnormal", "normal", "enlarged", "swollen"]
_VERBS = [
  "shows", "showed", "showing", "reveals", "revealed", "demonstrates", "indicates", "suggests",
  "contains", "is located in", "is situated in", "lies within", "appears in", "is seen in",
  "is visible in", "can be seen at", "occupies", "surrounds", "compresses", "affects"]
_PLACES = [
  "the upper left", "the lower right", "the centre", "the center", "the middle", "the top",
  "the bottom", "the left side", "the right side", "the posterior part", "the anterior part"]
_EXTRAS = [
  "(approx. 3.5cm)", "[see fig. 2]", "{n=12}", "e.g. the cortex", "i.e. near the hilum",
  "etc.", "vs. normal tissue", "about 50% of it", "~2 mm", "5mm x 3mm", "3 x 4 cm", "1/2",
  "1,000 cells", "0.5 mL", "37.5", "T1/T2", "x-ray", "CT-scan", "MR imaging", "U.S. standard",
  "Dr. Smith's note", "patients' records", "it's", "isn't", "can't", "won't", "don't",
  "they're", "we've", "I'd", "you'll", "\"clear\"", "'mild'", "-- notably --", "...", "?", "!",
  "; however,", ": namely", "45°", "2×3", "±0.3", "µm", "café-au-lait", "naïve", "No. 5",
  "p < 0.05", "a/b", "e-mail", "3-4", "5:30", "10-20%", "#3", "$5", "@site", "&", "&amp;",
  "co-operate", "re-do", "anti-inflammatory", "pro-active", "well-known", "cannot", "gonna",
  "colour", "Fig. 3", "approx.", "mm.", "cm.", "at 3 o'clock", "(i)", "(ii)", "a)", "1)",
  "<ref>", "</ref>", "non-U.S.", "Ph.D.", "St. Mary", "Inc.", "Jan. 5", "etc. The"]
_SYNONYMS = {
  "shows": ["displays", "demonstrates", "reveals", "show"], "large": ["big", "huge", "larger"],
  "small": ["little", "tiny", "smaller"], "lesion": ["lesions", "abnormality", "injury"],
  "tumor": ["tumors", "neoplasm", "growth"], "mass": ["masses", "lump"],
  "irregular": ["irregularly", "uneven"], "located": ["situated", "placed", "locating"],
  "centre": ["center", "middle"], "bright": ["brighter", "luminous"],
  "indicates": ["indicate", "suggests", "signals"], "dark": ["darker", "dim"],
  "abnormal": ["unusual", "atypical"], "round": ["circular", "rounded"],
  "enlarged": ["enlarging", "expanded"], "contains": ["includes", "holds", "contain"]}


def _box(rng: random.Random) -> str:
  x1, y1 = rng.randint(0, 900), rng.randint(0, 900)
  x2, y2 = x1 + rng.randint(1, 99), y1 + rng.randint(1, 99)
  return f"<box>({x1},{y1}),({x2},{y2})</box>"


def reference(rng: random.Random) -> str:
  """One reference-like caption."""
  organ = rng.choice(_ORGANS)
  parts = []
  if rng.random() < 0.6:
    parts.append(f"The <ref>{organ}</ref>{_box(rng)}")
  else:
    parts.append(f"A {rng.choice(_ADJ)} {organ}")
  parts.append(rng.choice(_VERBS))
  parts.append(rng.choice(_PLACES) if rng.random() < 0.5 else
               f"a {rng.choice(_ADJ)} {rng.choice(_ORGANS)}")
  for _ in range(rng.randint(0, 3)):
    parts.append(rng.choice(_EXTRAS))
  if rng.random() < 0.3:
    parts.append(f"and {rng.choice(_ADJ)} {rng.choice(_ORGANS)} {_box(rng)}")
  text = " ".join(parts)
  return text + rng.choice([".", ".", ".", "", " .", "!", "?", ". It is " + rng.choice(_ADJ) + "."])


def candidate(ref: str, rng: random.Random) -> str:
  """A noisy prediction for ``ref``: dropped, swapped, substituted and inserted words."""
  words = ref.split(" ")
  out = []
  for w in words:
    r = rng.random()
    if r < 0.08:
      continue
    if r < 0.25 and w.lower() in _SYNONYMS:
      w = rng.choice(_SYNONYMS[w.lower()])
    elif r < 0.3:
      w = rng.choice(_ADJ + _ORGANS)
    out.append(w)
    if rng.random() < 0.05:
      out.append(rng.choice(_EXTRAS))
  if len(out) > 3 and rng.random() < 0.3:
    i = rng.randrange(len(out) - 1)
    out[i], out[i + 1] = out[i + 1], out[i]
  if rng.random() < 0.03:
    return ""
  return " ".join(out)


def corpus(n: int, seed: int = 0) -> tuple[list[str], list[str], list[str]]:
  """``n`` samples: (image names with modality prefixes, references, candidates)."""
  rng = random.Random(seed)
  images, refs, cands = [], [], []
  for i in range(n):
    m = MODALITIES[rng.randrange(len(MODALITIES))]
    ref = reference(rng)
    images.append(f"{m}_{i:06d}.png")
    refs.append(ref)
    cands.append(candidate(ref, rng))
  return images, refs, cands
