"""`python -m bird_jax.audit PATH [--replay K] [--replay-dir DIR]` (bird_jax/audit/)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from bird_jax.cli import ToolParser, run_tool

PROG = "python -m bird_jax.audit"


def parser() -> argparse.ArgumentParser:
  from bird_jax import audit

  p = ToolParser(prog=PROG, description=audit.__doc__,
                 formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("path", help="a run folder (train workdir, eval, datagen or convert output, "
                 "the demo's folder) or its manifest.json")
  p.add_argument("--replay", type=int, default=0, metavar="K",
                 help="training runs: resume from a recorded checkpoint for K steps and compare "
                 "losses and parameters with the run's")
  p.add_argument("--replay-dir", default="", help="where the replay trains (a new or empty "
                 "folder, kept); default: a temporary folder, removed after")
  return p


def adopt_xla_settings(path: str) -> list[str]:
  """Sets XLA_FLAGS and XLA's CPU thread count to the audited run's (its last segment's,
  bird_jax/xla_cpu.py) before JAX starts, so that a replay or a rescore computes as the run
  did; returns the settings changed."""
  from bird_jax import manifest, xla_cpu
  from bird_jax.audit import folder_of

  try:
    recorded = manifest.read(folder_of(path))["segments"][-1]["environment"]["xla_cpu"]
  except (manifest.ManifestError, LookupError, TypeError):
    return []  # audit() reports a bad manifest
  if "jax" in sys.modules and xla_cpu.backend_started():
    return []
  changed = []
  for variable, value, unset in (("XLA_FLAGS", recorded.get("xla_flags"), ""),
                                 (xla_cpu.THREADS_VARIABLE, recorded.get("xla_threads"), None)):
    if os.environ.get(variable, unset) != value:
      if value in (None, ""):
        os.environ.pop(variable, None)
      else:
        os.environ[variable] = str(value)
      changed.append(f"{variable}={value!r}")
  return changed


def main(argv: Sequence[str] | None = None) -> int:
  """Prints one line per mismatch and environment difference, then a summary; returns 0, 8
  (content differs) or 9 (only the environment differs). A manifest that cannot be audited or
  a run still being written raise BadInput (exit 2)."""
  from bird_jax import exit_codes
  from bird_jax.audit import audit

  args = parser().parse_args(argv)
  if args.replay < 0:
    raise exit_codes.BadInput(f"--replay {args.replay}: K must be a number of steps >= 1")
  for setting in adopt_xla_settings(args.path):
    print(f"note: set as the run had it: {setting}")
  findings = audit(args.path, replay=args.replay, replay_dir=args.replay_dir or None)
  for line in findings.lines():
    print(line)
  code = findings.exit_code
  print(f"audit {args.path}: {len(findings.mismatches)} content mismatch(es), "
        f"{len(findings.environment)} environment difference(s): "
        f"{'everything matches' if code == exit_codes.OK else exit_codes.DESCRIPTIONS[code]} "
        f"(exit {code})")
  return code


if __name__ == "__main__":
  run_tool(PROG, main)
