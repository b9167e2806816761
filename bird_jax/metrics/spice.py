"""SPICE (BiRD's RC metric): the official jar when its Stanford CoreNLP 3.6.0 jars are present,
otherwise "SPICE unavailable" and a clearly labelled approximation that is never called SPICE.

The official path runs pycocoevalcap's ``spice-1.0.jar`` exactly as pycocoevalcap does (same
command line, one reference per sample, PTB-tokenized captions, mean of the per-sample "All" F).
It needs ``stanford-corenlp-3.6.0.jar`` and ``stanford-corenlp-3.6.0-models.jar`` in
``<pycocoevalcap>/spice/lib/`` (pycocoevalcap downloads them on first use from the
stanford-corenlp-full-2015-12-09 release; on an offline machine copy them there by hand).

``spice_approx`` is NOT SPICE: it parses no scene graph. It is the F1 between the sets of content
words (function words of METEOR's English list and punctuation removed) of candidate and
reference, a word matching when it is equal, has the same Snowball stem or shares a WordNet
synset (METEOR's resources) — roughly SPICE's object/attribute tuples with its synonym matching,
useful only to follow trends when the real metric cannot run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
import tempfile
from collections.abc import Sequence

import numpy as np

from bird_jax.metrics import meteor_data
from bird_jax.metrics.meteor import Resources

CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
APPROX_LABEL = "SPICE-approx (content-word F1, not SPICE)"


@dataclasses.dataclass(frozen=True)
class SpiceStatus:
  available: bool
  reason: str


def spice_status(java: str = "java") -> SpiceStatus:
  """Whether the official SPICE can run here, and why not."""
  try:
    spice_dir = meteor_data.pycocoevalcap_dir() / "spice"
  except RuntimeError as e:
    return SpiceStatus(False, f"SPICE unavailable: {e}")
  if shutil.which(java) is None:
    return SpiceStatus(False, f"SPICE unavailable: no Java runtime ({java!r} not on PATH)")
  missing = [j for j in CORENLP_JARS if not (spice_dir / "lib" / j).exists()]
  if missing:
    return SpiceStatus(False, "SPICE unavailable: Stanford CoreNLP 3.6.0 jars missing in "
                       f"{spice_dir / 'lib'} ({', '.join(missing)})")
  return SpiceStatus(True, "SPICE available")


def spice_java(refs: Sequence[str], hyps: Sequence[str], java: str = "java"
               ) -> tuple[float, list[float]]:
  """Official SPICE, as pycocoevalcap runs it, on tokenized captions."""
  status = spice_status(java)
  if not status.available:
    raise RuntimeError(status.reason)
  spice_dir = meteor_data.pycocoevalcap_dir() / "spice"
  data = [{"image_id": i, "test": h, "refs": [r]} for i, (r, h) in enumerate(zip(refs, hyps))]
  with tempfile.TemporaryDirectory() as tmp:
    in_file, out_file = f"{tmp}/in.json", f"{tmp}/out.json"
    with open(in_file, "w") as f:
      json.dump(data, f, indent=2)
    cache = spice_dir / "cache"
    cache.mkdir(exist_ok=True)
    subprocess.check_call([java, "-jar", "-Xmx8G", "spice-1.0.jar", in_file, "-cache",
                           str(cache), "-out", out_file, "-subset", "-silent"], cwd=spice_dir)
    with open(out_file) as f:
      results = json.load(f)

  def as_float(v) -> float:
    try:
      return float(v)
    except (TypeError, ValueError):
      return math.nan

  by_id = {item["image_id"]: as_float(item["scores"]["All"]["f"]) for item in results}
  scores = [by_id[i] for i in range(len(data))]
  return float(np.mean(np.array(scores))), scores


def spice_approx(refs: Sequence[str], hyps: Sequence[str],
                 res: Resources | None = None) -> tuple[float, list[float]]:
  """Content-word F1 with stem/synonym matching (see module doc). NOT SPICE."""
  res = res or Resources()
  fw = res.function_words

  def content(text: str) -> list[str]:
    return sorted({w for w in text.lower().split() if w not in fw and any(c.isalnum() for c in w)})

  def matched(words: list[str], others: list[str]) -> int:
    keys = {res.stem(w) for w in others}
    syn = set().union(*(res.synsets(w) for w in others)) if others else set()
    return sum(1 for w in words if w in others or res.stem(w) in keys
               or not res.synsets(w).isdisjoint(syn))

  scores = []
  for r, h in zip(refs, hyps):
    cr, ch = content(r), content(h)
    if not cr or not ch:
      scores.append(0.0)
      continue
    p = matched(ch, cr) / len(ch)
    rc = matched(cr, ch) / len(cr)
    scores.append(0.0 if p + rc == 0 else 2 * p * rc / (p + rc))
  return (float(np.mean(scores)) if scores else math.nan), scores
