"""The exit-code table of docs/faults.md, walked tool by tool.

Every code a tool documents is triggered here and checked with what the tool prints: refused
input exits 2 with one line naming the flag, field or file; an unexpected error (an injected
RuntimeError) exits 1 with its traceback; the tool-specific codes come from the exception or
result that ends the tool. The tools run in this process, through their own `main` and the
wrapper of bird_jax/cli.py, as their `__main__` runs them. Where the real cause of a code takes a
training run (train.py 0, 3, 4, 5, 75), the run's outcome is stubbed here and the real fault is
injected in the tests named in ELSEWHERE. Flag parsing of the absl tools needs a fresh process:
those checks are marked e2e.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from bird_jax_testing.tools import exit_code

ROOT = Path(__file__).resolve().parents[1]

TRAIN, EVAL, DATAGEN, CONVERT = ("train.py", "eval.py", "python -m datagen",
                                 "python -m bird_jax.convert")
SERVE, CHAT, PLAN, MEDGRIT = ("python -m bird_jax.serve", "python -m bird_jax.chat",
                              "python -m bird_jax.plan", "python -m bird_jax.data.medgrit")
DEMO, BASE = "python -m bird_jax_demo", "python -m bird_jax_demo.base"
AUDIT = "python -m bird_jax.audit"
TOOLS = (TRAIN, EVAL, DATAGEN, CONVERT, SERVE, CHAT, PLAN, MEDGRIT, DEMO, BASE, AUDIT)
NOT_APPLICABLE = {(SERVE, 0): "the server runs until a signal stops it"}
RESUMABLE = {TRAIN, DATAGEN, DEMO, BASE}  # Ctrl-C: 75 (rerun to resume); the others 130

# The real faults behind the codes stubbed here (a training run each).
ELSEWHERE = {
    (TRAIN, 0): "test_faults_train.py::test_preemption_exits_75_and_a_second_trainer_is_locked_out",
    (TRAIN, 3): "test_faults_train.py::test_running_out_of_data_exits_3_with_the_state_saved",
    (TRAIN, 4): "test_faults_train.py::test_non_finite_gradients_stop_before_anything_is_saved",
    (TRAIN, 5): "test_faults_train.py::test_a_full_disk_stops_the_run_at_the_failing_save",
    (TRAIN, 75): "test_faults_train.py::test_preemption_exits_75_and_a_second_trainer_is_locked_out",
    (EVAL, 6): "test_eval.py::test_nothing_scored_is_an_error_with_the_reason",
    (DATAGEN, 7): "test_datagen_openai.py::test_fallbacks_are_reported_and_overwrite_keeps_paid_answers",
    (DEMO, 0): "test_demo.py::test_demo_quick_runs_from_a_non_editable_install_anywhere",
}


# ---- running a tool --------------------------------------------------------------------------

@dataclasses.dataclass
class Exit:
  prog: str
  code: int
  out: str
  err: str
  interrupted: bool = False  # the injected error was Ctrl-C (Ctx.interrupt)

  @property
  def err_lines(self) -> list[str]:
    """stderr's lines, without progress bars (redrawn with carriage returns)."""
    return [line for line in self.err.split("\n") if line.strip() and "\r" not in line]

  def refused(self, *named: str) -> str:
    """Exit 2 with one line on stderr, `PROG: error: ...`, naming each of `named`."""
    assert self.code == 2, (self.code, self.err[-3000:])
    assert len(self.err_lines) == 1, self.err
    line = self.err_lines[0]
    assert line.startswith(self.prog) and ": error: " in line, line  # a subcommand: PROG CMD
    for name in named:
      assert name in line, (name, line)
    return line

  def unexpected(self) -> None:
    """Exit 1 with the traceback of the injected error, then the one-line summary; for an
    injected Ctrl-C, 75 or 130 (RESUMABLE) and one line."""
    if self.interrupted:
      code = 75 if self.prog in RESUMABLE else 130
      assert self.code == code, (self.code, self.err[-3000:])
      assert self.err_lines[-1].startswith(f"{self.prog}: interrupted"), self.err
      assert "Traceback" not in self.err, self.err
      return
    assert self.code == 1, (self.code, self.err[-3000:])
    assert "Traceback (most recent call last):" in self.err and "RuntimeError: injected" in self.err
    assert self.err_lines[-1] == f"{self.prog}: unexpected error (exit 1): RuntimeError: injected"

  def one_line(self, code: int, *named: str) -> str:
    """Exit `code` with one line on stderr naming each of `named`."""
    assert self.code == code, (self.code, self.err[-3000:])
    assert len(self.err_lines) == 1, self.err
    line = self.err_lines[0]
    assert line.startswith(f"{self.prog}: error: "), line
    for name in named:
      assert name in line, (name, line)
    return line


