"""Checks the figures README.md, docs/ and the config docstrings quote against what produces
them now. Every checked figure is a row of the tables below (PLAN, MODEL, PARITY; the demo's
rows come from its report.json): a file, the text quoted there with `{}` for each number
(whitespace matches any whitespace, line breaks included) and what produces each number. A
figure quoted in a doc but missing from these tables is not checked: a new quoted figure
needs a row here.

Sections (`--only`; by default every section whose inputs are given):
  plan    `python -m bird_jax.plan`'s figures (docs/training.md, docs/benchmarks.md,
          configs/bird_7b_4gpu.py), each from the planner's library function with the same
          config, mesh and overrides as the doc's command. Without --compiled: rows per
          device, analytic FLOPs, step times and trained parameters (`bird_jax.plan.counts`,
          no compilation, seconds). With --compiled also the memory per device and the
          compiled/analytic FLOP ratios (`bird_jax.plan.plan`, one child process per planner
          command of RUNS, about a minute each; names after --compiled pick some).
  model   the presets' parameter and tensor counts (`bench/bench_compile.py`'s count;
          docs/model.md, docs/checkpoints.md, docs/benchmarks.md, README.md, docs/demo.md)
  parity  the bounds the parity tests assert (`bird_jax_testing/bounds.py`, which the tests
          import) as the docs quote them
  demo    the demo's table and question counts from a demo run's report.json (README.md,
          docs/demo.md); prints the table to paste when a figure differs

    .venv/bin/python bench/check_figures.py                  # plan (analytic), model, parity
    .venv/bin/python bench/check_figures.py --only plan --compiled     # all 8 commands
    .venv/bin/python bench/check_figures.py --only plan --compiled bird_7b_4gpu lora_7b_1gpu
    .venv/bin/python -m bird_jax_demo --out runs/demo
    .venv/bin/python bench/check_figures.py --only demo --report runs/demo/eval/report.json

Prints one line per figure, `ok: FILE: X (what)` or `DIFFERS: FILE: quoted X, produced Y
(what)`; a quoted text not found is a difference too. A number is compared at the precision
it is quoted with ("34.03" against 34.0312; "1e-4" exactly). Exit 1 when anything differs,
0 otherwise, 2 for refused arguments. tests/test_check_figures.py runs the sections without
--compiled and --report.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bird_jax_testing: the checkout's

from bird_jax import plan as P  # noqa: E402
from bird_jax.vocabulary import MODALITIES  # noqa: E402

NUMBER = r"([-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?|-)"  # "-" alone: a cell without a value


@dataclasses.dataclass(frozen=True)
class Figure:
  what: str
  value: Callable[[Any], Any]  # the section's results -> the number (None: no value)
  runs: tuple[str, ...] = ()  # the planner commands it needs compiled (--compiled)


@dataclasses.dataclass(frozen=True)
class Quote:
  file: str  # relative to --root
  text: str  # as quoted, `{}` for each number
  figures: tuple[Figure, ...]


def pattern(text: str) -> re.Pattern:
  """The quoted text as a regex: `{}` a number, whitespace runs any whitespace."""
  def literal(part: str) -> str:
    return r"\s+".join(re.escape(w) for w in re.split(r"\s+", part))
  return re.compile(NUMBER.join(literal(p) for p in text.split("{}")))


def render(quoted: str, value: Any) -> str:
  """`value` as it would be quoted at the precision (decimals, sign, thousands commas) of
  `quoted`; a quoted power of ten ("1e-4") is compared exactly."""
  if value is None:
    return "-"
  if quoted == "-":
    return f"{value}"
  if "e" in quoted:
    return quoted if float(quoted) == float(value) else f"{value:g}"
  decimals = len(quoted.split(".")[1]) if "." in quoted else 0
  sign = "+" if quoted[0] in "+-" else ""
  comma = "," if "," in quoted else ""
  return f"{value:{sign}{comma}.{decimals}f}"


def check(quotes: list[Quote], results: Any, root: Path,
          ready: Callable[[Figure], bool] = lambda f: True) -> tuple[int, int]:
  """Prints one line per figure of `quotes` that is `ready` (its inputs are there); (figures
  checked, figures that differ). A quoted text not found counts as one differing figure."""
  checked = differ = 0
  for q in quotes:
    path = root / q.file
    text = path.read_text() if path.is_file() else ""
    found = list(pattern(q.text).finditer(text))
    if not found:
      print(f'DIFFERS: {q.file}: quoted nothing matching "{" ".join(q.text.split())}"')
      checked, differ = checked + 1, differ + 1
      continue
    for m in found:
      for quoted, f in zip(m.groups(), q.figures):
        if not ready(f):
          continue
        produced = render(quoted, f.value(results))
        checked += 1
        if produced == quoted:
          print(f"ok: {q.file}: {quoted} ({f.what})")
        else:
          differ += 1
          print(f"DIFFERS: {q.file}: quoted {quoted}, produced {produced} ({f.what})")
  return checked, differ


# ---- plan ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Run:
  """One `python -m bird_jax.plan` command."""
  config: str
  mesh: str
  per_device_batch: int | None = None
  overrides: tuple[tuple[str, Any], ...] = ()
  cpu_licm: bool = False

  @property
  def mesh_axes(self) -> dict[str, int]:
    return P.parse_mesh(self.mesh)

  @property
  def devices(self) -> int:
    return math.prod(self.mesh_axes.values())

  def command(self) -> str:
    args = [f"--config {self.config}", f"--mesh {self.mesh}"]
    if self.per_device_batch is not None:
      args.append(f"--per_device_batch {self.per_device_batch}")
    args += [f"--config.{k}={v}" for k, v in self.overrides]
    args += ["--cpu_licm"] if self.cpu_licm else []
    return "python -m bird_jax.plan " + " ".join(args)

  def load(self):
    """The run config as the command resolves it (overrides and per-device batch applied)."""
    from bird_jax.train.config import load_config_file

    c = load_config_file(ROOT / self.config)
    for key, value in self.overrides:
      *parents, name = key.split(".")
      node = functools.reduce(getattr, parents, c)
      if name not in node:
        raise KeyError(f"{self.command()}: no config field {key}")
      setattr(node, name, value)
    P.set_per_device_batch(c, self.mesh_axes, self.per_device_batch)
    return c


R4, R4_FP32, R4_LICM, R4_DOTS = ("bird_7b_4gpu", "bird_7b_4gpu_fp32_moments",
                                 "bird_7b_4gpu_cpu_licm", "bird_7b_4gpu_remat_dots")
R8, LORA, R1, R1_FSDP2 = "bird_7b_8gpu", "lora_7b_1gpu", "bird_7b_1gpu", "bird_7b_1gpu_fsdp2"
RUNS = {
    R4: Run("configs/bird_7b_4gpu.py", "fsdp=4"),
    R4_FP32: Run("configs/bird_7b_4gpu.py", "fsdp=4",
                 overrides=(("optim.moments_dtype", "float32"),)),
    R4_LICM: Run("configs/bird_7b_4gpu.py", "fsdp=4", cpu_licm=True),
    R4_DOTS: Run("configs/bird_7b_4gpu.py", "fsdp=4",
                 overrides=(("model.overrides.remat", "dots"),)),
    R8: Run("configs/bird_7b_8gpu.py", "fsdp=8", per_device_batch=4),
    LORA: Run("configs/lora_7b_1gpu.py", "fsdp=1"),
    R1: Run("configs/bird_7b_1gpu.py", "fsdp=1"),
    R1_FSDP2: Run("configs/bird_7b_1gpu.py", "fsdp=2", per_device_batch=1,
                  overrides=(("optim.grad_accum", 64),)),
}


class PlanResults:
  """Per run name: the resolved config, the analytic counts, and (once compiled) the Plan."""

  def __init__(self):
    self.plans: dict[str, P.Plan] = {}

  @functools.cache
  def config(self, run: str):
    return RUNS[run].load()

  @functools.cache
  def counts(self, run: str) -> P.Counts:
    return P.counts(self.config(run), RUNS[run].mesh_axes)


def counted(run: str, what: str, fn: Callable[[Any, P.Counts], Any]) -> Figure:
  """A figure from the run's config and analytic counts (no compilation)."""
  return Figure(f"{run}: {what}", lambda r: fn(r.config(run), r.counts(run)))


