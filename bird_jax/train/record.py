"""A training run's manifest (bird_jax/manifest.py) in `<workdir>/manifest.json`.

- at the start (a new run, or each resume: one segment each): the environment, the resolved
  config, and in the background the hashes of the data shards and, for a run from step 0, of
  the weights `init.hf` / `init.ckpt` name;
- each checkpoint step's files, hashed in the background once its save is final (the
  checkpointer's `on_final`), never holding up a step; steps Orbax deleted (train.keep) or
  resume set aside are dropped;
- at the end (finished, preempted, out of data, or stopped by an error): metrics.jsonl and
  config.json, the segment's steps and samples read, and how it ended.

Only process 0 keeps it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import ml_collections

from bird_jax.checkpoint.orbax import step_files
from bird_jax.data.shards import find_shards
from bird_jax.manifest import Manifest, files_under
from bird_jax.train import workdir as W

STEP_GROUP = "checkpoints/{}"


def init_files(c: ml_collections.ConfigDict) -> list[Path]:
  """The files a run from step 0 reads its weights from (none for random weights)."""
  if c.init.hf:
    return [p for p in sorted(Path(c.init.hf).iterdir()) if p.is_file()]
  if c.init.ckpt:
    return step_files(c.init.ckpt)
  return []


class TrainRecord:
  """`with TrainRecord(c, workdir, mesh) as r:` around the run (entered before the
  checkpointer, so that its last save is final when the record closes); `begin` once the
  starting step is known, `saved(step)` for each final save, `finish(result)` at the end."""

  def __init__(self, c: ml_collections.ConfigDict, workdir: str, mesh_shape: dict[str, int]):
    self.c, self.workdir, self.mesh = c, Path(workdir), mesh_shape
    self.manifest: Manifest | None = None
    self.start = self.samples = 0
    self.result = None

  def begin(self, start: int, samples: int) -> None:
    self.start, self.samples = start, samples
    config = json.loads(self.c.to_json_best_effort())
    m = self.manifest = Manifest(self.workdir, "train", config, resume=bool(self.c.train.resume),
                                 mesh=self.mesh)
    m.hash_later("inputs", "data", [Path(p) for p in find_shards(self.c.data.shards)])
    weights = init_files(self.c) if start == 0 else []
    if weights:
      m.hash_later("inputs", "init", weights)
    on_disk = set(W.checkpoint_steps(self.workdir))
    self._drop_steps_not_in(on_disk)
    for step in sorted(on_disk):  # saved by a run killed before it recorded them
      if m.group("outputs", STEP_GROUP.format(step)) is None:
        self.saved(step)

  def saved(self, step: int) -> None:
    """Step `step`'s save is final: its files are hashed in the background."""
    folder = self.workdir / "checkpoints" / str(step)
    self.manifest.hash_later("outputs", STEP_GROUP.format(step), files_under(folder))

  def finish(self, result: Any) -> None:
    self.result = result

  def _drop_steps_not_in(self, steps: set[int]) -> None:
    for name in list(self.manifest.data["outputs"]):
      if name.startswith("checkpoints/") and int(name.split("/")[1]) not in steps:
        self.manifest.drop("outputs", name)

  def __enter__(self) -> "TrainRecord":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if self.manifest is None:
      return
    if exc_type is None:
      self._close(None)
      return
    try:  # the run's own error is what the tool reports
      self._close(exc_type)
    except Exception as e:  # noqa: BLE001
      print(f"manifest: warning: {self.manifest.path} not updated: {type(e).__name__}: {e}",
            file=sys.stderr)

  def _close(self, exc_type) -> None:
    m = self.manifest
    m.join()
    self._drop_steps_not_in(set(W.checkpoint_steps(self.workdir)))
    m.hash_now("outputs", "run", [p for p in (self.workdir / "metrics.jsonl",
                                              self.workdir / "config.json") if p.exists()])
    r = self.result  # None: an error ended the run
    outcome = f"error: {exc_type.__name__}" if exc_type is not None else r.stopped_by
    end = None if r is None else (self.samples if r.samples is None else r.samples)
    m.close(outcome=outcome, steps=[self.start, None if r is None else r.step],
            samples=[self.samples, end])