@dataclasses.dataclass
class Ctx:
  tmp: Path
  capfd: Any
  monkeypatch: pytest.MonkeyPatch
  assets: "Assets"
  interrupt: bool = False  # inject() raises KeyboardInterrupt (Ctrl-C) instead

  def run(self, prog: str, main: Callable, argv: list[str] | None = None) -> Exit:
    self.capfd.readouterr()
    code = exit_code(main, argv, prog, resumable=prog in RESUMABLE)
    out, err = self.capfd.readouterr()
    return Exit(prog, code, out, err, self.interrupt)

  def inject(self, target: Any, name: str) -> None:
    """`target.name` raises RuntimeError("injected"): an error nobody planned for (or Ctrl-C,
    with `interrupt`)."""
    def boom(*args, **kwargs):
      raise KeyboardInterrupt() if self.interrupt else RuntimeError("injected")
    self.monkeypatch.setattr(target, name, boom)

  def quiet_logging_setup(self) -> None:
    """The tools set absl's verbosity and logging filters for their process; not this one's."""
    from absl import logging as absl_logging

    self.monkeypatch.setattr(absl_logging, "set_verbosity", lambda level: None)


CASES: dict[tuple[str, int], Callable[[Ctx], None]] = {}


def case(tool: str, code: int):
  def register(fn):
    CASES[(tool, code)] = fn
    return fn
  return register


# ---- shared inputs ---------------------------------------------------------------------------

@dataclasses.dataclass
class Assets:
  good: Path  # a training workdir (params, optimizer and data state, run config): finite
  nan: Path  # the same with a NaN in one parameter
  image: Path  # a small PNG
  data: Path  # model-mode eval data: test_VG.json and its image


def write_workdir(workdir: Path, cfg, nan: bool) -> Path:
  """A trainer's workdir as train.py leaves it (every item of a train checkpoint), tiny."""
  import orbax.checkpoint as ocp

  from bird_jax.checkpoint import orbax as ckpt
  from bird_jax.model import abstract_model
  from bird_jax.train.checkpointing import DATA, OPT, RUN_CONFIG
  from bird_jax.tree_paths import flatten

  rng = np.random.default_rng(0)
  params = {p: (0.02 * rng.standard_normal(v.shape)).astype(v.dtype)
            for p, v in flatten(nnx.state(abstract_model(cfg))).items()}
  if nan:
    params["llm.ln_f.weight"].flat[0] = np.nan
  manager = ckpt.checkpoint_manager(workdir / "checkpoints", extra_handlers={
      OPT: ocp.StandardCheckpointHandler(), DATA: ocp.JsonCheckpointHandler()})
  ckpt.save(manager, 2, params=params, config=cfg, extra={
      OPT: ocp.args.StandardSave({"mu": np.zeros(3, np.float32)}),
      DATA: ocp.args.JsonSave({"streams": {}}), RUN_CONFIG: ocp.args.JsonSave({"lora": {}})})
  manager.wait_until_finished()
  manager.close()
  (workdir / "config.json").write_text("{}")
  return workdir


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tiny_cfg) -> Assets:
  d = tmp_path_factory.mktemp("exit_codes")
  image = d / "scan.png"
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8)).save(image)
  data = d / "eval_data"
  (data / "images").mkdir(parents=True)
  Image.open(image).save(data / "images" / "ct_00--A--c1--z_0001.png")
  (data / "test_VG.json").write_text(json.dumps([{"id": "ct_00--A--c1--z_0001", "conversations": [
      {"from": "user", "value": "Picture 1: <img>ct_00--A--c1--z_0001.png</img>\nWhere is it?"},
      {"from": "assistant", "value": "<ref>liver</ref><box>(100,120),(400,500)</box>"}]}]))
  return Assets(write_workdir(d / "good", tiny_cfg, nan=False),
                write_workdir(d / "nan", tiny_cfg, nan=True), image, data)


@pytest.fixture
def ctx(tmp_path, capfd, monkeypatch, assets) -> Ctx:
  return Ctx(tmp_path, capfd, monkeypatch, assets)


# ---- train.py --------------------------------------------------------------------------------

def train_config(ctx: Ctx, **fields):
  from bird_jax.train.config import default_config

  c = default_config()
  c.model.preset = "tiny"
  c.data.shards = str(ctx.tmp / "shards")
  c.train.workdir = str(ctx.tmp / "run")
  for key, value in fields.items():
    section, name = key.split("__")
    c[section][name] = value
  return c


def run_train(ctx: Ctx, c) -> Exit:
  from bird_jax.train import checkpointing
  from bird_jax.train.cli import main

  ctx.quiet_logging_setup()
  ctx.monkeypatch.setattr(checkpointing, "quiet_background_save_logs", lambda: None)
  return ctx.run(TRAIN, lambda argv: main(c))


def stub_train(ctx: Ctx, outcome: Any) -> None:
  """train() returns `outcome` (a TrainResult) or raises it (an exception)."""
  from bird_jax.train import loop

  def train(c, probe=None):
    if isinstance(outcome, BaseException):
      raise outcome
    return outcome
  ctx.monkeypatch.setattr(loop, "train", train)


def train_stopped(ctx: Ctx, stopped_by: str, code: int, said: str) -> None:
  from bird_jax.train.loop import TrainResult

  stub_train(ctx, TrainResult(8, stopped_by, {"loss": 0.5}))
  r = run_train(ctx, train_config(ctx))
  assert r.code == code and not r.err_lines, r
  assert f"stopped at step 8 ({stopped_by}: " in r.out and said in r.out