def compiled(run: str, what: str, fn: Callable[[P.Plan], Any]) -> Figure:
  """A figure from the run's compiled plan."""
  return Figure(f"{run}: {what}", lambda r: fn(r.plans[run]), runs=(run,))


def batch_shape(run: str) -> tuple[Figure, ...]:
  """Rows per device per micro-step, tokens per row, micro-steps per step."""
  from bird_jax.sharding import batch_shards

  shards = batch_shards(RUNS[run].mesh_axes)
  return (counted(run, "rows per device", lambda c, _: c.data.batch_size / shards),
          counted(run, "tokens per row", lambda c, _: c.data.max_len),
          counted(run, "micro-steps", lambda c, _: c.optim.grad_accum))


def global_batch(run: str) -> tuple[Figure, ...]:
  return (counted(run, "sequences per step", lambda c, _: c.data.batch_size * c.optim.grad_accum),
          counted(run, "tokens per sequence", lambda c, _: c.data.max_len))


def memory(run: str) -> tuple[Figure, ...]:
  return (compiled(run, "arguments GiB", lambda p: p.argument_gib),
          compiled(run, "temporaries GiB", lambda p: p.temp_gib),
          compiled(run, "total GiB per device", lambda p: p.total_gib))


def total(run: str) -> Figure:
  return compiled(run, "total GiB per device", lambda p: p.total_gib)


