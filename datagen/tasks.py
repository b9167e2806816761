"""Which questions an image gets: the turn plan shared by every text backend.

For each image a seeded generator picks (without repetition):
- VG: up to ``vg`` distinct labels; the answer must give every box of that label;
- ROC: up to ``roc`` objects; the answer is the object's label;
- RC: up to ``rc`` objects (preferring ones ROC did not use); the answer describes it;
- MIA: ``mia`` (0 or 1) whole-image analyses;
- a negative VG question, with probability ``negatives``, about a label the source annotates
  exhaustively for this image (its vocabulary) but that has no mask pixel in it (specks
  count as present): its answer says the structure is not present.
The turns are then shuffled. Backends only phrase the plan; the plan is the same whatever
the backend, so a backend that fails on an image can fall back to another one.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bird_jax.data.records import TASKS
from datagen.meta import ImageMeta
from datagen.sources.base import stable_seed


@dataclasses.dataclass(frozen=True)
class TaskCounts:
  vg: int = 2
  roc: int = 1
  rc: int = 1
  mia: int = 1
  negatives: float = 0.2  # probability of one negative (absent-structure) question

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
  for i in _pick(rng, len(labels), counts.vg):
    label = labels[i]
    idx = tuple(j for j, o in enumerate(meta.objects) if o.label == label)
    specs.append(TurnSpec("vg", label, idx))
  roc = _pick(rng, len(meta.objects), counts.roc)
  specs += [TurnSpec("roc", meta.objects[j].label, (j,)) for j in roc]
  rest = [j for j in range(len(meta.objects)) if j not in roc]
  rc = [rest[i] for i in _pick(rng, len(rest), counts.rc)]
  rc += [roc[i] for i in _pick(rng, len(roc), counts.rc - len(rc))]
  specs += [TurnSpec("rc", meta.objects[j].label, (j,)) for j in rc]
  specs += [TurnSpec("mia")] * counts.mia
  absent = [l for l in meta.vocabulary if l not in set(meta.present_labels)]
  if rng.random() < counts.negatives and absent:
    specs.append(TurnSpec("vg", absent[int(rng.integers(len(absent)))], (), negative=True))
  order = rng.permutation(len(specs))
  return [specs[i] for i in order]


def _pick(rng: np.random.Generator, n: int, k: int) -> list[int]:
  k = min(max(k, 0), n)
  return sorted(int(i) for i in rng.choice(n, size=k, replace=False)) if k else []
