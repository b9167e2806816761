"""One task's predictions -> BiRD-compatible and corrected scores, via `bird_jax.metrics`.

Every response is post-processed with BiRD's rules first (`metrics.postprocess`); annotations
never are. Per task:

- VG: Recall@0.5 (`metrics.grounding`); corrected = IoU >= 0.5 with one-to-one matching,
  recall per modality without BiRD's 1e-8, mean over present modalities, micro over targets.
- ROC: recall (`metrics.roc`); BiRD's script mean (8 modalities) and the paper's 6-modality
  mean; corrected = mean over present modalities and the micro recall.
- RC: SPICE (`metrics.text`, official jar when available); when it is not, the cell holds
  nothing and the labelled approximation is reported separately, never as SPICE.
- MIA: mBMR = mean(BLEU-4, METEOR, ROUGE-L) (`metrics.text`).
Scores are fractions here (x100 in the tables). A modality without samples is None and counts
0 in BiRD's means. Nothing here raises on a bad response: empty text, garbage and absurd boxes
are scored (they miss).

Constant-answer baselines (the same scoring, computed from the test references): VG answers
the mean reference box for every sample, ROC the most frequent class.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from bird_jax.boxes import bird_extract_boxes
from bird_jax.evaluation.predictions import Prediction
from bird_jax.metrics import text as text_metrics
from bird_jax.metrics.grounding import vg_recall_from_text
from bird_jax.vocabulary import MODALITIES, ROC_PAPER_MODALITIES, modality_of
from bird_jax.metrics.postprocess import postprocess_response
from bird_jax.metrics.roc import roc_correct, roc_recall
from bird_jax.metrics.spice import APPROX_LABEL

METRIC_NAMES = {"vg": "Recall@0.5", "roc": "Recall", "rc": "SPICE", "mia": "mBMR"}


@dataclasses.dataclass(frozen=True)
class ScoringOptions:
  meteor: str = "python"  # "python" (ours) or "java" (the official jar)
  spice: str = "auto"  # "auto" (official jar when present, else the labelled approximation),
  #                      "java", "approx" or "none"
  workers: int = 1  # METEOR processes


@dataclasses.dataclass
class TaskScores:
  """Scores of one task (fractions). ``bird``/``corrected``: per modality, None = absent."""

  task: str
  metric: str
  bird: dict[str, float | None]
  bird_mean: float | None  # what BiRD's script prints (8 modalities, absent = 0)
  paper_mean: float | None  # the average the paper reports (ROC: its 6 modalities)
  corrected: dict[str, float | None]
  corrected_mean: float | None  # mean over the modalities that have samples
  corrected_micro: float | None  # over all samples (VG: over all target boxes)
  counts: dict[str, int]  # scored samples per modality
  total: int  # prediction lines
  unknown: int  # samples whose image prefix is not one of the 8 modalities
  details: dict[str, Any]  # task-specific figures (JSON-serialisable)
  sample_scores: list[str]  # one short verdict per sample (for the gallery)
  processed: list[str]  # post-processed responses, input order
  notes: list[str] = dataclasses.field(default_factory=list)
  baseline: dict[str, Any] | None = None
  unscorable: str | None = None  # why nothing of this task could be scored (None: scored)


def _none_if_absent(values: dict[str, float], counts: dict[str, int]) -> dict[str, float | None]:
  return {m: (values[m] if counts[m] else None) for m in MODALITIES}


def _float(v: Any) -> float | None:
  return None if v is None else float(v)


def score_vg(images: Sequence[str], annotations: Sequence[str], processed: Sequence[str]
             ) -> dict[str, Any]:
  r = vg_recall_from_text(images, annotations, processed)
  verdicts = [f"{h}/{t} boxes hit" if t else "no reference box (skipped)"
              for h, t in zip(r.sample_hits.tolist(), r.sample_targets.tolist())]
  return dict(
      bird=_none_if_absent(r.recall, r.samples), bird_mean=r.mean, paper_mean=r.mean,
      corrected=dict(r.strict_recall), corrected_mean=_float(r.strict_mean_present),
      corrected_micro=r.strict_micro, counts=dict(r.samples), unknown=r.unknown,
      details={"targets": r.targets, "hits": r.hits, "strict_hits": r.strict_hits,
               "skipped_no_reference_box": r.skipped,
               "strict_sample_mean": r.strict_sample_mean},
      sample_scores=verdicts)


def score_roc(images: Sequence[str], annotations: Sequence[str], processed: Sequence[str]
              ) -> dict[str, Any]:
  r = roc_recall(images, annotations, processed)
  verdicts = ["correct" if roc_correct(a, p) else "wrong" for a, p in zip(annotations, processed)]
  return dict(
      bird=dict(r.recall), bird_mean=r.mean_script, paper_mean=r.mean_paper,
      corrected=dict(r.recall), corrected_mean=_float(r.mean_present), corrected_micro=r.micro,
      counts=dict(r.total), unknown=r.unknown,
      details={"correct": r.correct, "mean_script_8_modalities": r.mean_script,
               "mean_paper_6_modalities": r.mean_paper,
               "paper_modalities": list(ROC_PAPER_MODALITIES)},
      sample_scores=verdicts)


def score_captions(task: str, images: Sequence[str], annotations: Sequence[str],
                   processed: Sequence[str], opts: ScoringOptions,
                   ids: Sequence[str] | None = None) -> dict[str, Any]:
  key = "SPICE" if task == "rc" else "mBMR"
  spice = opts.spice if task == "rc" else "none"
  r = text_metrics.caption_scores_by_modality(images, annotations, processed, meteor=opts.meteor,
                                              spice=spice, workers=opts.workers, ids=ids)
  per = {m: (None if s is None else s.as_dict()) for m, s in r.per_modality.items()}
  value = {m: (None if per[m] is None else per[m][key]) for m in MODALITIES}
  notes = []
  if task == "rc" and all(v is None for v in value.values()) and any(r.counts.values()):
    notes.append(f"{r.spice_status}; RC cells are empty. '{APPROX_LABEL}' is in the details "
                 "and is NOT SPICE.")
  present = [v for m, v in value.items() if r.counts[m] and v is not None]
  return dict(
      bird=value, bird_mean=r.mean[key], paper_mean=r.mean[key], corrected=value,
      corrected_mean=(sum(present) / len(present)) if present else None, corrected_micro=None,
      counts=dict(r.counts), unknown=r.unknown,
      details={"per_modality": per, "mean_8_modalities": r.mean,
               "mean_present_modalities": r.mean_present, "spice_status": r.spice_status},
      sample_scores=[""] * len(images), notes=notes)


def score_task(task: str, preds: Sequence[Prediction], opts: ScoringOptions = ScoringOptions(),
               baselines: bool = True) -> TaskScores:
  """Scores one task's predictions (BiRD's post-processing applied to every response)."""
  images = [p.image for p in preds]
  annotations = [p.annotation for p in preds]
  processed = [postprocess_response(p.response) for p in preds]
  if task == "vg":
    parts = score_vg(images, annotations, processed)
  elif task == "roc":
    parts = score_roc(images, annotations, processed)
  elif task in ("rc", "mia"):
    parts = score_captions(task, images, annotations, processed, opts, [p.id for p in preds])
  else:
    raise ValueError(f"unknown task {task!r}; tasks are vg, roc, rc, mia")
  notes = parts.pop("notes", [])
  unknown = parts["unknown"]
  if unknown:
    bad = sorted({p.image for p in preds if modality_of(p.image) is None})[:5]
    notes.append(f"{unknown} sample(s) have an image prefix that is not one of the 8 "
                 f"modalities (e.g. {bad}); BiRD's VG/ROC scripts crash on them and its RC/MIA "
                 "scripts drop them silently; they are left out of every modality here")
  empty = sum(not p for p in processed)
  if empty:
    notes.append(f"{empty} response(s) are empty after post-processing (scored as such)")
  out = TaskScores(task=task, metric=METRIC_NAMES[task], total=len(preds), processed=processed,
                   notes=notes, **parts)
  out.unscorable = why_unscorable(out, annotations)
  if out.unscorable:
    out.notes.insert(0, f"NOTHING SCORED: {out.unscorable}")
  if baselines and task in ("vg", "roc"):
    out.baseline = constant_baseline(task, images, annotations)
  return out


def why_unscorable(s: TaskScores, annotations: Sequence[str]) -> str | None:
  """Why a task's score means nothing (an empty file, the wrong task's file, references that
  cannot be parsed), or None when samples were scored."""
  if s.total == 0:
    return "the prediction file holds no samples"
  if s.unknown == s.total:
    return (f"none of the {s.total} samples has an image name starting with one of the 8 "
            "modality prefixes")
  if s.task == "vg" and not sum(s.details["targets"].values()):
    return (f"no reference answer of the {s.total} samples holds a box BiRD's parser reads: "
            "not a VG file (another task's file scored as vg?) or unparseable annotations")
  if s.task == "roc" and all(bird_extract_boxes(a, fallback=False) for a in annotations):
    return (f"every reference answer of the {s.total} samples is a box, not a class name: a VG "
            "file scored as roc?")
  if not any(s.counts.values()):
    return f"none of the {s.total} samples could be scored"
  return None


# ---- constant-answer baselines ------------------------------------------------------------

def constant_answer(task: str, annotations: Sequence[str]) -> str | None:
  """VG: the mean reference box as ``<box>(x1,y1),(x2,y2)</box>``; ROC: the most frequent
  (lower-cased) class. None when there is nothing to average."""
  if task == "vg":
    boxes = [b for a in annotations for b in bird_extract_boxes(a, fallback=False)
             if b is not None and all(np.isfinite(b))]
    if not boxes:
      return None
    x1, y1, x2, y2 = (int(round(v)) for v in np.mean(np.asarray(boxes, np.float64), axis=0))
    return f"<box>({x1},{y1}),({x2},{y2})</box>"
  if task == "roc":
    counts = collections.Counter(a.strip().lower() for a in annotations)
    return counts.most_common(1)[0][0] if counts else None
  raise ValueError(f"no constant baseline for task {task!r}")


def constant_baseline(task: str, images: Sequence[str], annotations: Sequence[str]
                      ) -> dict[str, Any] | None:
  answer = constant_answer(task, annotations)
  if answer is None:
    return None
  responses = [answer] * len(images)
  parts = (score_vg if task == "vg" else score_roc)(images, annotations, responses)
  return {"answer": answer, "bird": parts["bird"], "bird_mean": parts["bird_mean"],
          "paper_mean": parts["paper_mean"], "corrected_micro": parts["corrected_micro"]}