@case(TRAIN, 0)
def train_done(ctx: Ctx) -> None:
  train_stopped(ctx, "done", 0, "finished")


@case(TRAIN, 3)
def train_out_of_data(ctx: Ctx) -> None:
  train_stopped(ctx, "data", 3, "out of data (state saved)")


@case(TRAIN, 75)
def train_preempted(ctx: Ctx) -> None:
  train_stopped(ctx, "signal", 75, "preempted or out of time: state saved, rerun to resume")
  train_stopped(ctx, "time", 75, "preempted or out of time: state saved, rerun to resume")


@case(TRAIN, 1)
def train_unexpected(ctx: Ctx) -> None:
  from bird_jax.train import loop

  ctx.inject(loop, "check_shards")
  run_train(ctx, train_config(ctx)).unexpected()


@case(TRAIN, 2)
def train_refused(ctx: Ctx) -> None:
  for fields, named in (
      ({"model__preset": "tiny7"}, ("model.preset", "'tiny7'")),
      ({"init__hf": "hf_dir", "init__ckpt": "ckpt_dir"}, ("init.hf", "init.ckpt")),
      ({"mesh__data": 3}, ("mesh", "there are 8")),
      ({}, ("data.shards", str(ctx.tmp / "shards")))):
    run_train(ctx, train_config(ctx, **fields)).refused(*named)
    assert not (ctx.tmp / "run").exists()  # refused before the workdir was touched


@case(TRAIN, 4)
def train_non_finite(ctx: Ctx) -> None:
  from bird_jax.train.loop import NonFiniteLoss

  stub_train(ctx, NonFiniteLoss("step 5: loss is nan, grad norm nan, param norm nan"))
  run_train(ctx, train_config(ctx)).one_line(4, "step 5: loss is nan")


@case(TRAIN, 5)
def train_save_failed(ctx: Ctx) -> None:
  from bird_jax.train.checkpointing import SaveFailed

  stub_train(ctx, SaveFailed("checkpoint step 2 could not be written to x/2: [Errno 28] ..."))
  run_train(ctx, train_config(ctx)).one_line(5, "checkpoint step 2 could not be written")


# ---- eval.py ---------------------------------------------------------------------------------

def run_eval(ctx: Ctx, *, ckpt: str = "", data: str = "", predictions=(), task=(),
             **config) -> Exit:
  from bird_jax.evaluation import cli
  from bird_jax.evaluation.config import default_config

  c = default_config()
  c.gallery, c.tasks = 0, ("vg",)
  for key, value in config.items():
    if isinstance(value, dict):
      c[key].update(value)
    else:
      c[key] = value
  flags = argparse.Namespace(ckpt=ckpt, data=data, predictions=list(predictions),
                             task=list(task), out=str(ctx.tmp / "out"))
  return ctx.run(EVAL, lambda argv: cli.main(c, flags))


def vg_predictions(path: Path, n: int = 2) -> Path:
  from bird_jax.evaluation.predictions import Prediction, write_predictions

  write_predictions(path, [Prediction(f"s{i}", f"ct_{i}.png", "Where is the liver?",
                                      "<ref>liver</ref><box>(10,10),(400,400)</box>",
                                      "<box>(12,10),(400,390)</box>") for i in range(n)])
  return path


@case(EVAL, 0)
def eval_scores(ctx: Ctx) -> None:
  r = run_eval(ctx, predictions=[str(vg_predictions(ctx.tmp / "vg.jsonl"))], task=["vg"])
  assert r.code == 0 and not r.err_lines, r.err
  assert "written: " in r.out and (ctx.tmp / "out" / "report.json").exists()


@case(EVAL, 6)
def eval_nothing_scored(ctx: Ctx) -> None:
  (ctx.tmp / "empty.jsonl").write_text("")
  r = run_eval(ctx, predictions=[str(ctx.tmp / "empty.jsonl")], task=["vg"])
  assert r.code == 6
  assert r.err_lines == ["eval.py: warning: vg: nothing scored: the prediction file holds no "
                         "samples"]


@case(EVAL, 2)
def eval_refused(ctx: Ctx) -> None:
  a = ctx.assets
  good = str(vg_predictions(ctx.tmp / "vg.jsonl"))
  run_eval(ctx, predictions=[good], task=["vgg"]).refused("--task 'vgg'")
  run_eval(ctx, predictions=[good]).refused("--task")
  run_eval(ctx, predictions=[str(ctx.tmp / "nowhere.jsonl")], task=["vg"]).refused(
      "nowhere.jsonl: No such file or directory")
  (ctx.tmp / "bad.jsonl").write_text("not json\n")
  run_eval(ctx, predictions=[str(ctx.tmp / "bad.jsonl")], task=["vg"]).refused(
      "bad.jsonl:1", "not valid JSON")
  run_eval(ctx, ckpt=str(a.good)).refused("--data")
  run_eval(ctx, ckpt=str(a.good), data=str(ctx.tmp / "nodata")).refused("nodata")
  run_eval(ctx, ckpt=str(ctx.tmp / "nockpt"), data=str(a.data)).refused("--ckpt", "nockpt")
  run_eval(ctx, ckpt=str(a.good), data=str(a.data), tasks=("vg", "caption")).refused(
      "config.tasks", "'caption'")
  run_eval(ctx, ckpt=str(a.good), data=str(a.data), model_preset="tiny7").refused(
      "config.model_preset", "tiny7")
  run_eval(ctx, ckpt=str(a.good), data=str(a.data),
           mesh={"data": 3, "fsdp": 1, "tensor": 1}).refused("mesh")
  bare = ctx.tmp / "bare"
  bare.mkdir()
  (bare / "test_VG.json").write_text((a.data / "test_VG.json").read_text())
  run_eval(ctx, ckpt=str(a.good), data=str(bare)).refused("vg: 1 image(s) not found")
  assert not (ctx.tmp / "out").exists()  # nothing written