def trained(run: str) -> Figure:
  return counted(run, "trained parameters (B)", lambda _, n: n.trained_params / 1e9)


def trained_gib(run: str, what: str) -> Figure:
  """4 bytes per trained parameter (fp32, or two bf16 moments)."""
  return counted(run, what, lambda _, n: n.trained_params * 4 / 2**30)


def pflop(run: str) -> Figure:
  return counted(run, "analytic PFLOP per step", lambda _, n: n.analytic_flops / 1e15)


def ratio(run: str) -> Figure:
  return compiled(run, "compiled/analytic FLOPs, depth 1", lambda p: p.depth1_ratio)


def step_time(run: str, peak_tflops: float, mfu: float) -> Figure:
  return counted(run, f"step s at {peak_tflops:g} TFLOP/s, MFU {mfu:g}", lambda _, n:
                 P.step_seconds(n.analytic_flops, RUNS[run].devices, peak_tflops, mfu))


def headroom(run: str, device_gib: float) -> Figure:
  return compiled(run, f"GiB left on a {device_gib:g} GiB device",
                  lambda p: p.headroom_gib(device_gib))


T = "docs/training.md"
PLAN = [
    Quote(T, "| `bird_7b_4gpu` (4 x A100 40 GB) | fsdp 4 | {} x {}, {} micro-steps | bf16 | "
          "{} GiB | {} GiB | **{} GiB** |", batch_shape(R4) + memory(R4)),
    Quote(T, "| same, fp32 moments | fsdp 4 | {} x {}, {} micro-steps | fp32 | {} GiB | {} GiB | "
          "{} GiB (does not fit) |", batch_shape(R4_FP32) + memory(R4_FP32)),
    Quote(T, "| `bird_7b_8gpu` (8 x 80 GB) | fsdp 8 | {} x {}, {} micro-steps | fp32 | {} GiB | "
          "{} GiB | **{} GiB** |", batch_shape(R8) + memory(R8)),
    Quote(T, "Both keep BiRD's global batch of {} sequences of {} tokens", global_batch(R4)),
    Quote(T, "Both keep BiRD's global batch of {} sequences of {} tokens", global_batch(R8)),
    Quote(T, "Analytic FLOPs per step: {} PFLOP (XLA's count of a depth-1 variant / the analytic "
          "count of that variant: {},", (pflop(R4), ratio(R4))),
    Quote(T, "Analytic FLOPs per step: {} PFLOP", (pflop(R8),)),
    Quote(T, "i.e. {} s per step on 4 A100s and {} s on 8 at 312 TFLOP/s and MFU 0.4.",
          (step_time(R4, 312, 0.4), step_time(R8, 312, 0.4))),
    Quote(T, "What got the 4-GPU recipe from 52.4 GiB to {} (each", (total(R4),)),
    Quote(T, "Adam moments stored in bfloat16 (`optim.moments_dtype`): {} GiB.", (Figure(
        f"{R4} total - {R4_FP32} total", runs=(R4, R4_FP32),
        value=lambda r: r.plans[R4].total_gib - r.plans[R4_FP32].total_gib),)),
    Quote(T, "(`--cpu-licm` keeps it: {} GiB for the 4-GPU recipe)", (total(R4_LICM),)),
    Quote(T, "`remat=dots` would need {} GiB per device on CPU", (total(R4_DOTS),)),
    Quote(T, "| `lora_7b_1gpu` (rank 64, base in bf16) | 1 x 40 GiB (A100-40GB) | {} B adapter "
          "parameters | {} GiB | {} GiB | **{} GiB** | fits ({}) |",
          (trained(LORA),) + memory(LORA) + (headroom(LORA, 40),)),
    Quote(T, "| `bird_7b_1gpu` (BiRD's full fine-tune, bf16 moments) | 1 x 141 GiB (H200) | {} B | "
          "{} GiB | {} GiB | **{} GiB** | fits ({}) |",
          (trained(R1),) + memory(R1) + (headroom(R1, 141),)),
    Quote(T, "| same | 1 x 80 GiB | {} B | {} GiB | {} GiB | {} GiB | does not fit ({}) |",
          (trained(R1),) + memory(R1) + (headroom(R1, 80),)),
    Quote(T, "| same, `--mesh fsdp=2 --per_device_batch 1 --config.optim.grad_accum=64` | 2 x 80 "
          "GiB | {} B | {} GiB | {} GiB | **{} GiB** | fits ({}) |",
          (trained(R1_FSDP2),) + memory(R1_FSDP2) + (headroom(R1_FSDP2, 80),)),
    *(Quote(T, "All keep BiRD's {} sequences of {} tokens per step", global_batch(run))
      for run in (LORA, R1, R1_FSDP2)),
    Quote(T, "the fp32 masters of the {} B trained parameters ({} GiB) and their Adam moments "
          "even in bf16 ({} GiB), with the frozen ViT and the batch, take {} GiB before a "
          "gradient (another {} GiB in fp32)",
          (trained(R1), trained_gib(R1, "fp32 masters GiB"), trained_gib(R1, "bf16 moments GiB"),
           compiled(R1, "arguments GiB", lambda p: p.argument_gib),
           trained_gib(R1, "fp32 gradients GiB"))),
    Quote(T, "train LoRA (`lora_7b_1gpu.py`, {} GiB)", (total(LORA),)),
    Quote(T, "`lora_7b_1gpu` is {} PFLOP per step, and XLA's count of its depth-1 variant is {} x "
          "the analytic one", (pflop(LORA), ratio(LORA))),
    Quote("docs/benchmarks.md", "{} GiB per device for the 4 x A100 recipe", (total(R4),)),
    Quote("configs/bird_7b_4gpu.py", "({} GiB per device as `python -m bird_jax.plan` reports it; "
          "{} with fp32 moments", (total(R4), total(R4_FP32))),
]


