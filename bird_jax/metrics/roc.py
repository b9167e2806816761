"""ROC (referring object classification) recall, BiRD's lowercase substring rule.

A sample is correct iff every token of the lowercased annotation, split on single spaces,
is a substring of the lowercased response ("kidney" matches "kidneys"; punctuation stuck to
a token must appear too; tags are not stripped). An empty annotation is always correct.
Per modality: correct / total. BiRD's script averages the 8 modalities (empty -> 0); the
paper's ROC average is the mean over the 6 modalities that have ROC data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from bird_jax.metrics.modality import group_by_modality, mean_over, mean_present
from bird_jax.vocabulary import MODALITIES, ROC_PAPER_MODALITIES


def roc_correct(annotation: str, response: str) -> bool:
  """BiRD's per-sample rule: every space-separated annotation token occurs in the response."""
  response = response.lower()
  return all(token in response for token in annotation.lower().split(" "))


@dataclasses.dataclass(frozen=True)
class RocResult:
  """Per-modality ROC recall (fractions in [0, 1]) and both averages.

  recall[m] is None for a modality without samples. ``mean_script`` is BiRD's script
  (8 modalities, empty -> 0); ``mean_paper`` is the paper's 6-modality mean (ct, mr, x,
  endoscopy, dermoscopy, ultrasound; empty -> 0). ``micro`` is correct/total over all
  samples with a known modality; ``unknown`` counts samples whose modality is not one of the 8.
  """
  recall: dict[str, float | None]
  correct: dict[str, int]
  total: dict[str, int]
  mean_script: float
  mean_paper: float
  mean_present: float
  micro: float
  unknown: int


def roc_recall(images: Sequence[str], annotations: Sequence[str],
               responses: Sequence[str]) -> RocResult:
  """Score ROC predictions per modality."""
  if not len(images) == len(annotations) == len(responses):
    raise ValueError(
      f"roc_recall: images ({len(images)}), annotations ({len(annotations)}) and responses "
      f"({len(responses)}) must have the same length")
  groups = group_by_modality(images)
  recall: dict[str, float | None] = {}
  correct: dict[str, int] = {}
  total: dict[str, int] = {}
  for m in MODALITIES:
    idx = groups.indices[m]
    correct[m] = sum(roc_correct(annotations[i], responses[i]) for i in idx)
    total[m] = len(idx)
    recall[m] = correct[m] / total[m] if idx else None
  n = sum(total.values())
  return RocResult(
    recall=recall, correct=correct, total=total,
    mean_script=mean_over(recall), mean_paper=mean_over(recall, ROC_PAPER_MODALITIES),
    mean_present=mean_present(recall), micro=sum(correct.values()) / n if n else 0.0,
    unknown=len(groups.unknown))