@case(EVAL, 4)
def eval_non_finite(ctx: Ctx) -> None:
  r = run_eval(ctx, ckpt=str(ctx.assets.nan), data=str(ctx.assets.data))
  r.one_line(4, "NaN/inf")
  assert not (ctx.tmp / "out").exists()


@case(EVAL, 1)
def eval_unexpected(ctx: Ctx) -> None:
  from bird_jax.evaluation import cli

  ctx.inject(cli, "score_task")
  run_eval(ctx, predictions=[str(vg_predictions(ctx.tmp / "vg.jsonl"))], task=["vg"]).unexpected()


# ---- python -m datagen -----------------------------------------------------------------------

def datagen_args(out: Path, *extra: str) -> list[str]:
  return ["--source", "phantom", "--out", str(out), "--num-images", "8", "--image-size", "32",
          "--chunk-size", "4", "--workers", "1", "--no-progress", *extra]


def run_datagen(ctx: Ctx, argv: list[str]) -> Exit:
  from datagen.cli import main

  return ctx.run(DATAGEN, main, argv)


@case(DATAGEN, 0)
def datagen_done(ctx: Ctx) -> None:
  r = run_datagen(ctx, datagen_args(ctx.tmp / "d"))
  assert r.code == 0 and not r.err_lines, r.err
  assert list((ctx.tmp / "d" / "train").glob("*.array_record"))


@case(DATAGEN, 2)
def datagen_refused(ctx: Ctx) -> None:
  run_datagen(ctx, ["--source", "samed2d", "--out", str(ctx.tmp / "x")]).refused("--root")
  run_datagen(ctx, datagen_args(ctx.tmp / "x", "--num-images", "-3")).refused("num")
  run_datagen(ctx, ["--source", "phantom"]).refused("--out")  # argparse's own error
  run_datagen(ctx, ["--source", "mri", "--out", "x"]).refused("--source", "'mri'")
  assert not (ctx.tmp / "x").exists()
  assert run_datagen(ctx, datagen_args(ctx.tmp / "d")).code == 0
  run_datagen(ctx, datagen_args(ctx.tmp / "d", "--seed", "1")).refused(
      "other options (differing: seed)")


@case(DATAGEN, 7)
def datagen_too_many_fallbacks(ctx: Ctx) -> None:
  """Every conversation rejected: exit 7, and nothing where train.py reads (the chunks wait
  under .work); a rerun that accepts them publishes them without paying again."""
  from test_datagen_openai import KEY, FakeLLM, is_conversation

  server = FakeLLM(fault=lambda req, first: "hallucinate" if is_conversation(req) else None)
  try:
    ctx.monkeypatch.setenv("OPENAI_API_KEY", KEY)
    out = ctx.tmp / "llm"
    argv = datagen_args(out, "--backend", "openai", "--base-url", server.url, "--model", "m",
                        "--max-attempts", "1", "--timeout", "5")
    line = run_datagen(ctx, argv).one_line(7, "fell back to template text",
                                           "nothing was published")
    assert re.search(r"(\d+) of \1 images \(100%\)", line), line
    assert not (out / "train").exists() and not (out / "test").exists()
    assert not (out / "medgrit").exists() and not (out / "summary.json").exists()
    assert list((out / ".work" / "shards" / "train").glob("*.array_record"))
    paid = server.paid
    r = run_datagen(ctx, argv + ["--max-fallback-fraction", "1"])
    assert r.code == 0, r.err
    assert list((out / "train").glob("*.array_record")) and server.paid == paid
  finally:
    server.close()


@case(DATAGEN, 1)
def datagen_unexpected(ctx: Ctx) -> None:
  from datagen import cli

  ctx.inject(cli, "generate")
  run_datagen(ctx, datagen_args(ctx.tmp / "d")).unexpected()


# ---- python -m bird_jax.convert --------------------------------------------------------------

def run_convert(ctx: Ctx, argv: list[str]) -> Exit:
  from bird_jax import convert

  return ctx.run(CONVERT, convert.main, argv)


@case(CONVERT, 0)
def convert_done(ctx: Ctx) -> None:
  r = run_convert(ctx, ["inspect", str(ctx.assets.good)])  # a workdir: its checkpoints/
  assert r.code == 0 and not r.err_lines and "parameters match model_config" in r.out, r.err


