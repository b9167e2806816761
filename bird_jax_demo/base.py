"""Pre-trains the demo's base model on generic shape scenes, with a held-out grounding probe:

    .venv/bin/python -m bird_jax_demo.base [--out runs/demo_base] [--export DIR]
        [--config FILE] [--config.a.b=value ...] [--quick]

1. datagen (offline): shape scenes with VG and ROC turns, other scenes with grounded
   listings, and held-out probe scenes (bird_jax_demo/base_config.py);
2. train (train.py's loop, resumable): after every checkpoint the probe asks about one named
   object among several on each held-out scene and logs R@0.5 and the median centre error of
   the greedy answer's box (`probe_recall`, `probe_centre_error` in metrics.jsonl);
3. export: the newest checkpoint as an HF-layout folder in bfloat16 (what
   `python -m bird_jax.convert hf-to-jax` and the demo's `init.hf` read), with the run's
   config, metrics.jsonl and the probe curve.
Rerunning the command continues an interrupted run; raising `--config.train.steps` continues
a finished one. `--config.train.max_minutes=M` trains for M minutes at most, then exports
(a rerun continues from there). Exit codes as the demo's (bird_jax_demo/run.py): 0 done, 2
refused input, 75 preempted (saved; rerun to continue), 1 anything unexpected.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import defaultdict
from pathlib import Path

from absl import flags

from bird_jax import exit_codes

BASE_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "base_config.py")
FOLDERS = {"scenes": "train_scenes", "listings": "train_listings", "probe": "probe"}
SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "base")  # a base to ship


def datagen(b, name: str, out: Path) -> dict:
  """One of the three shape sets: `scenes` (VG + ROC), `listings` (grounded listings) or
  `probe` (VG about every label, read by probe_samples)."""
  from datagen.config import GenConfig
  from datagen.run import generate
  from datagen.tasks import TaskCounts

  s = b[name]
  tasks = {"scenes": TaskCounts(vg=s.get("vg", 0), roc=s.get("roc", 0), rc=0, mia=0,
                                negatives=0.0, disjoint=True),
           "listings": TaskCounts(vg=0, roc=0, rc=0, mia=1, negatives=0.0),
           "probe": TaskCounts(vg=8, roc=0, rc=0, mia=0, negatives=0.0)}[name]
  cfg = GenConfig(out=str(out), source="shapes", num_images=s["num_images"],
                  image_size=b["image_size"], max_labels=b["max_labels"], seed=s["seed"],
                  shapes_style=s.get("style", "full"), tasks=tasks, answer_style="concise")
  return generate(cfg.validate())


def probe_samples(folder: Path, questions: int, min_objects: int):
  """Held-out VG questions naming a label with ONE instance, on scenes with at least
  `min_objects` objects (every label of a probe scene has a question, so the scene's boxes
  are all in its conversation); `questions` of them spread evenly, with their target box."""
  from bird_jax.boxes import bird_extract_boxes
  from bird_jax.evaluation.cli import spread_subset
  from bird_jax.evaluation.testsets import read_test_file

  samples = [s for f in ("train.json", "test.json")
             for s in read_test_file(folder / "medgrit" / f)]
  boxes = [bird_extract_boxes(s.annotation, fallback=False) for s in samples]
  per_scene = defaultdict(int)
  for s, bx in zip(samples, boxes):
    per_scene[s.image] += len(bx)
  picked = [(s, bx[0]) for s, bx in zip(samples, boxes)
            if len(bx) == 1 and per_scene[s.image] >= min_objects]
  if len(picked) < questions:
    raise ValueError(f"{folder}: {len(picked)} probe questions, {questions} asked for (raise "
                     "base.probe.num_images)")
  return spread_subset(picked, questions)


class GroundingProbe:
  """probe(step, model) -> {probe_recall, probe_centre_error, probe_unreadable}: greedy VG
  answers on the fixed held-out questions (one compiled program, reused at every step)."""

  def __init__(self, folder: Path, questions: int, min_objects: int, batch_size: int):
    self.picked = probe_samples(folder, questions, min_objects)
    self.find = lambda image: folder / "images" / Path(image).name
    self.batch_size, self.gen = batch_size, None

  def __call__(self, step: int, model) -> dict[str, float]:
    from flax import nnx

    from bird_jax.boxes import bird_extract_boxes
    from bird_jax.evaluation.runner import RunOptions, make_generator, predict
    from bird_jax.metrics.grounding import grounding_probe
    from bird_jax.tokenizer import load_tokenizer

    tok = load_tokenizer(model.cfg)
    opts = RunOptions(batch_size=self.batch_size, max_new_tokens={"vg": 64}, buckets=(256,))
    if self.gen is None:
      self.gen = make_generator(model, model.cfg, tok, opts, None)
    else:
      self.gen.state = nnx.state(model)
    preds = predict("vg", [s for s, _ in self.picked], self.gen, tok, model.cfg, self.find, opts,
                    progress=False)
    first = [(bird_extract_boxes(p.response, fallback=True) or [None])[0] for p in preds]
    score = grounding_probe([t for _, t in self.picked], first)
    return {"probe_recall": score.recall, "probe_centre_error": score.median_centre_error,
            "probe_unreadable": score.unreadable}


def plot_probe(workdir: Path) -> Path | None:
  from bird_jax.train.logger import read_metrics
  from bird_jax_demo.run import plot_pair

  rows = [r for r in read_metrics(str(workdir)) if "probe_recall" in r]
  if not rows:
    return None
  return plot_pair(workdir / "probe_curve.png", rows, ("probe_recall", "probe R@0.5"),
                   ("probe_centre_error", "median centre error (0..1000 grid)"),
                   "demo base: held-out grounding probe", left_range=(0.0, 1.0))


def export(workdir: Path, dest: Path) -> None:
  """The newest checkpoint -> an HF-layout bfloat16 folder (written beside `dest`, then moved
  into place), with the run's config, metrics and probe curve."""
  from bird_jax.convert import jax_to_hf

  tmp = dest.with_name(dest.name + ".tmp")
  shutil.rmtree(tmp, ignore_errors=True)
  jax_to_hf(workdir / "checkpoints", tmp, dtype="bf16")
  for name in ("config.json", "metrics.jsonl", "probe_curve.png"):
    if (workdir / name).exists():
      shutil.copy(workdir / name, tmp / ("run_config.json" if name == "config.json" else name))
  if dest.exists():
    shutil.rmtree(dest)
  os.replace(tmp, dest)


