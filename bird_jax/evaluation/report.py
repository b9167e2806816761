"""Evaluation report: a table shaped like the paper's Table 3 (Markdown + JSON) and bar charts.

Table 3 of the paper: one row per task (VG Recall@0.5, ROC Recall, RC SPICE, MIA mBMR, x100),
one column per modality (CT, MR, X-ray, PET, Endoscopy, Dermoscopy, Fundus, Ultrasound) and an
"Average" column and row. Here:
- the **BiRD-compatible** table: each cell as BiRD's scripts compute it; the task average is
  the one the paper reports (VG/RC/MIA: mean over the 8 modalities, an absent one counting 0;
  ROC: the paper's mean over its 6 ROC modalities, with the script's 8-modality mean beside);
  the "Average" row is the mean over the tasks present for that modality (the paper's rule);
  the corner is the mean of the task averages (56.66 in the paper);
- the **corrected** table, labelled and separate: VG with IoU >= 0.5 and one-to-one matching,
  means over the modalities that have samples, micro averages;
- sample counts per task and modality, the constant-answer baselines, RC/MIA metric details
  (BLEU-4, METEOR, ROUGE-L, CIDEr, SPICE or its labelled approximation), notes.

The paper's own numbers: the task averages of BiRD on Med-GRIT-Test30k (`PAPER_BIRD`) are
built in; per-modality paper numbers can be supplied as JSON ``{"vg": {"ct": 61.2, ...}, ...}``
(percent) and are then drawn beside ours.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bird_jax.metrics.spice import APPROX_LABEL
from bird_jax.vocabulary import MODALITIES, MODALITY_NAMES, TASK_NAMES, TASKS

if TYPE_CHECKING:
  from bird_jax.evaluation.scoring import TaskScores

# BiRD on Med-GRIT-Test30k, the paper's Tables 1 and 3 (task averages, percent).
PAPER_BIRD = {"vg": 53.92, "roc": 65.33, "rc": 55.23, "mia": 52.17}
PAPER_BIRD_AVERAGE = 56.66


def pct(v: float | None) -> float | None:
  return None if v is None or (isinstance(v, float) and math.isnan(v)) else 100.0 * v


def fmt(v: float | None, digits: int = 2) -> str:
  return "-" if v is None else f"{v:.{digits}f}"


def _mean(values: list[float | None]) -> float | None:
  vals = [v for v in values if v is not None]
  return sum(vals) / len(vals) if vals else None


# ---- tables (percent values) -----------------------------------------------------------------

def table3(scores: Mapping[str, "TaskScores"]) -> dict[str, Any]:
  """The BiRD-compatible Table 3 in percent: rows[task][modality | "average"], plus the
  "average" row (per modality, mean over tasks present) and the corner."""
  rows = {}
  for task in TASKS:
    if task not in scores:
      continue
    s = scores[task]
    row = {m: pct(s.bird[m]) for m in MODALITIES}
    row["average"] = pct(s.paper_mean)
    rows[task] = row
  avg_row = {m: _mean([rows[t][m] for t in rows]) for m in MODALITIES}
  avg_row["average"] = _mean([rows[t]["average"] for t in rows])
  return {"rows": rows, "average": avg_row}


def corrected_table(scores: Mapping[str, "TaskScores"]) -> dict[str, Any]:
  rows = {}
  for task in TASKS:
    if task in scores:
      s = scores[task]
      row = {m: pct(s.corrected[m]) for m in MODALITIES}
      row["mean_present"] = pct(s.corrected_mean)
      row["micro"] = pct(s.corrected_micro)
      rows[task] = row
  return rows


def report_dict(scores: Mapping[str, "TaskScores"],
                source: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Everything in the report as JSON-serialisable data (percent values); `source` says what
  was scored (checkpoint and step, prediction files with their SHA-256)."""
  tasks = {}
  for task, s in scores.items():
    tasks[task] = {
        "metric": s.metric, "predictions": s.total, "unknown_modality": s.unknown,
        "counts": s.counts, "bird": {m: pct(v) for m, v in s.bird.items()},
        "bird_mean_script": pct(s.bird_mean), "paper_mean": pct(s.paper_mean),
        "corrected": {m: pct(v) for m, v in s.corrected.items()},
        "corrected_mean_present": pct(s.corrected_mean), "corrected_micro": pct(s.corrected_micro),
        "details": s.details, "notes": s.notes, "unscorable": s.unscorable,
        "baseline": None if s.baseline is None else {
            **s.baseline, "bird": {m: pct(v) for m, v in s.baseline["bird"].items()},
            "bird_mean": pct(s.baseline["bird_mean"]), "paper_mean": pct(s.baseline["paper_mean"]),
            "corrected_micro": pct(s.baseline["corrected_micro"])}}
  return {"source": dict(source or {}),
          "unscorable": {t: s.unscorable for t, s in scores.items() if s.unscorable},
          "table3_bird_compatible": table3(scores), "corrected": corrected_table(scores),
          "paper_bird": {**PAPER_BIRD, "average": PAPER_BIRD_AVERAGE}, "tasks": tasks}


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
  out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  out += ["| " + " | ".join(r) + " |" for r in rows]
  return out