@case(CONVERT, 2)
def convert_refused(ctx: Ctx) -> None:
  run_convert(ctx, ["inspect", str(ctx.tmp / "nowhere")]).refused("nowhere")
  run_convert(ctx, ["hf-to-jax", "--hf", str(ctx.tmp / "nohf"), "--out", "x"]).refused("nohf")
  run_convert(ctx, ["jax-to-hf", "--ckpt", str(ctx.assets.good), "--out", "x",
                    "--dtype", "int8"]).refused("--dtype", "'int8'")
  (ctx.tmp / "full").mkdir()
  (ctx.tmp / "full" / "notes.txt").write_text("")
  run_convert(ctx, ["jax-to-hf", "--ckpt", str(ctx.assets.good), "--out",
                    str(ctx.tmp / "full")]).refused("full", "not empty")
  r = run_convert(ctx, ["inspect", str(ctx.assets.nan)])  # the report, then one line
  r.refused(str(ctx.assets.nan), "not usable")
  assert "NOT USABLE as it is" in r.out


@case(CONVERT, 4)
def convert_non_finite(ctx: Ctx) -> None:
  out = ctx.tmp / "hf"
  run_convert(ctx, ["jax-to-hf", "--ckpt", str(ctx.assets.nan), "--out", str(out)]).one_line(
      4, "transformer.ln_f.weight holds 1 NaN/inf")
  assert not out.exists()


@case(CONVERT, 1)
def convert_unexpected(ctx: Ctx) -> None:
  from bird_jax import convert

  ctx.inject(convert, "inspect")
  run_convert(ctx, ["inspect", str(ctx.assets.good)]).unexpected()


# ---- python -m bird_jax.chat and python -m bird_jax.serve ------------------------------------

def run_chat(ctx: Ctx, argv: list[str]) -> Exit:
  from bird_jax.chat.__main__ import main

  def no_more_input(prompt=""):
    raise EOFError
  ctx.monkeypatch.setattr("builtins.input", no_more_input)
  return ctx.run(CHAT, main, argv + ["--out", str(ctx.tmp / "chat")])


@case(CHAT, 0)
def chat_done(ctx: Ctx) -> None:
  r = run_chat(ctx, ["--image", str(ctx.assets.image), "--ckpt", str(ctx.assets.good)])
  assert r.code == 0 and not r.err_lines, r.err
  assert "Ask a question" in r.out


@case(CHAT, 2)
def chat_refused(ctx: Ctx) -> None:
  good = str(ctx.assets.good)
  run_chat(ctx, ["--image", str(ctx.tmp / "none.png"), "--ckpt", good]).refused(
      "--image", "none.png")
  run_chat(ctx, ["--image", str(ctx.assets.image), "--ckpt", str(ctx.tmp / "nockpt")]).refused(
      "--ckpt", "nockpt")
  run_chat(ctx, ["--image", str(ctx.assets.image), "--temperature", "-1"]).refused(
      "--temperature")
  run_chat(ctx, ["--ckpt", good]).refused("--image")  # argparse's own error
  (ctx.tmp / "text.png").write_text("not an image")
  run_chat(ctx, ["--image", str(ctx.tmp / "text.png"), "--ckpt", good]).refused(
      "--image", "text.png")


@case(CHAT, 4)
def chat_non_finite(ctx: Ctx) -> None:
  run_chat(ctx, ["--image", str(ctx.assets.image), "--ckpt", str(ctx.assets.nan)]).one_line(
      4, "NaN/inf")


@case(CHAT, 1)
def chat_unexpected(ctx: Ctx) -> None:
  from bird_jax import assistant

  ctx.inject(assistant.Assistant, "load")
  run_chat(ctx, ["--image", str(ctx.assets.image), "--ckpt", str(ctx.assets.good)]).unexpected()


def run_serve(ctx: Ctx, argv: list[str]) -> Exit:
  from bird_jax.serve.__main__ import main

  return ctx.run(SERVE, main, argv)


@case(SERVE, 2)
def serve_refused(ctx: Ctx) -> None:
  run_serve(ctx, ["--batch-size", "0"]).refused("--batch-size")
  run_serve(ctx, ["--ckpt", str(ctx.tmp / "nockpt")]).refused("--ckpt", "nockpt")
  run_serve(ctx, ["--port", "http"]).refused("--port", "'http'")


@case(SERVE, 4)
def serve_non_finite(ctx: Ctx) -> None:
  run_serve(ctx, ["--ckpt", str(ctx.assets.nan)]).one_line(4, "NaN/inf")


@case(SERVE, 1)
def serve_unexpected(ctx: Ctx) -> None:
  from bird_jax import assistant

  ctx.inject(assistant.Assistant, "load")
  run_serve(ctx, ["--ckpt", str(ctx.assets.good)]).unexpected()


# ---- python -m bird_jax.plan -----------------------------------------------------------------

class PlanFlags(types.SimpleNamespace):
  """What plan.main reads of absl's FLAGS (its flags are defined by its __main__ only)."""

  def __getitem__(self, name):
    return types.SimpleNamespace(value=getattr(self, name))


