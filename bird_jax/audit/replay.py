"""`--replay K`: a training run resumed from a recorded checkpoint for K steps, elsewhere.

The checkpoint chosen is the newest recorded step S for which step S + K is recorded too. A
new workdir (`--replay-dir`, or a temporary folder removed after) gets a copy of step S, the
run's metrics.jsonl, config.json and manifest.json; the trainer (bird_jax/train/loop.py)
resumes there with the run's config and `train.stop_step = S + K` (the schedule is the
run's). Nothing is written into the audited workdir. Then:

- every metric of the steps logged by both (not the timings) must equal the run's;
- every parameter at S + K must equal the run's bit for bit.

On another platform (environment.same_numerics) bits are not expected to agree: the largest
absolute differences are noted instead.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from bird_jax.exit_codes import BadInput

TIMINGS = ("time", "step_time", "tokens_per_s", "mfu")
COPIED = ("metrics.jsonl", "config.json", "manifest.json")


def recorded_steps(data: dict[str, Any]) -> list[int]:
  return sorted(int(g.split("/")[1]) for g in data["outputs"] if g.startswith("checkpoints/"))


def choose_start(steps: list[int], k: int, folder: Path) -> int:
  """The newest recorded step S with S + K recorded too (BadInput naming the choices)."""
  starts = [s for s in steps if s + k in steps]
  if not starts:
    gaps = sorted({b - a for a in steps for b in steps if b > a})
    raise BadInput(f"--replay {k}: no two recorded checkpoints of {folder} are {k} steps apart "
                   f"(steps {steps}); " + (f"K can be one of {gaps}" if gaps else
                                           "a replay needs two recorded checkpoints"))
  return max(starts)


def check_replay(folder: Path, data: dict[str, Any], k: int, replay_dir, findings,
                 same_platform: bool) -> None:
  from bird_jax.train.loop import train

  start = choose_start(recorded_steps(data), k, folder)
  end = start + k
  work = Path(replay_dir) if replay_dir else Path(tempfile.mkdtemp(prefix="bird_jax_replay_"))
  if replay_dir and work.exists() and any(work.iterdir()):
    raise BadInput(f"--replay-dir {work}: not empty; give a new or empty folder")
  try:
    (work / "checkpoints").mkdir(parents=True, exist_ok=True)
    shutil.copytree(folder / "checkpoints" / str(start), work / "checkpoints" / str(start))
    for name in COPIED:
      if (folder / name).exists():
        shutil.copy2(folder / name, work / name)
    c = ml_collections.ConfigDict(data["config"])
    c.train.update(workdir=str(work), stop_step=end, resume=True, resume_step=-1,
                   overwrite=False, tensorboard=False, max_minutes=0.0)
    print(f"replay: steps {start} -> {end} of {folder} in {work}", flush=True)
    result = train(c)
    if result.step != end:
      findings.mismatches.append(f"replay: stopped at step {result.step} ({result.stopped_by}), "
                                 f"not {end}")
      return
    _compare_metrics(folder, work, start, end, findings, same_platform)
    _compare_params(folder, work, end, findings, same_platform)
  finally:
    if not replay_dir:
      shutil.rmtree(work, ignore_errors=True)


def _rows(workdir: Path, start: int, end: int) -> dict[int, dict[str, Any]]:
  from bird_jax.train.logger import read_metrics

  return {r["step"]: r for r in read_metrics(str(workdir)) if start < r["step"] <= end}


def _compare_metrics(folder: Path, work: Path, start: int, end: int, findings,
                     same_platform: bool) -> None:
  run, again = _rows(folder, start, end), _rows(work, start, end)
  common = sorted(set(run) & set(again))
  worst: dict[str, float] = {}
  for step in common:
    for key in sorted(set(run[step]) - {"step", *TIMINGS}):
      a, b = run[step][key], again[step].get(key)
      if a == b:
        continue
      if same_platform or not isinstance(b, (int, float)):
        findings.mismatches.append(f"replay step {step} {key}: recorded {a!r}, replayed {b!r}")
      else:
        worst[key] = max(worst.get(key, 0.0), abs(float(a) - float(b)))
  findings.notes.append(f"replay: steps {start} -> {end}, metrics of {len(common)} logged "
                        "step(s) compared" + (f"; largest differences (another platform): "
                                              f"{_fmt(worst)}" if worst else ""))


def _compare_params(folder: Path, work: Path, step: int, findings, same_platform: bool) -> None:
  from bird_jax.checkpoint import orbax as ckpt

  def reader(workdir: Path):
    return ckpt.ParamReader(ckpt.checkpoint_manager(workdir / "checkpoints", read_only=True), step)

  run, again = reader(folder), reader(work)
  worst: dict[str, float] = {}
  for path in sorted(run.arrays):
    if path not in again.arrays or run.shapes[path] != again.shapes[path]:
      findings.mismatches.append(f"replay step {step} parameter {path}: missing or reshaped")
      continue
    shape = run.shapes[path]  # a large stacked parameter is read one layer at a time
    stacked = len(shape) >= 2 and np.prod(shape) * run.dtypes[path].itemsize > ckpt.CHUNK_BYTES
    diff = 0.0
    for layer in range(shape[0]) if stacked else [None]:
      a, b = run.read(path, layer), again.read(path, layer)
      if a.dtype != b.dtype:
        diff = float("inf")
      elif not np.array_equal(a.view(f"u{a.itemsize}"), b.view(f"u{b.itemsize}")):
        diff = max(diff, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))))
    if diff and same_platform:
      findings.mismatches.append(f"replay step {step} parameter {path}: not bitwise equal "
                                 f"(max abs difference {diff:.3g})")
    elif diff:
      worst[path] = diff
  findings.notes.append(f"replay: {len(run.arrays)} parameter(s) at step {step} compared"
                        + (f"; largest differences (another platform): {_fmt(worst)}"
                           if worst else ", all bitwise equal"))


def _fmt(worst: dict[str, float]) -> str:
  top = sorted(worst.items(), key=lambda kv: -kv[1])[:5]
  return ", ".join(f"{k} {v:.3g}" for k, v in top) + (" ..." if len(worst) > 5 else "")
