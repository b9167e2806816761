"""bench/check_figures.py: the docs quote what the planner's analytic counts, the presets and
the parity bounds give; an edited figure in a copy of a doc is reported as differing."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

from bird_jax.vocabulary import MODALITIES

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_figures", ROOT / "bench" / "check_figures.py")
cf = sys.modules["check_figures"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cf)

CHEAP = ["--only", "plan", "model", "parity"]


def run(capsys, *argv) -> tuple[int, list[str]]:
  code = cf.main(list(argv))
  return code, [l for l in capsys.readouterr().out.splitlines() if l.startswith("DIFFERS")]


def copy_docs(tmp_path: Path) -> Path:
  """The files the cheap sections read, copied under tmp_path."""
  for q in cf.PLAN + cf.MODEL + cf.parity_quotes():
    (tmp_path / q.file).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / q.file, tmp_path / q.file)
  return tmp_path


def replace(path: Path, old: str, new: str) -> None:
  text = path.read_text()
  assert text.count(old) == 1, old
  path.write_text(text.replace(old, new))


def test_the_docs_quote_what_the_cheap_sections_produce(capsys):
  code, differ = run(capsys, *CHEAP)
  assert (code, differ) == (0, [])


def test_an_edited_figure_is_reported(capsys, tmp_path):
  root = copy_docs(tmp_path)
  replace(root / "docs/training.md", "Analytic FLOPs per step: 14.3 PFLOP",
          "Analytic FLOPs per step: 14.4 PFLOP")
  replace(root / "docs/model.md", "all <= 1e-4", "all <= 1e-3")
  replace(root / "docs/model.md", "| `tiny` | 2.05 M |", "| `tiny` | 2.50 M |")
  replace(root / "docs/training.md", "0.145 B adapter parameters", "0.145 B adapters")
  code, differ = run(capsys, *CHEAP, "--root", str(root))
  assert code == 1
  assert sorted(differ) == sorted([
      "DIFFERS: docs/training.md: quoted 14.4, produced 14.3 "
      "(bird_7b_4gpu: analytic PFLOP per step)",
      "DIFFERS: docs/training.md: quoted 14.4, produced 14.3 "
      "(bird_7b_8gpu: analytic PFLOP per step)",
      "DIFFERS: docs/model.md: quoted 1e-3, produced 0.0001 "
      "(bird_jax_testing/bounds.py MODEL_PARITY)",
      "DIFFERS: docs/model.md: quoted 2.50, produced 2.05 (tiny: parameters (M))",
      'DIFFERS: docs/training.md: quoted nothing matching "| `lora_7b_1gpu` (rank 64, base in '
      'bf16) | 1 x 40 GiB (A100-40GB) | {} B adapter parameters | {} GiB | {} GiB | **{} GiB** | '
      'fits ({}) |"',
  ])


@pytest.mark.parametrize("quoted,value,produced", [
    ("34.03", 34.0312, "34.03"), ("14.3", 14.2801, "14.3"), ("+14.1", 14.11, "+14.1"),
    ("-44.0", -43.99, "-44.0"), ("151,936", 151936, "151,936"), ("1e-4", 1e-4, "1e-4"),
    ("1e-4", 1e-5, "1e-05"), ("-", None, "-"), ("0.00", None, "-")])
def test_figures_are_compared_at_their_quoted_precision(quoted, value, produced):
  assert cf.render(quoted, value) == produced


def test_the_demo_table_is_checked_cell_by_cell(capsys, tmp_path):
  rows = {"vg": {**{m: 1.0 for m in MODALITIES}, "ct": None, "average": 3.25},
          "roc": {**{m: 20.0 for m in MODALITIES}, "average": 37.32}}
  tasks = {"vg": {"baseline": {"paper_mean": 0.0}, "predictions": 203},
           "roc": {"baseline": None, "predictions": 164}}
  report = tmp_path / "report.json"
  report.write_text(json.dumps({"table3_bird_compatible": {"rows": rows}, "tasks": tasks}))
  table = cf.demo_table(json.loads(report.read_text()))
  assert "| VG (Recall@0.5) | - | 1.00 |" in table and table.endswith("| 37.32 | - |")
  (tmp_path / "docs").mkdir()
  (tmp_path / "README.md").write_text(f"before\n\n{table}\n\nafter\n")
  (tmp_path / "docs/demo.md").write_text(f"({203} VG and {164} ROC test questions):\n\n{table}\n")
  args = ["--only", "demo", "--report", str(report), "--root", str(tmp_path)]
  assert run(capsys, *args) == (0, [])

  replace(tmp_path / "README.md", "| 3.25 |", "| 3.40 |")
  code, differ = run(capsys, *args)
  assert code == 1 and differ == [
      "DIFFERS: README.md: quoted 3.40, produced 3.25 (VG (Recall@0.5), average)"]
