"""The main job on the embedded default, end to end on CPU:

    .venv/bin/python -m bird_jax_demo [--out runs/demo] [--quick] [--config FILE]

1. datagen: procedural phantom scans of all 8 modalities with instance masks -> Med-GRIT-style
   conversations (template backend, offline), split by case into train and test;
2. train: the demo config (bird_jax_demo/config.py, or a config file given with --config,
   e.g. configs/demo_long.py; the tiny model from scratch, or from the HF folder `init.hf`
   names), on the training cases;
3. eval: BiRD's protocol on the held-out cases (greedy decoding, BiRD's post-processing and
   scoring), beside constant-answer baselines;
then prints the Table-3-style table and writes the training curve, per-task bar charts and the
box gallery. Every stage resumes: rerunning continues where an interrupted run stopped.
`--quick` runs a CI-sized version (minutes) that checks the pipeline, not the learning.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bird_jax import exit_codes

# --quick: what shrinks (the pipeline is checked, not the learning)
QUICK = {"datagen": {"num_images": 48}, "eval": {"limit": 8}}
QUICK_TRAIN = {"steps": 12, "log_every": 2, "ckpt_every": 1000}


def demo_settings(c, quick: bool) -> dict[str, dict]:
  """The datagen and eval settings of the config's `demo` block (quick mode shrunk)."""
  if "demo" not in c:
    raise ValueError("the config has no `demo` block (datagen and eval settings); start from "
                     "bird_jax_demo.config.get_config()")
  out = {k: dict(v) for k, v in c.demo.to_dict().items()}
  if quick:
    for k, v in QUICK.items():
      out.setdefault(k, {}).update(v)
  return out


def stage_datagen(settings: dict, out: Path) -> dict:
  from datagen.config import GenConfig
  from datagen.run import generate
  from datagen.tasks import TaskCounts

  d = settings
  tasks = TaskCounts(vg=d["vg"], roc=d["roc"], rc=d["rc"], mia=d["mia"],
                     negatives=d["negatives"], disjoint=d["disjoint"])
  cfg = GenConfig(out=str(out), source="phantom", num_images=d["num_images"],
                  image_size=d["image_size"], seed=d["seed"], tasks=tasks,
                  answer_style=d["answer_style"])
  return generate(cfg.validate())


def stage_train(c, data: Path, workdir: Path, quick: bool):
  from bird_jax.train.loop import train

  c.data.shards = str(data / "train")
  c.train.workdir = str(workdir)
  if quick:
    c.train.update(QUICK_TRAIN)
    c.data.worker_count = 0
  return train(c)


def plot_curve(workdir: Path) -> Path | None:
  from bird_jax.train.logger import read_metrics

  rows = read_metrics(str(workdir))
  if not rows:
    return None
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 3.5))
  ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="loss")
  ax2 = ax.twinx()
  ax2.plot([r["step"] for r in rows], [r["accuracy"] for r in rows], color="tab:orange",
           label="token accuracy")
  ax.set_xlabel("step")
  ax.set_ylabel("loss")
  ax2.set_ylabel("token accuracy")
  ax.set_title("demo training")
  fig.legend(loc="upper right")
  fig.tight_layout()
  path = workdir / "training_curve.png"
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def stage_eval(settings: dict, workdir: Path, data: Path, out: Path):
  from bird_jax.evaluation.cli import model_eval
  from bird_jax.evaluation.config import default_config

  c = default_config()
  c.tasks, c.limit, c.batch_size = settings["tasks"], settings["limit"], settings["batch_size"]
  c.mesh.data = 1
  return model_eval(c, str(workdir), str(data / "medgrit"), str(out))


def main(argv: list[str] | None = None) -> None:
  ap = argparse.ArgumentParser(prog="python -m bird_jax_demo", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--out", default="runs/demo", help="output folder (resumed when it exists)")
  ap.add_argument("--config", default="",
                  help="a config file with a `demo` block (default: bird_jax_demo/config.py)")
  ap.add_argument("--quick", action="store_true", help="CI-sized run: checks the pipeline only")
  args = ap.parse_args(argv)
  from absl import logging

  from bird_jax.train.config import load_config_file
  from bird_jax_demo.config import get_config

  logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint at INFO
  out = Path(args.out)
  c = load_config_file(args.config) if args.config else get_config()
  settings = demo_settings(c, args.quick)
  times = {}

  t0 = time.perf_counter()
  print("== 1/3 datagen: phantom scans, 8 modalities, template conversations", flush=True)
  summary = stage_datagen(settings["datagen"], out / "data")
  times["datagen"] = time.perf_counter() - t0
  split = summary["split"]
  print(f"   {split['train']['images']} training images ({split['train']['cases']} cases), "
        f"{split['test']['images']} held-out images ({split['test']['cases']} cases); "
        f"questions per task: {json.dumps(summary['per_task'])}", flush=True)

  t0 = time.perf_counter()
  print(f"== 2/3 train: {args.config or 'the demo config'}"
        + (f", init from {c.init.hf}" if c.init.hf else ""),
        flush=True)
  result = stage_train(c, out / "data", out / "train", args.quick)
  times["train"] = time.perf_counter() - t0
  if result.stopped_by == "signal":
    print(f"training preempted at step {result.step} (saved); rerun the same command to "
          "continue", flush=True)
    sys.exit(exit_codes.PREEMPTED)
  curve = plot_curve(out / "train")

  t0 = time.perf_counter()
  print("== 3/3 eval: held-out cases, BiRD's protocol", flush=True)
  ev = stage_eval(settings["eval"], out / "train", out / "data", out / "eval")
  times["eval"] = time.perf_counter() - t0

  print()
  print(ev.markdown)
  print(f"training: {result.step} steps, final loss {result.metrics.get('loss', float('nan')):.4f}"
        f" ({result.stopped_by})")
  print("wall time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items())
        + f", total {sum(times.values()) / 60:.1f} min")
  print(f"outputs: {out / 'eval' / 'report.md'}, {out / 'eval' / 'plots'}, "
        f"{ev.paths.get('gallery', '')}" + (f", {curve}" if curve else ""))


if __name__ == "__main__":
  main()