def run_plan(ctx: Ctx, mesh: str) -> Exit:
  from bird_jax import plan
  from bird_jax.train.config import default_config

  ctx.quiet_logging_setup()
  f = PlanFlags(mesh=mesh, cpu_licm=False, config=default_config(), per_device_batch=None,
                peak_tflops=312.0, mfu=0.4, device_gib=80.0)
  ctx.monkeypatch.setattr(plan, "flags", types.SimpleNamespace(FLAGS=f))
  ctx.monkeypatch.setattr(plan, "config_flags", types.SimpleNamespace(
      get_config_filename=lambda flag: "configs/demo.py"))
  ctx.monkeypatch.setattr(plan, "planner_env", lambda n, licm=False: {})
  return ctx.run(PLAN, plan.main, [])


@case(PLAN, 0)
def plan_done(ctx: Ctx) -> None:
  from bird_jax import plan

  ctx.monkeypatch.setattr(plan, "plan", lambda c, mesh, per_device_batch=None: plan.Plan(
      **{f.name: 1 for f in dataclasses.fields(plan.Plan)}))
  r = run_plan(ctx, "fsdp=4")
  assert r.code == 0 and not r.err_lines and "step time" in r.out, r.err


@case(PLAN, 2)
def plan_refused(ctx: Ctx) -> None:
  run_plan(ctx, "fsdp=2,pipeline=2").refused("--mesh", "'pipeline'")
  run_plan(ctx, "fsdp=two").refused("--mesh", "'fsdp=two'")


@case(PLAN, 1)
def plan_unexpected(ctx: Ctx) -> None:
  from bird_jax import plan

  ctx.inject(plan, "plan")
  run_plan(ctx, "fsdp=4").unexpected()


# ---- python -m bird_jax.data.medgrit ---------------------------------------------------------

def run_medgrit(ctx: Ctx, argv: list[str]) -> Exit:
  from bird_jax.data import medgrit

  return ctx.run(MEDGRIT, medgrit.main, argv)


def medgrit_json(ctx: Ctx) -> Path:
  path = ctx.tmp / "medgrit.json"
  path.write_text((ctx.assets.data / "test_VG.json").read_text())
  return path


@case(MEDGRIT, 0)
def medgrit_done(ctx: Ctx) -> None:
  images = str(ctx.assets.data / "images")
  r = run_medgrit(ctx, ["import", "--json", str(medgrit_json(ctx)), "--image-root", images,
                        "--out", str(ctx.tmp / "shards")])
  assert r.code == 0 and "wrote 1 records" in r.out, r.err
  r = run_medgrit(ctx, ["export", "--shards", str(ctx.tmp / "shards"), "--json",
                        str(ctx.tmp / "back.json")])
  assert r.code == 0 and json.loads((ctx.tmp / "back.json").read_text())[0]["id"]


@case(MEDGRIT, 2)
def medgrit_refused(ctx: Ctx) -> None:
  images = str(ctx.assets.data / "images")
  run_medgrit(ctx, ["import", "--json", str(ctx.tmp / "none.json"), "--image-root", images,
                    "--out", str(ctx.tmp / "s")]).refused("none.json")
  (ctx.tmp / "dict.json").write_text("{}")
  run_medgrit(ctx, ["import", "--json", str(ctx.tmp / "dict.json"), "--image-root", images,
                    "--out", str(ctx.tmp / "s")]).refused("dict.json", "expected a JSON list")
  run_medgrit(ctx, ["import", "--json", str(medgrit_json(ctx)), "--image-root",
                    str(ctx.tmp), "--out", str(ctx.tmp / "s")]).refused("ct_00--A--c1--z_0001")
  run_medgrit(ctx, ["export", "--shards", str(ctx.tmp / "noshards"), "--json",
                    str(ctx.tmp / "x.json")]).refused("--shards", "noshards")
  assert not (ctx.tmp / "s").exists() and not (ctx.tmp / "x.json").exists()


@case(MEDGRIT, 1)
def medgrit_unexpected(ctx: Ctx) -> None:
  from bird_jax.data import medgrit

  ctx.inject(medgrit, "write_shards")
  run_medgrit(ctx, ["import", "--json", str(medgrit_json(ctx)), "--image-root",
                    str(ctx.assets.data / "images"), "--out", str(ctx.tmp / "s")]).unexpected()


# ---- python -m bird_jax_demo and python -m bird_jax_demo.base --------------------------------

def stub_demo(ctx: Ctx, stopped_by: str = "done") -> list[str]:
  """The demo's stages as stand-ins (the real run: tests/test_demo.py); returns the stages
  called, in order."""
  from bird_jax.train.loop import TrainResult
  from bird_jax_demo import run

  called = []
  images = {"images": 1, "cases": 1}
  ctx.monkeypatch.setattr(run, "stage_datagen", lambda settings, out: called.append("datagen")
                          or {"split": {"train": images, "test": images}, "per_task": {}})
  ctx.monkeypatch.setattr(run, "stage_train", lambda c, data, workdir: called.append("train")
                          or TrainResult(4, stopped_by, {"loss": 0.5}))
  ctx.monkeypatch.setattr(run, "stage_eval", lambda settings, workdir, data, out: called.append(
      "eval") or types.SimpleNamespace(markdown="| table |", paths={}))
  return called