def markdown(scores: Mapping[str, "TaskScores"], title: str = "Evaluation") -> str:
  t3 = table3(scores)
  mods = [MODALITY_NAMES[m] for m in MODALITIES]
  lines = [f"# {title}", "", "## BiRD-compatible (the paper's Table 3 layout, x100)", ""]
  body = []
  for task, row in t3["rows"].items():
    body.append([f"{TASK_NAMES[task]} ({scores[task].metric})"]
                + [fmt(row[m]) for m in MODALITIES] + [fmt(row["average"])])
  body.append(["Average"] + [fmt(t3["average"][m]) for m in MODALITIES]
              + [fmt(t3["average"]["average"])])
  lines += _md_table(["task"] + mods + ["Average"], body)
  lines += ["", "Cells: BiRD's per-modality score (\"-\": no samples). Average column: VG/RC/MIA "
            "over the 8 modalities (an absent one counts 0, as BiRD's scripts do), ROC over the "
            "paper's 6 ROC modalities. Average row: mean over the tasks present per modality."]
  if "roc" in scores:
    lines.append(f"ROC mean over all 8 modalities (BiRD's script): "
                 f"{fmt(pct(scores['roc'].bird_mean))}.")
  paper = [[TASK_NAMES[t], fmt(t3["rows"][t]["average"]), fmt(PAPER_BIRD[t])]
           for t in t3["rows"]]
  paper.append(["Average", fmt(t3["average"]["average"]), fmt(PAPER_BIRD_AVERAGE)])
  lines += ["", "### Against the paper (BiRD, Med-GRIT-Test30k)", ""]
  lines += _md_table(["task", "ours", "paper BiRD"], paper)

  lines += ["", "## Corrected variants (not BiRD-compatible; x100)", "",
            "VG: IoU >= 0.5 and one-to-one matching (a predicted box serves one target), recall "
            "without BiRD's 1e-8. Means over the modalities that have samples; micro = over all "
            "samples (VG: over all target boxes).", ""]
  body = [[TASK_NAMES[t]] + [fmt(r[m]) for m in MODALITIES] + [fmt(r["mean_present"]),
                                                               fmt(r["micro"])]
          for t, r in corrected_table(scores).items()]
  lines += _md_table(["task"] + mods + ["mean (present)", "micro"], body)

  lines += ["", "## Samples per modality", ""]
  body = []
  for task, s in scores.items():
    extra = ""
    if task == "vg":
      extra = f" (+{sum(s.details['skipped_no_reference_box'].values())} without a reference box)"
    body.append([TASK_NAMES[task]] + [str(s.counts[m]) for m in MODALITIES]
                + [str(s.unknown), f"{s.total}{extra}"])
  lines += _md_table(["task"] + mods + ["unknown prefix", "predictions"], body)

  base = [(t, s.baseline) for t, s in scores.items() if s.baseline]
  if base:
    lines += ["", "## Constant-answer baselines (BiRD-compatible scoring)", "",
              "Every sample gets the same answer, computed from the test references: VG the "
              "mean reference box, ROC the most frequent class.", ""]
    lines += _md_table(["task", "answer", "average (paper rule)", "model"],
                       [[TASK_NAMES[t], f"`{b['answer']}`", fmt(pct(b["paper_mean"])),
                         fmt(pct(scores[t].paper_mean))] for t, b in base])

  for task in ("rc", "mia"):
    if task in scores:
      lines += ["", f"## {TASK_NAMES[task]} caption metrics per modality (x100)", ""]
      lines += _caption_details(scores[task])
  notes = [(t, n) for t, s in scores.items() for n in s.notes]
  if notes:
    lines += ["", "## Notes", ""] + [f"- {TASK_NAMES[t]}: {n}" for t, n in notes]
  return "\n".join(lines) + "\n"


