"""The demo's table as README.md and docs/demo.md show it, from a demo run's report.json; with
--check, fails when those files show other figures (run it after the demo changes).

    .venv/bin/python -m bird_jax_demo --out runs/demo
    .venv/bin/python bench/demo_table.py runs/demo/eval/report.json --check README.md docs/demo.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bird_jax.vocabulary import MODALITIES

HEADER = ("| task | CT | MR | X-ray | PET | Endoscopy | Dermoscopy | Fundus | Ultrasound | Average "
          "| constant answer |\n|---|---|---|---|---|---|---|---|---|---|---|")
ROWS = {"vg": "VG (Recall@0.5)", "roc": "ROC (Recall)"}


def fmt(v: float | None) -> str:
  return "-" if v is None else f"{v:.2f}"


def table(report: dict) -> str:
  """Markdown rows: per-modality BiRD-compatible scores, the paper's average, the constant
  answer's average (x100, as report.json holds them)."""
  lines = [HEADER]
  rows = report["table3_bird_compatible"]["rows"]
  for task, name in ROWS.items():
    if task not in rows:
      continue
    row, base = rows[task], report["tasks"][task]["baseline"]
    cells = [fmt(row[m]) for m in MODALITIES] + [fmt(row["average"]),
                                                 fmt(base["paper_mean"] if base else None)]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("report", help="runs/demo/eval/report.json of a demo run")
  ap.add_argument("--check", nargs="*", default=[], help="markdown files that must show it")
  a = ap.parse_args(argv)
  text = table(json.loads(Path(a.report).read_text()))
  print(text)
  drift = [f for f in a.check if text not in Path(f).read_text()]
  for f in drift:
    print(f"{f}: shows other demo figures than {a.report}", file=sys.stderr)
  return 1 if drift else 0


if __name__ == "__main__":
  sys.exit(main())