def run(c, out: Path, export_to: Path) -> int:
  """Data, pre-training, export; the exit code (0 done, 75 preempted: rerun to continue)."""
  from absl import logging

  from bird_jax.train.logger import read_metrics
  from bird_jax.train.loop import train

  logging.set_verbosity(logging.ERROR)
  b = c.base
  t0 = time.perf_counter()
  print("== 1/3 datagen: shape scenes (VG + ROC), grounded listings, held-out probe scenes",
        flush=True)
  for name in ("scenes", "listings", "probe"):
    summary = datagen(b, name, out / "data" / FOLDERS[name])
    print(f"   {name}: {summary['split']['train']['images'] + summary['split']['test']['images']}"
          f" images, questions per task: {json.dumps(summary['per_task'])}", flush=True)
  probe = GroundingProbe(out / "data" / FOLDERS["probe"], b.probe.questions, b.probe.min_objects,
                         b.probe.batch_size)
  print(f"   probe: {len(probe.picked)} held-out questions ({time.perf_counter() - t0:.0f} s)",
        flush=True)

  print(f"== 2/3 train: {c.train.steps} steps, probe every {c.train.ckpt_every}", flush=True)
  with c.unlocked():
    c.data.shards = str(out / "data" / "train_*" / "train" / "*.array_record")
    c.train.workdir = str(out / "train")
  result = train(c, probe=probe)
  if result.stopped_by == "signal":
    print(f"pre-training preempted at step {result.step} (saved); rerun the same command to "
          "continue", flush=True)
    return exit_codes.PREEMPTED
  if result.stopped_by == "time":
    print(f"train.max_minutes reached at step {result.step} (saved); the export below is that "
          "step's model, and rerunning the same command continues the run", flush=True)
  plot_probe(out / "train")

  print(f"== 3/3 export: step {result.step} -> {export_to} (HF layout, bfloat16)", flush=True)
  export(out / "train", export_to)
  rows = [r for r in read_metrics(str(out / "train")) if "probe_recall" in r]
  if rows:
    print(f"probe at step {rows[-1]['step']}: R@0.5 {rows[-1]['probe_recall']:.3f}, median "
          f"centre error {rows[-1]['probe_centre_error']:.0f}")
  return exit_codes.OK


def main() -> None:
  from bird_jax.cli import define_config_file, run_absl
  from bird_jax_demo.run import expand_quick

  expand_quick("bird_jax_demo.base", BASE_CONFIG)
  config = define_config_file(
      "python -m bird_jax_demo.base", "config", BASE_CONFIG,
      "the pre-training config (default bird_jax_demo/base_config.py)", lock_config=True)
  out = flags.DEFINE_string("out", "runs/demo_base", "run folder (resumed when it exists)")
  dest = flags.DEFINE_string("export", "", "where the base is written (default OUT/base; "
                             f"a base to ship goes to {SHIPPED})")
  flags.DEFINE_bool("quick", False, "a CI-sized run that checks the pipeline only")

  def _main(argv) -> int:
    del argv
    return run(config.value, Path(out.value), Path(dest.value or Path(out.value) / "base"))

  run_absl("python -m bird_jax_demo.base", _main, configs=[config], resumable=True)


if __name__ == "__main__":
  main()