def _caption_details(s: "TaskScores") -> list[str]:
  keys = ["Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "mBMR", "SPICE", APPROX_LABEL]
  per = s.details["per_modality"]
  body = []
  for m in MODALITIES:
    d = per[m]
    body.append([MODALITY_NAMES[m], str(s.counts[m])]
                + [fmt(None if d is None else pct(d[k])) for k in keys])
  mean = s.details["mean_8_modalities"]
  body.append(["mean (8)", ""] + [fmt(pct(mean[k])) for k in keys])
  lines = _md_table(["modality", "n"] + keys, body)
  return lines + ["", s.details["spice_status"]]


# ---- plots -----------------------------------------------------------------------------------

def load_paper_table(path: str | os.PathLike | None) -> dict[str, dict[str, float]]:
  """Per-modality paper numbers (percent) from JSON {"vg": {"ct": 61.2, ...}, ...}."""
  if not path:
    return {}
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  bad = [k for k in data if k not in TASKS] + [
      f"{t}.{m}" for t, row in data.items() if isinstance(row, dict) for m in row
      if m not in MODALITIES]
  if bad or not all(isinstance(r, dict) for r in data.values()):
    raise ValueError(f"{path}: expected {{task: {{modality: percent}}}} with tasks {TASKS} and "
                     f"modalities {MODALITIES}; unexpected {bad}")
  return {t: {m: float(v) for m, v in row.items()} for t, row in data.items()}


def bar_chart(s: "TaskScores", path: str | os.PathLike,
              paper: Mapping[str, float] | None = None) -> str:
  """PNG: the task's per-modality scores (ours, BiRD-compatible; VG also corrected) with the
  paper's BiRD numbers beside them (per modality when given, and the task average)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  labels = [MODALITY_NAMES[m] for m in MODALITIES] + ["Average"]
  ours = [pct(s.bird[m]) for m in MODALITIES] + [pct(s.paper_mean)]
  series = [("ours (BiRD-compatible)", ours, "#3b6ea8", None)]
  if s.task == "vg":
    series.append(("ours (corrected: IoU>=0.5, one-to-one)",
                   [pct(s.corrected[m]) for m in MODALITIES] + [pct(s.corrected_mean)],
                   "#9cc0e6", "//"))
  paper = dict(paper or {})
  series.append(("paper BiRD", [paper.get(m) for m in MODALITIES] + [PAPER_BIRD[s.task]],
                 "#d08a38", None))
  x = np.arange(len(labels))
  width = 0.8 / len(series)
  fig, ax = plt.subplots(figsize=(10, 4))
  for k, (name, values, color, hatch) in enumerate(series):
    pos = x - 0.4 + width * (k + 0.5)
    heights = [0.0 if v is None else v for v in values]
    bars = ax.bar(pos, heights, width, label=name, color=color, hatch=hatch, edgecolor="white")
    for b, v in zip(bars, values):
      ax.annotate("-" if v is None else f"{v:.1f}", (b.get_x() + b.get_width() / 2, b.get_height()),
                  ha="center", va="bottom", fontsize=7)
  ax.set_xticks(x, labels, rotation=20)
  ax.set_ylabel(f"{s.metric} (x100)")
  ax.set_ylim(0, 105)
  ax.set_title(f"{TASK_NAMES[s.task]}: {s.metric} per modality ({s.total} predictions)")
  ax.legend(fontsize=8, loc="upper right")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return str(path)


def write_report(scores: Mapping[str, "TaskScores"], out_dir: str | os.PathLike, *,
                 paper_table: Mapping[str, Mapping[str, float]] | None = None,
                 title: str = "Evaluation", source: Mapping[str, Any] | None = None
                 ) -> dict[str, str]:
  """Writes report.md, report.json and plots/<task>.png; returns their paths."""
  os.makedirs(os.path.join(out_dir, "plots"), exist_ok=True)
  paths = {"markdown": os.path.join(out_dir, "report.md"),
           "json": os.path.join(out_dir, "report.json")}
  with open(paths["markdown"], "w", encoding="utf-8") as f:
    f.write(markdown(scores, title))
  with open(paths["json"], "w", encoding="utf-8") as f:
    json.dump(report_json(scores, source), f, indent=1, allow_nan=False)
  for task, s in scores.items():
    paths[f"plot_{task}"] = bar_chart(s, os.path.join(out_dir, "plots", f"{task}.png"),
                                      (paper_table or {}).get(task))
  return paths


def report_json(scores: Mapping[str, "TaskScores"],
                source: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """report.json's content: `report_dict` with numpy values as Python ones, NaN/inf as None."""
  return _finite(report_dict(scores, source))


def _finite(v: Any) -> Any:
  """JSON-ready copy: numpy values as Python ones, NaN/inf as None."""
  import numpy as np

  if isinstance(v, Mapping):
    return {str(k): _finite(x) for k, x in v.items()}
  if isinstance(v, (list, tuple, np.ndarray)):
    return [_finite(x) for x in v]
  if isinstance(v, np.generic):
    v = v.item()
  if isinstance(v, float) and not math.isfinite(v):
    return None
  return v