def plan_child(run: str) -> None:
  """In a child process started with the planner's environment: the Plan as one JSON line."""
  from absl import logging

  logging.set_verbosity(logging.WARNING)
  p = P.plan(RUNS[run].load(), RUNS[run].mesh_axes)
  print(json.dumps(dataclasses.asdict(p)))


def compile_runs(runs: list[str]) -> dict[str, P.Plan]:
  """{run: Plan}, each compiled in a child process with `python -m bird_jax.plan`'s
  environment (simulated devices, the CPU pass it disables)."""
  plans = {}
  for run in runs:
    r = RUNS[run]
    env = {**os.environ, **P.planner_env(r.devices, r.cpu_licm)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--plan-child", run], env=env,
                          capture_output=True, text=True)
    if proc.returncode:
      raise RuntimeError(f"{r.command()} failed:\n{proc.stderr[-3000:]}")
    plans[run] = P.Plan(**json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"# {r.command()}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
  return plans


def check_plan(root: Path, runs: list[str]) -> tuple[int, int]:
  """The plan section, with the compiled figures of `runs` (each compiled once a process)."""
  results = PLAN_RESULTS
  results.plans.update(compile_runs([r for r in runs if r not in results.plans]))
  return check(PLAN, results, root, lambda f: all(r in results.plans for r in f.runs))


PLAN_RESULTS = PlanResults()  # kept between calls in one process (the tests call main twice)


# ---- model --------------------------------------------------------------------------------------

@functools.cache
def preset_counts(preset: str) -> dict[str, int]:
  """{"params", "tensors" (HF), "vocab", and per block of flops.BLOCKS} of a preset, abstract."""
  from flax import nnx

  from bird_jax.checkpoint import hf
  from bird_jax.config import get_preset
  from bird_jax.model import abstract_model
  from bird_jax.train.flops import block_of, param_shapes

  cfg = get_preset(preset)
  state = nnx.state(abstract_model(cfg))
  shapes = param_shapes(state)
  out = {"params": sum(math.prod(s) for s in shapes.values()), "vocab": cfg.llm.vocab_size,
         "tensors": len(hf.expected_tensors(cfg, hf.param_shapes(state)))}
  for path, s in shapes.items():
    out[block_of(path)] = out.get(block_of(path), 0) + math.prod(s)
  return out


def preset(name: str, key: str, scale: float = 1.0, what: str = "") -> Figure:
  return Figure(f"{name}: {what or key}", lambda _: preset_counts(name)[key] / scale)


def billions(name: str) -> Figure:
  return preset(name, "params", 1e9, "parameters (B)")


def millions(name: str) -> Figure:
  return preset(name, "params", 1e6, "parameters (M)")


def bf16_gb(name: str) -> Figure:
  return preset(name, "params", 1e9 / 2, "GB in bf16")


Q7 = "qwen_vl_7b"
MODEL = [
    Quote("docs/model.md", "| `qwen_vl_7b` | {} B |", (billions(Q7),)),
    Quote("docs/model.md", "| `small` | {} M |", (millions("small"),)),
    Quote("docs/model.md", "| `tiny` | {} M |", (millions("tiny"),)),
    Quote("docs/model.md", "| `demo` | {} M |", (millions("demo"),)),
    Quote("docs/model.md", "| Qwen BPE ({} rows) |", (preset(Q7, "vocab"),)),
    Quote("docs/model.md", "`qwen_vl_7b` has {} B parameters, and its {} HF tensors",
          (billions(Q7), preset(Q7, "tensors"))),
    Quote("docs/model.md", "has {} B parameters: the LLM {} B, the ViT {} B, resampler and "
          "projection {} B; the HF release stores {} tensors in bf16.",
          (billions(Q7), preset(Q7, "llm", 1e9), preset(Q7, "vit", 1e9),
           Figure(f"{Q7}: resampler + proj (B)",
                  lambda _: (preset_counts(Q7)["resampler"] + preset_counts(Q7)["proj"]) / 1e9),
           preset(Q7, "tensors"))),
    Quote("docs/checkpoints.md", "({} tensors, {} B parameters, vocab {}, bf16, 10 files of at "
          "most 2 GB: {} GB)", (preset(Q7, "tensors"), billions(Q7), preset(Q7, "vocab"),
                                bf16_gb(Q7))),
    Quote("docs/benchmarks.md", "AOT on abstract inputs | {} B parameters;", (billions(Q7),)),
    Quote("docs/benchmarks.md", "the full-size model ({} B) at 448 px", (billions(Q7),)),
    Quote("README.md", "(nothing here downloads weights): {} GB in bf16.", (bf16_gb(Q7),)),
    Quote("README.md", "the {} M-parameter `tiny` preset", (millions("tiny"),)),
    Quote("docs/demo.md", "the `tiny` preset from scratch ({} M parameters,", (millions("tiny"),)),
]


# ---- parity -------------------------------------------------------------------------------------

def bound(name: str) -> Figure:
  from bird_jax_testing import bounds

  return Figure(f"bird_jax_testing/bounds.py {name}", lambda _: getattr(bounds, name))


def parity_quotes() -> list[Quote]:
  from bird_jax import distributed

  return [
      Quote("docs/model.md", "and the whole model with images, all <= {} (measured",
            (bound("MODEL_PARITY"),)),
      Quote("docs/model.md", "the bicubic resize alone <= {}.", (bound("BICUBIC_RESIZE"),)),
      Quote(T, "mesh give the same losses and parameters within {}.", (bound("SHARDED_STEPS"),)),
      Quote(T, "whose logits equal the adapted model's within {}, and", (bound("LORA_MERGED"),)),
      Quote(T, "attaches them to the base again (logits within {})", (bound("LORA_ATTACHED"),)),
      Quote(T, "the test asserts at most {} + {} s)", (
          Figure("bird_jax/distributed.py HEARTBEAT_S", lambda _: distributed.HEARTBEAT_S),
          bound("HEARTBEAT_NOTICE_S"))),
      Quote("docs/evaluation.md", "BLEU/ROUGE-L/CIDEr within {} (in practice equal)",
            (bound("CAPTION_METRICS"),)),
      Quote("docs/evaluation.md", "the requirement is {}).", (bound("METEOR_SCORE"),)),
  ]


# ---- demo ---------------------------------------------------------------------------------------

HEADER = ("| task | CT | MR | X-ray | PET | Endoscopy | Dermoscopy | Fundus | Ultrasound | Average "
          "| constant answer |\n|---|---|---|---|---|---|---|---|---|---|---|")
TASK_ROWS = {"vg": "VG (Recall@0.5)", "roc": "ROC (Recall)"}
COLUMNS = (*MODALITIES, "average", "constant answer")


def demo_cells(report: dict) -> dict[str, list[float | None]]:
  """{row name: cells}: per-modality BiRD-compatible scores, the paper's average, the constant
  answer's average (x100, as report.json holds them)."""
  rows = report["table3_bird_compatible"]["rows"]
  out = {}
  for task, name in TASK_ROWS.items():
    if task in rows:
      base = report["tasks"][task]["baseline"]
      out[name] = ([rows[task][m] for m in MODALITIES] + [rows[task]["average"]]
                   + [base["paper_mean"] if base else None])
  return out


def demo_table(report: dict) -> str:
  """The demo's table as README.md and docs/demo.md show it."""
  fmt = lambda v: "-" if v is None else f"{v:.2f}"
  return "\n".join([HEADER] + [f"| {name} | " + " | ".join(map(fmt, cells)) + " |"
                               for name, cells in demo_cells(report).items()])


def demo_quotes(report: dict) -> list[Quote]:
  cells = demo_cells(report)
  text = "\n".join([HEADER] + [f"| {name} | " + " | ".join(["{}"] * len(COLUMNS)) + " |"
                               for name in cells])
  figures = tuple(Figure(f"{name}, {col}", lambda _, v=v: v)
                  for name, row in cells.items() for col, v in zip(COLUMNS, row))
  counts = tuple(Figure(f"{t} test questions", lambda _, t=t: report["tasks"][t]["predictions"])
                 for t in TASK_ROWS)
  return [Quote("README.md", text, figures),
          Quote("docs/demo.md", text, figures),
          Quote("docs/demo.md", "({} VG and {} ROC test questions)", counts)]


# ---- the command --------------------------------------------------------------------------------

SECTIONS = ("plan", "model", "parity", "demo")


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--only", nargs="+", choices=SECTIONS, help="these sections only")
  ap.add_argument("--compiled", nargs="*", choices=sorted(RUNS), metavar="RUN",
                  help="plan: compile the planner commands too (memory, FLOP ratios; a minute "
                  f"or so each): these, or all without names ({', '.join(RUNS)})")
  ap.add_argument("--report", help="demo: runs/demo/eval/report.json of a demo run")
  ap.add_argument("--root", default=str(ROOT), help="where the quoted files are read "
                  "(default: this checkout)")
  ap.add_argument("--plan-child", choices=sorted(RUNS), help=argparse.SUPPRESS)
  a = ap.parse_args(argv)
  if a.plan_child:
    plan_child(a.plan_child)
    return 0
  sections = a.only or [s for s in SECTIONS if s != "demo" or a.report]
  if "demo" in sections and not a.report:
    ap.error("the demo section needs --report runs/demo/eval/report.json")
  root = Path(a.root)
  runs = [] if a.compiled is None else a.compiled or list(RUNS)
  checked = differ = 0
  for section in sections:
    if section == "plan":
      n, d = check_plan(root, runs)
    elif section == "model":
      n, d = check(MODEL, None, root)
    elif section == "parity":
      n, d = check(parity_quotes(), None, root)
    else:
      report = json.loads(Path(a.report).read_text())
      n, d = check(demo_quotes(report), None, root)
      if d:
        print(f"the demo's table from {a.report}:\n{demo_table(report)}")
    checked, differ = checked + n, differ + d
  left = len(set(RUNS) - set(runs)) if "plan" in sections else 0
  print(f"{checked} figures checked, {differ} differ" + (
      f"; {left} of {len(RUNS)} planner commands not compiled (--compiled)" if left else ""))
  return 1 if differ else 0


if __name__ == "__main__":
  sys.exit(main())