def run_demo(ctx: Ctx, config=None) -> Exit:
  from bird_jax_demo import run
  from bird_jax_demo.config import get_config

  ctx.quiet_logging_setup()
  c = get_config() if config is None else config
  return ctx.run(DEMO, lambda argv: run.run(c, ctx.tmp / "demo", "the demo config"))


@case(DEMO, 0)
def demo_done(ctx: Ctx) -> None:
  called = stub_demo(ctx)
  r = run_demo(ctx)
  assert r.code == 0 and not r.err_lines and "| table |" in r.out, r.err
  assert called == ["datagen", "train", "eval"]


@case(DEMO, 75)
def demo_preempted(ctx: Ctx) -> None:
  called = stub_demo(ctx, "signal")
  r = run_demo(ctx)
  assert r.code == 75 and "rerun the same command to continue" in r.out
  assert called == ["datagen", "train"]  # no eval of a half-trained model


@case(DEMO, 2)
def demo_refused(ctx: Ctx) -> None:
  import ml_collections

  from bird_jax_demo import run

  run_demo(ctx, ml_collections.ConfigDict({"train": {}})).refused("`demo` block")
  ctx.monkeypatch.setattr(sys, "argv", ["bird_jax_demo", "--quick", "--config=mine.py"])
  r = ctx.run(DEMO, lambda argv: run.expand_quick("bird_jax_demo", run.DEMO_CONFIG))
  r.refused("--quick", "--config=FILE:quick")


@case(DEMO, 1)
def demo_unexpected(ctx: Ctx) -> None:
  from bird_jax_demo import run

  stub_demo(ctx)
  ctx.inject(run, "stage_datagen")
  run_demo(ctx).unexpected()


def run_base(ctx: Ctx, stopped_by: str = "done", fail: str = "") -> tuple[Exit, list[str]]:
  """bird_jax_demo.base's run with its stages as stand-ins (the real run: test_demo_base.py)."""
  from bird_jax.train import loop
  from bird_jax.train.loop import TrainResult
  from bird_jax_demo import base
  from bird_jax_demo.base_config import get_config

  called = []
  images = {"images": 1, "cases": 1}
  ctx.monkeypatch.setattr(base, "datagen", lambda b, name, out: called.append(name)
                          or {"split": {"train": images, "test": images}, "per_task": {}})
  ctx.monkeypatch.setattr(base, "GroundingProbe", lambda *a: types.SimpleNamespace(picked=[]))
  ctx.monkeypatch.setattr(loop, "train", lambda c, probe=None: called.append("train")
                          or TrainResult(4, stopped_by, {}))
  ctx.monkeypatch.setattr(base, "plot_probe", lambda workdir: None)
  ctx.monkeypatch.setattr(base, "export", lambda workdir, dest: called.append("export"))
  if fail:
    ctx.inject(base, fail)
  ctx.quiet_logging_setup()
  c = get_config()
  return ctx.run(BASE, lambda argv: base.run(c, ctx.tmp / "base", ctx.tmp / "out")), called


@case(BASE, 0)
def base_done(ctx: Ctx) -> None:
  r, called = run_base(ctx)
  assert r.code == 0 and not r.err_lines, r.err
  assert called == ["scenes", "listings", "probe", "train", "export"]


@case(BASE, 75)
def base_preempted(ctx: Ctx) -> None:
  r, called = run_base(ctx, "signal")
  assert r.code == 75 and "rerun the same command to continue" in r.out
  assert "export" not in called


@case(BASE, 2)
def base_refused(ctx: Ctx) -> None:
  from bird_jax_demo import base, run

  ctx.monkeypatch.setattr(sys, "argv", ["base", "--quick", "--config", "mine.py"])
  r = ctx.run(BASE, lambda argv: run.expand_quick("bird_jax_demo.base", base.BASE_CONFIG))
  r.refused("--quick")


@case(BASE, 1)
def base_unexpected(ctx: Ctx) -> None:
  r, _ = run_base(ctx, fail="datagen")
  r.unexpected()


# ---- python -m bird_jax.audit -----------------------------------------------------------------

def audited_folder(ctx: Ctx) -> Path:
  """A run folder holding one output and its manifest, written in this environment."""
  from bird_jax.manifest import Manifest

  run = ctx.tmp / "converted"
  run.mkdir()
  (run / "weights.bin").write_bytes(b"weights")
  m = Manifest(run, "convert", {"command": "hf-to-jax"}, write=False)
  m.hash_now("outputs", "files", [run / "weights.bin"])
  m.close(outcome="done")
  return run


def run_audit(ctx: Ctx, *argv: Any) -> Exit:
  from bird_jax.audit.__main__ import main

  return ctx.run(AUDIT, main, [str(a) for a in argv])


@case(AUDIT, 0)
def audit_matches(ctx: Ctx) -> None:
  r = run_audit(ctx, audited_folder(ctx))
  assert r.code == 0 and not r.err_lines, r.err
  assert r.out.strip().splitlines()[-1].endswith("everything matches (exit 0)")


@case(AUDIT, 8)
def audit_content_differs(ctx: Ctx) -> None:
  run = audited_folder(ctx)
  (run / "weights.bin").write_bytes(b"weighs")
  r = run_audit(ctx, run)
  assert r.code == 8 and not r.err_lines, r.err
  assert r.out.startswith("mismatch: output weights.bin: content changed (sha256 ")


