"""Visual grounding (VG) scores: IoU and Recall@0.5, vectorised in JAX.

BiRD-compatible rules (docs/evaluation.md, "VG"):
- IoU of [x1, y1, x2, y2] boxes with continuous areas (x2-x1)*(y2-y1) (no +1), the
  intersection clipped at 0, union = a1 + a2 - inter; a box that failed to parse has IoU 0;
  inverted boxes give 0 (NaN when the union is 0, which is a miss as well);
- a target is hit iff SOME predicted box has IoU strictly > 0.5 (BiRD scans in order and
  stops at the first; one predicted box may satisfy several targets);
- samples whose reference has no box are skipped; per modality hits / (targets + 1e-8);
  the overall score is the unweighted mean over the 8 modalities, an empty one counting 0.
Corrected variant (reported separately, never mixed): IoU >= 0.5, one-to-one matching
(greedy by decreasing IoU, each predicted box used once), per-modality recall without the
1e-8 (None when a modality has no targets), the mean over present modalities and micro
averages over targets and over samples.

All IoU arithmetic runs in float64 (scoped ``jax.enable_x64``) so thresholds behave as
in BiRD's Python floats.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bird_jax.boxes import bird_extract_boxes, box_iou
from bird_jax.metrics.modality import mean_over, mean_present, modality_vector
from bird_jax.vocabulary import MODALITIES

Box = tuple[float, float, float, float]
BIRD_EPS = 1e-8


def iou_matrix(pred: jax.Array, target: jax.Array) -> jax.Array:
  """BiRD's IoU of every target with every prediction: [..., T, 4] x [..., P, 4] -> [..., T, P]."""
  t = target[..., :, None, :]
  p = pred[..., None, :, :]
  iw = jnp.maximum(0.0, jnp.minimum(t[..., 2], p[..., 2]) - jnp.maximum(t[..., 0], p[..., 0]))
  ih = jnp.maximum(0.0, jnp.minimum(t[..., 3], p[..., 3]) - jnp.maximum(t[..., 1], p[..., 1]))
  inter = iw * ih
  area_t = (t[..., 2] - t[..., 0]) * (t[..., 3] - t[..., 1])
  area_p = (p[..., 2] - p[..., 0]) * (p[..., 3] - p[..., 1])
  return inter / (area_t + area_p - inter)


def masked_iou(pred: jax.Array, pred_ok: jax.Array, target: jax.Array,
               target_ok: jax.Array) -> jax.Array:
  """IoU with unparseable boxes at 0 (pred_ok/target_ok: [..., P] / [..., T] booleans)."""
  iou = iou_matrix(pred, target)
  return jnp.where(target_ok[..., :, None] & pred_ok[..., None, :], iou, 0.0)


@jax.jit
def bird_hits(iou: jax.Array, pred_present: jax.Array) -> jax.Array:
  """[N, T, P] IoU -> [N, T] hit flags: some present prediction with IoU strictly > 0.5."""
  return jnp.any((iou > 0.5) & pred_present[..., None, :], axis=-1)


@jax.jit
def one_to_one_hits(iou: jax.Array, target_present: jax.Array,
                    pred_present: jax.Array) -> jax.Array:
  """[N, T, P] IoU -> [N, T] hits under greedy one-to-one matching with IoU >= 0.5.

  Repeatedly takes the highest-IoU pair among unmatched targets and predictions (ties go to
  the lowest target, then prediction index) until no pair reaches 0.5.
  """
  n, t, p = iou.shape
  eligible = (iou >= 0.5) & target_present[:, :, None] & pred_present[:, None, :]
  score = jnp.where(eligible, iou, -jnp.inf).reshape(n, t * p)

  def step(_, state):
    free_t, free_p, hits = state
    avail = (free_t[:, :, None] & free_p[:, None, :]).reshape(n, t * p)
    s = jnp.where(avail, score, -jnp.inf)
    best = jnp.argmax(s, axis=-1)
    ok = jnp.take_along_axis(s, best[:, None], axis=-1)[:, 0] > -jnp.inf
    bt, bp = best // p, best % p
    pick_t = jax.nn.one_hot(bt, t, dtype=bool) & ok[:, None]
    pick_p = jax.nn.one_hot(bp, p, dtype=bool) & ok[:, None]
    return free_t & ~pick_t, free_p & ~pick_p, hits | pick_t

  init = (jnp.ones((n, t), bool), jnp.ones((n, p), bool), jnp.zeros((n, t), bool))
  return jax.lax.fori_loop(0, min(t, p), step, init)[2]


