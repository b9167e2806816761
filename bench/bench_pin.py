"""What pinning XLA's CPU numerics costs (bird_jax/xla_cpu.py, docs/reproducibility.md): train
steps of the demo's model and batch (the `tiny` preset, 8 x 512 tokens), pinned and with the
machine's own settings, in alternating child processes limited to the same cores.

    .venv/bin/python bench/bench_pin.py [--rounds 2] [--steps 8]

Prints each child's median seconds per step (the first, compiling step left out) and the ratio
pinned / unpinned of the medians over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from bird_jax import xla_cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def seconds_per_step(pin: bool, steps: int) -> float:
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_cpu.THREADS_VARIABLE)}
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  cmd = [sys.executable, "-m", "bird_jax_testing.numerics", "--rows", "8", "--length", "512",
         "--steps", str(steps)] + ["--pin"] * pin
  out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
  return json.loads(out.splitlines()[-1])["seconds_per_step"]


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--rounds", type=int, default=2)
  ap.add_argument("--steps", type=int, default=8)
  a = ap.parse_args(argv)
  facts = xla_cpu.describe()
  print(f"{facts['cpu']}, {facts['cpu_isa']}, L1d {facts['l1d_cache']}, "
        f"{facts['cpu_threads']} cores")
  times = {True: [], False: []}
  for r in range(a.rounds):
    for pin in (False, True):
      times[pin].append(seconds_per_step(pin, a.steps))
      print(f"round {r + 1} {'pinned  ' if pin else 'unpinned'} {times[pin][-1]:.3f} s/step",
            flush=True)
  ratio = statistics.median(times[True]) / statistics.median(times[False])
  print(f"pinned / unpinned: {ratio:.2f}x the time per step")
  return 0


if __name__ == "__main__":
  sys.exit(main())
