"""Which questions an image gets: the turn plan shared by every text backend.

For each image a seeded generator picks (without repetition):
- VG: up to ``vg`` distinct labels; the answer must give every box of that label;
- ROC: up to ``roc`` objects; the answer is the object's label;
- RC: up to ``rc`` objects (preferring ones ROC did not use); the answer describes it;
- MIA: ``mia`` (0 or 1) whole-image analyses;
- a negative VG question, with probability ``negatives``, about a label the source annotates
  exhaustively for this image (its vocabulary) but that has no mask pixel in it (specks
  count as present): its answer says the structure is not present.
With ``disjoint``, the labels are first dealt alternately (in a seeded order, VG first) to VG
and to the referring turns, and ROC/RC pick objects of the referring labels only, so that no
turn's answer can be read off another turn of the same conversation (at the price of fewer
turns on images with few labels). The turns are then shuffled. Backends only phrase the
plan; the plan is the same whatever the backend, so a backend that fails on an image can fall
back to another one.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bird_jax.vocabulary import TASKS
from datagen.meta import ImageMeta
from datagen.sources.base import stable_seed


@dataclasses.dataclass(frozen=True)
class TaskCounts:
  vg: int = 2
  roc: int = 1
  rc: int = 1
  mia: int = 1
  negatives: float = 0.2  # probability of one negative (absent-structure) question
  disjoint: bool = False  # ROC/RC objects only from labels that no VG turn asks about

  def validate(self) -> "TaskCounts":
    for name in TASKS:
      if getattr(self, name) < 0:
        raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
    if self.mia > 1:
      raise ValueError(f"--mia must be 0 or 1, got {self.mia}")
    if not 0.0 <= self.negatives <= 1.0:
      raise ValueError(f"--negatives must be in [0, 1], got {self.negatives}")
    if not any(getattr(self, t) for t in TASKS):
      raise ValueError("every task count is 0: nothing to generate")
    return self


@dataclasses.dataclass(frozen=True)
class TurnSpec:
  task: str  # vg | roc | rc | mia
  label: str = ""  # vg: the label asked about; roc/rc: the object's label
  objects: tuple[int, ...] = ()  # indices into meta.objects (vg: every instance of label)
  negative: bool = False  # vg about an absent label (objects is empty)


def plan_turns(meta: ImageMeta, counts: TaskCounts, seed: int) -> list[TurnSpec]:
  rng = np.random.default_rng(stable_seed(seed, "turns", meta.id))
  labels = meta.labels
  specs: list[TurnSpec] = []
  if counts.disjoint:
    vg_labels, ref_labels = _deal(rng, len(labels), counts.vg, counts.roc + counts.rc)
    pool = [j for j, o in enumerate(meta.objects) if labels.index(o.label) in ref_labels]
  else:
    vg_labels, pool = _pick(rng, len(labels), counts.vg), list(range(len(meta.objects)))
  for i in vg_labels:
    label = labels[i]
    idx = tuple(j for j, o in enumerate(meta.objects) if o.label == label)
    specs.append(TurnSpec("vg", label, idx))
  roc = [pool[i] for i in _pick(rng, len(pool), counts.roc)]
  specs += [TurnSpec("roc", meta.objects[j].label, (j,)) for j in roc]
  rest = [j for j in pool if j not in roc]
  rc = [rest[i] for i in _pick(rng, len(rest), counts.rc)]
  if not counts.disjoint:  # an RC answer names its object's label: no reuse when disjoint
    rc += [roc[i] for i in _pick(rng, len(roc), counts.rc - len(rc))]
  specs += [TurnSpec("rc", meta.objects[j].label, (j,)) for j in rc]
  specs += [TurnSpec("mia")] * counts.mia
  absent = [l for l in meta.vocabulary if l not in set(meta.present_labels)]
  if rng.random() < counts.negatives and absent:
    specs.append(TurnSpec("vg", absent[int(rng.integers(len(absent)))], (), negative=True))
  order = rng.permutation(len(specs))
  return [specs[i] for i in order]


def _deal(rng: np.random.Generator, n: int, n_vg: int, n_ref: int) -> tuple[list[int], list[int]]:
  """Label indices 0..n-1 dealt alternately (seeded order, VG first) to VG (at most n_vg)
  and to the referring turns (at most n_ref); a side that is full leaves the rest to the other."""
  vg: list[int] = []
  ref: list[int] = []
  for i in (int(x) for x in rng.permutation(n)):
    if len(vg) < n_vg and (len(vg) <= len(ref) or len(ref) >= n_ref):
      vg.append(i)
    elif len(ref) < n_ref:
      ref.append(i)
  return sorted(vg), sorted(ref)


def _pick(rng: np.random.Generator, n: int, k: int) -> list[int]:
  k = min(max(k, 0), n)
  return sorted(int(i) for i in rng.choice(n, size=k, replace=False)) if k else []