@case(AUDIT, 9)
def audit_environment_differs(ctx: Ctx) -> None:
  run = audited_folder(ctx)
  data = json.loads((run / "manifest.json").read_text())
  data["segments"][-1]["environment"]["packages"]["jax"] = "0.0.1"
  (run / "manifest.json").write_text(json.dumps(data))
  r = run_audit(ctx, run)
  assert r.code == 9 and not r.err_lines, r.err
  assert r.out.startswith("environment: packages.jax: '0.0.1' -> ")


@case(AUDIT, 2)
def audit_refused(ctx: Ctx) -> None:
  from bird_jax.manifest import Manifest
  from bird_jax.train.workdir import WorkdirLock

  run_audit(ctx, ctx.tmp / "nowhere").refused("nowhere/manifest.json: no manifest")
  run_audit(ctx, audited_folder(ctx), "--replay", "2").refused("--replay", "convert run")
  workdir = ctx.tmp / "workdir"
  Manifest(workdir, "train", {}, with_devices=False).close(outcome="done")
  with WorkdirLock(workdir):
    run_audit(ctx, workdir).refused(str(workdir), "a training run is writing it")


@case(AUDIT, 1)
def audit_unexpected(ctx: Ctx) -> None:
  from bird_jax import audit

  ctx.inject(audit, "check_files")
  run_audit(ctx, audited_folder(ctx)).unexpected()


# ---- the walk --------------------------------------------------------------------------------

def documented() -> set[tuple[str, int]]:
  """(tool, code) for every row of docs/faults.md's exit-code table."""
  section = (ROOT / "docs" / "faults.md").read_text().split("## Exit codes", 1)[1]
  section = section.split("\n## ", 1)[0]
  rows = [line for line in section.splitlines() if re.match(r"\| \d+ \|", line)]
  assert rows, "no exit-code table in docs/faults.md"
  pairs = set()
  for row in rows:
    code, _, who = [cell.strip() for cell in row.strip("|").split("|")]
    tools = TOOLS if who.startswith("all") else re.findall(r"`([^`]+)`", who)
    pairs |= {(tool, int(code)) for tool in tools}
  return pairs


def _ctrl_c(tool: str) -> Callable[[Ctx], None]:
  """The tool's exit-1 case with Ctrl-C injected instead of an error."""
  def check(ctx: Ctx) -> None:
    ctx.interrupt = True
    CASES[(tool, 1)](ctx)
  return check


for _tool in TOOLS:
  _code = 75 if _tool in RESUMABLE else 130
  CASES.setdefault((_tool, _code), _ctrl_c(_tool))


def test_the_table_names_the_tools_and_every_code_has_a_case():
  pairs = documented()
  assert {tool for tool, _ in pairs} == set(TOOLS)
  missing = sorted(p for p in pairs - set(CASES) if p not in NOT_APPLICABLE)
  assert not missing, f"documented exit codes without a case here: {missing}"
  assert not set(CASES) - pairs, f"cases of undocumented codes: {sorted(set(CASES) - pairs)}"
  for where in ELSEWHERE.values():
    module, name = where.split("::")
    assert f"def {name}(" in (ROOT / "tests" / module).read_text(), where


@pytest.mark.parametrize("tool, code", sorted(CASES, key=lambda p: (TOOLS.index(p[0]), p[1])),
                         ids=lambda x: str(x).replace("python -m ", ""))
def test_exit_code(tool, code, ctx):
  CASES[(tool, code)](ctx)


def test_loading_a_trained_workdir_for_inference_warns_about_nothing(assets, capfd, caplog):
  """A train checkpoint also holds the optimizer and data state, which inference does not
  read; loading it must not print the checkpoint library's warnings about them (nor about the
  read-only folder it was opened as)."""
  import logging

  from bird_jax.pretrained import load_pretrained

  capfd.readouterr()
  with caplog.at_level(logging.WARNING):
    model, _, cfg = load_pretrained(assets.good)
  _, err = capfd.readouterr()
  assert cfg.llm.layers > 0 and model is not None
  assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  assert "WARNING" not in err, err


# ---- the absl tools' flags, in their own process ---------------------------------------------

@pytest.mark.e2e
def test_absl_flags_that_do_not_parse_are_refused_in_one_line():
  """An unknown --config field, with the config file given (train.py) or the default one
  (eval.py, whose default is read as its flags are defined), and a bad value."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
         "JAX_PLATFORMS": "cpu"}
  commands = {
      ("train.py", "train.py: error: --config.optim.lrr: no such config field (did you mean lr?)"):
          ["train.py", "--config", "configs/demo.py", "--config.optim.lrr=1"],
      ("eval.py", "eval.py: error: --config.nope: no such config field"):
          ["eval.py", "--config.nope=1"],
      ("eval.py", "eval.py: error: flag --config.limit=ten: invalid literal for int() with "
                  "base 10: 'ten'"): ["eval.py", "--config.limit=ten"],
  }
  procs = {k: subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
           for k, argv in commands.items()}
  for (tool, line), proc in procs.items():
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and err.strip() == line, (tool, err[-2000:])
