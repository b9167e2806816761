"""The main job on the embedded default, end to end on CPU:

    .venv/bin/python -m bird_jax_demo [--out runs/demo] [--quick] [--config FILE]
        [--config.a.b=value ...]

1. datagen: procedural phantom scans of all 8 modalities with instance masks -> Med-GRIT-style
   conversations (template backend, offline), split by case into train and test;
2. train: the demo config (bird_jax_demo/config.py, or a config file given with --config,
   e.g. configs/demo_long.py; the tiny model from scratch, or from the HF folder `init.hf`
   names), on the training cases;
3. eval: BiRD's protocol on the held-out cases (greedy decoding, BiRD's post-processing and
   scoring), beside constant-answer baselines;
then prints the Table-3-style table and writes the training curve, per-task bar charts and the
box gallery. Every stage resumes: rerunning continues where an interrupted run stopped.
`--quick` runs the config's CI-sized variant (minutes) that checks the pipeline, not the
learning: it is short for `--config=<bird_jax_demo/config.py>:quick`.

Exit codes (docs/faults.md): 0 done, 2 refused input (one line), 75 training preempted (saved:
rerun the same command to continue), the training stage's own codes (4, 5), 1 anything
unexpected (with its traceback).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from absl import flags
from ml_collections import config_flags

from bird_jax import exit_codes
from bird_jax.exit_codes import BadInput
from bird_jax.manifest import record_parts

PROG = "python -m bird_jax_demo"

DEMO_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.py")


def demo_settings(c) -> dict[str, dict]:
  """The datagen and eval settings of the config's `demo` block."""
  if "demo" not in c:
    raise BadInput("the config has no `demo` block (datagen and eval settings); start from "
                     "bird_jax_demo.config.get_config()")
  return {k: dict(v) for k, v in c.demo.to_dict().items()}


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


def stage_train(c, data: Path, workdir: Path):
  from bird_jax.train.loop import train

  c.data.shards = str(data / "train")
  c.train.workdir = str(workdir)
  return train(c)


def plot_pair(path: Path, rows: list[dict], left: tuple[str, str], right: tuple[str, str],
              title: str, left_range: tuple[float, float] | None = None) -> Path:
  """Two metrics of `rows` against the step, `left` and `right` = (key, axis label)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 3.5))
  steps = [r["step"] for r in rows]
  lines = ax.plot(steps, [r[left[0]] for r in rows], marker=".", label=left[1])
  if left_range:
    ax.set_ylim(*left_range)
  ax2 = ax.twinx()
  lines += ax2.plot(steps, [r[right[0]] for r in rows], color="tab:orange", marker=".",
                    label=right[1])
  ax.set_xlabel("step")
  ax.set_ylabel(left[1])
  ax2.set_ylabel(right[1])
  ax.set_title(title)
  ax.legend(lines, [ln.get_label() for ln in lines], loc="best")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_curve(workdir: Path) -> Path | None:
  from bird_jax.train.logger import read_metrics

  rows = [r for r in read_metrics(str(workdir)) if "loss" in r]  # not a probe's rows
  if not rows:
    return None
  return plot_pair(workdir / "training_curve.png", rows, ("loss", "loss"),
                   ("accuracy", "token accuracy"), "demo training")


def stage_eval(settings: dict, workdir: Path, data: Path, out: Path):
  from bird_jax.evaluation.cli import model_eval
  from bird_jax.evaluation.config import default_config

  c = default_config()
  c.tasks, c.limit = tuple(settings["tasks"]), settings["limit"]
  c.batch_size = settings["batch_size"]
  c.mesh.data = 1
  return model_eval(c, str(workdir), str(data / "medgrit"), str(out))


def numerics_line(pinned: bool) -> str:
  """What the table's numbers depend on, printed under it."""
  from bird_jax import xla_cpu

  if pinned:
    return (f"numerics: pinned (XLA CPU kernels for {xla_cpu.PINNED_ISA}, matrix products in Eigen, "
            f"{xla_cpu.PINNED_THREADS} threads; docs/reproducibility.md): the same table on every "
            f"x86-64 machine with AVX2 and a {xla_cpu.l1d_cache() or 'same-size'} L1 data cache")
  return (f"numerics: this machine's own ({xla_cpu.compiled_isa()}, --nopin_numerics): the table "
          "differs between machines (docs/reproducibility.md gives the measured spread)")


