"""Every benchmark behind one command, with a summary table at the end.

    .venv/bin/python bench/run_all.py            # full sizes (about an hour on 2 cores)
    .venv/bin/python bench/run_all.py --quick    # smaller sizes (minutes)
    .venv/bin/python bench/run_all.py --only train generate

Each benchmark runs in its own process and prints its figures (each compares against a
baseline measured in the same run: this machine is shared and noisy); the summary repeats the
lines that carry the headline figure of each.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> (script, full-size args, quick args, substrings of the headline lines)
BENCHES = {
    "compile": ("bench_compile.py", [], ["--tokens", "128"], ("parameters", "compile")),
    "train": ("bench_train.py", [], ["--rows", "2", "--length", "256", "--steps", "2"],
              ("tokens/s", "MFU", "compiled / analytic")),
    "generate": ("bench_generate.py", ["--preset", "small"], ["--preset", "tiny", "--repeats", "2"],
                 ("x", "tokens/s")),
    "loader": ("bench_loader.py", [], ["--records", "64", "--workers", "0", "2"],
               ("samples/s",)),
    "metrics": ("bench_metrics.py", [], ["--n", "3000"], ("ratio", "x faster", "speed")),
    "convert": ("bench_convert.py", [], ["--llm-layers", "1", "--vit-layers", "2"],
                ("peak RSS", "RSS")),
    "datagen": ("bench_datagen.py", [], ["--images", "20"], ("images/s",)),
}


def run(name: str, quick: bool) -> tuple[int, float, list[str]]:
  script, full, small, _ = BENCHES[name]
  cmd = [sys.executable, str(HERE / script), *(small if quick else full)]
  print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  lines = [l for l in proc.stdout.splitlines() if not l.startswith(("W1", "I1"))]
  print("\n".join(lines), flush=True)
  return proc.returncode, time.perf_counter() - t0, lines


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--quick", action="store_true", help="smaller sizes")
  ap.add_argument("--only", nargs="*", choices=sorted(BENCHES), default=None)
  args = ap.parse_args()
  rows = []
  for name in args.only or list(BENCHES):
    rc, seconds, lines = run(name, args.quick)
    keys = BENCHES[name][3]
    head = [l.strip() for l in lines if any(k in l for k in keys)][-3:] or lines[-1:]
    rows.append((name, "ok" if rc == 0 else f"exit {rc}", f"{seconds:.0f}s", head))
  print("\n| bench | status | wall | headline |\n|---|---|---|---|")
  for name, status, wall, head in rows:
    print(f"| {name} | {status} | {wall} | {'<br>'.join(head)} |")


if __name__ == "__main__":
  main()