@dataclasses.dataclass(frozen=True)
class PaddedBoxes:
  """Box lists padded to [N, K, 4]: ``present`` marks real entries, ``parsed`` parseable ones."""
  boxes: np.ndarray
  present: np.ndarray
  parsed: np.ndarray


def pad_boxes(box_lists: Sequence[Sequence[Box | None]]) -> PaddedBoxes:
  """Pads per-sample box lists (None = a box text that failed to parse) to one array."""
  k = max([1] + [len(b) for b in box_lists])
  boxes = np.zeros((len(box_lists), k, 4), np.float64)
  present = np.zeros((len(box_lists), k), bool)
  parsed = np.zeros((len(box_lists), k), bool)
  for i, lst in enumerate(box_lists):
    for j, box in enumerate(lst):
      present[i, j] = True
      if box is not None:
        if len(box) != 4:
          raise ValueError(f"pad_boxes: sample {i} box {j} has {len(box)} numbers, expected 4")
        boxes[i, j] = box
        parsed[i, j] = True
  return PaddedBoxes(boxes, present, parsed)


@dataclasses.dataclass(frozen=True)
class VgResult:
  """Per-modality VG scores (fractions in [0, 1]).

  BiRD-compatible: ``recall`` (hits / (targets + 1e-8), 0 for an empty modality) and ``mean``
  (unweighted over the 8 modalities). Corrected: ``strict_*`` fields use IoU >= 0.5 and
  one-to-one matching; ``strict_recall[m]`` is None without targets; ``strict_mean_present``
  averages the modalities that have targets, ``strict_micro`` is hits/targets over all targets
  and ``strict_sample_mean`` the mean of per-sample recall. Counts: ``samples`` scored (with at
  least one reference box), ``skipped`` (no reference box), ``targets``, ``hits``,
  ``strict_hits``; ``unknown`` = samples whose modality is not one of the 8.
  Per-sample arrays (input order; 0 for skipped or unknown samples): ``sample_targets``,
  ``sample_hits``, ``sample_strict_hits``.
  """
  recall: dict[str, float]
  mean: float
  strict_recall: dict[str, float | None]
  strict_mean_present: float
  strict_micro: float
  strict_sample_mean: float
  samples: dict[str, int]
  skipped: dict[str, int]
  targets: dict[str, int]
  hits: dict[str, int]
  strict_hits: dict[str, int]
  unknown: int
  sample_targets: np.ndarray
  sample_hits: np.ndarray
  sample_strict_hits: np.ndarray


def _hits_per_sample(pred: PaddedBoxes, target: PaddedBoxes) -> tuple[np.ndarray, np.ndarray]:
  with jax.enable_x64(True):
    iou = masked_iou(jnp.asarray(pred.boxes), jnp.asarray(pred.parsed),
                     jnp.asarray(target.boxes), jnp.asarray(target.parsed))
    t_present, p_present = jnp.asarray(target.present), jnp.asarray(pred.present)
    bird = bird_hits(iou, p_present) & t_present
    strict = one_to_one_hits(iou, t_present, p_present)
    return (np.asarray(bird.sum(-1)), np.asarray(strict.sum(-1)))


