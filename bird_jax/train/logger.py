"""Training metrics: a progress bar, JSONL (one object per logged step) and TensorBoard.

Only process 0 writes. `metrics.jsonl` is appended to, so a resumed run continues the file.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import jax
from tqdm import tqdm


class MetricLogger:
  def __init__(self, workdir: str, *, total_steps: int, start_step: int = 0,
               tensorboard: bool = True, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                    dynamic_ncols=True, disable=not self.enabled)
    self.writer = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      if tensorboard:
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def step(self, step: int, metrics: dict[str, Any] | None = None) -> None:
    """Advances the bar to `step`; with metrics, writes them (JSONL + TensorBoard)."""
    self.bar.update(step - self.bar.n)
    if not metrics or not self.enabled:
      return
    row = {"step": step, "time": time.time(), **{k: _num(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    if self.writer is not None:
      for k, v in row.items():
        if k not in ("step", "time") and isinstance(v, (int, float)) and math.isfinite(v):
          self.writer.add_scalar(f"train/{k}", v, step)
      self.writer.flush()
    self.bar.set_postfix({k: f"{row[k]:.4g}" for k in ("loss", "accuracy", "lr") if k in row})

  def write(self, message: str) -> None:
    if self.enabled:
      self.bar.write(message)

  def close(self) -> None:
    self.bar.close()
    if self.writer is not None:
      self.writer.close()


def _num(v: Any) -> Any:
  try:
    return float(v)
  except (TypeError, ValueError):
    return v


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