def run(c, out: Path, config_name: str, pinned: bool = False) -> int:
  """The three stages; the exit code (0 done, 75 training preempted: rerun to continue)."""
  from absl import logging

  logging.set_verbosity(logging.ERROR)  # Orbax logs each save (INFO) and read-only use (WARNING)
  settings = demo_settings(c)
  times, started = {}, time.time()

  t0 = time.perf_counter()
  print("== 1/3 datagen: phantom scans, 8 modalities, template conversations", flush=True)
  summary = stage_datagen(settings["datagen"], out / "data")
  times["datagen"] = time.perf_counter() - t0
  split = summary["split"]
  print(f"   {split['train']['images']} training images ({split['train']['cases']} cases), "
        f"{split['test']['images']} held-out images ({split['test']['cases']} cases); "
        f"questions per task: {json.dumps(summary['per_task'])}", flush=True)

  t0 = time.perf_counter()
  print(f"== 2/3 train: {config_name}"
        + (f", init from {c.init.hf}" if c.init.hf else ""),
        flush=True)
  result = stage_train(c, out / "data", out / "train")
  times["train"] = time.perf_counter() - t0
  if result.stopped_by == "signal":
    print(f"training preempted at step {result.step} (saved); rerun the same command to "
          "continue", flush=True)
    return exit_codes.PREEMPTED
  curve = plot_curve(out / "train")

  t0 = time.perf_counter()
  print("== 3/3 eval: held-out cases, BiRD's protocol", flush=True)
  ev = stage_eval(settings["eval"], out / "train", out / "data", out / "eval")
  times["eval"] = time.perf_counter() - t0

  print()
  print(ev.markdown)
  print(numerics_line(pinned))
  print(f"training: {result.step} steps, final loss {result.metrics.get('loss', float('nan')):.4f}"
        f" ({result.stopped_by})")
  print("wall time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items())
        + f", total {sum(times.values()) / 60:.1f} min")
  print(f"outputs: {out / 'eval' / 'report.md'}, {out / 'eval' / 'plots'}, "
        f"{ev.paths.get('gallery', '')}" + (f", {curve}" if curve else ""))
  record_parts(out, "demo", {"datagen": "data", "train": "train", "eval": "eval"},
               json.loads(c.to_json_best_effort()), started)  # python -m bird_jax.audit OUT
  return exit_codes.OK


def expand_quick(prog: str, default_config: str) -> None:
  """Replaces `--quick` in sys.argv by the default config's quick variant. Call it before the
  config flag is defined: config_flags loads the file then, with the overrides in sys.argv."""
  argv = sys.argv
  if "--quick" in argv:
    if any(a == "--config" or a.startswith("--config=") for a in argv):
      print(f"python -m {prog}: error: --quick selects the default config's quick variant; "
            "with --config use --config=FILE:quick", file=sys.stderr)
      sys.exit(exit_codes.BAD_INPUT)
    rest = [a for a in argv[1:] if a != "--quick"]
    sys.argv = [argv[0], f"--config={default_config}:quick"] + rest


def main() -> None:
  """Flags are defined here, after `--quick` is replaced by the config variant it stands for."""
  from bird_jax import xla_cpu
  from bird_jax.cli import define_config_file, run_absl

  expand_quick("bird_jax_demo", DEMO_CONFIG)
  config = define_config_file(
      PROG, "config", DEMO_CONFIG, "a config file with a `demo` block (default: the demo's own, "
      "bird_jax_demo/config.py); FILE:quick selects its quick variant", lock_config=True)
  out = flags.DEFINE_string("out", "runs/demo", "output folder (resumed when it exists)")
  pin_numerics = flags.DEFINE_bool(
      "pin_numerics", True, "pin XLA's CPU numerics so that the table is the same on every "
      "x86-64 machine (docs/reproducibility.md); --nopin_numerics uses the machine's fastest "
      "kernels, whose results differ between machines")
  flags.DEFINE_bool("quick", False, "a CI-sized run that checks the pipeline only: short for "
                    "--config=<bird_jax_demo/config.py>:quick")

  def _main(argv) -> int:
    del argv
    name = config_flags.get_config_filename(flags.FLAGS["config"])  # FILE or FILE:variant
    path, _, variant = name.partition(":")
    if os.path.abspath(path) == DEMO_CONFIG:
      name = "the demo config" + (f" ({variant} variant)" if variant else "")
    pinned = pin_numerics.value and xla_cpu.pin()
    return run(config.value, Path(out.value), name, pinned)

  run_absl(PROG, _main, configs=[config], resumable=True)