def vg_recall(images: Sequence[str], targets: Sequence[Sequence[Box | None]],
              preds: Sequence[Sequence[Box | None]]) -> VgResult:
  """Scores VG from parsed boxes: per sample the reference and predicted boxes, in order."""
  if not len(images) == len(targets) == len(preds):
    raise ValueError(
      f"vg_recall: images ({len(images)}), targets ({len(targets)}) and preds ({len(preds)}) "
      "must have the same length")
  mod = np.asarray(modality_vector(images), np.int64)
  n_t = np.asarray([len(t) for t in targets], np.int64)
  hits, strict = _hits_per_sample(pad_boxes(preds), pad_boxes(targets))
  scored = (mod >= 0) & (n_t > 0)
  n_t, hits, strict = (np.where(scored, a, 0) for a in (n_t, hits, strict))
  out: dict[str, dict] = {k: {} for k in (
    "recall", "strict_recall", "samples", "skipped", "targets", "hits", "strict_hits")}
  for i, m in enumerate(MODALITIES):
    sel = mod == i
    tgt, h, sh = int(n_t[sel].sum()), int(hits[sel].sum()), int(strict[sel].sum())
    out["samples"][m] = int((sel & scored).sum())
    out["skipped"][m] = int((sel & ~scored).sum())
    out["targets"][m], out["hits"][m], out["strict_hits"][m] = tgt, h, sh
    out["recall"][m] = h / (tgt + BIRD_EPS)
    out["strict_recall"][m] = sh / tgt if tgt else None
  total = int(n_t.sum())
  per_sample = strict[scored] / n_t[scored]
  return VgResult(
    mean=mean_over(out["recall"]), strict_mean_present=mean_present(out["strict_recall"]),
    strict_micro=int(strict.sum()) / total if total else 0.0,
    strict_sample_mean=float(per_sample.mean()) if per_sample.size else 0.0,
    unknown=int((mod < 0).sum()), sample_targets=n_t, sample_hits=hits,
    sample_strict_hits=strict, **out)


def vg_recall_from_text(images: Sequence[str], annotations: Sequence[str],
                        responses: Sequence[str]) -> VgResult:
  """Scores VG from texts with BiRD's box extraction (``bird_jax.boxes.bird_extract_boxes``):
  ``<box>`` spans in the annotation; in the (post-processed) response the same, falling back
  to bare ``(x1,y1),(x2,y2)`` pairs when it has no ``<box>``."""
  targets = [bird_extract_boxes(a, fallback=False) for a in annotations]
  preds = [bird_extract_boxes(r, fallback=True) for r in responses]
  return vg_recall(images, targets, preds)


# ---- single-target probe -------------------------------------------------------------------

MISSING_CENTRE_ERROR = float(np.hypot(1000.0, 1000.0))  # the grid's diagonal: no box read


@dataclasses.dataclass(frozen=True)
class ProbeScore:
  """Questions with one target box each, scored on the answer's FIRST box: ``recall`` the
  fraction with IoU > 0.5 (BiRD's threshold), ``median_centre_error`` the median distance
  between the box centres on the 0..1000 text grid (an answer without a readable box counts
  as the grid's diagonal), ``unreadable`` how many answers had no box."""
  recall: float
  median_centre_error: float
  unreadable: int
  questions: int


def grounding_probe(targets: Sequence[Box], preds: Sequence[Box | None]) -> ProbeScore:
  if len(targets) != len(preds) or not targets:
    raise ValueError(f"grounding_probe: {len(targets)} targets and {len(preds)} predictions "
                     "(need the same number, at least one)")
  hits, errors = 0, []
  for t, p in zip(targets, preds):
    if p is None:
      errors.append(MISSING_CENTRE_ERROR)
      continue
    hits += box_iou(p, t) > 0.5
    errors.append(float(np.hypot((p[0] + p[2] - t[0] - t[2]) / 2, (p[1] + p[3] - t[1] - t[3]) / 2)))
  return ProbeScore(hits / len(targets), float(np.median(errors)),
                    sum(p is None for p in preds), len(targets))
