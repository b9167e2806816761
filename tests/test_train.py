"""Training: sharded step equivalence, freezing, resume after kill -9, SIGTERM, NaN."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import image_row
from bird_jax import sharding
from bird_jax.data.shards import write_shards
from bird_jax.train import loop
from bird_jax.train import optimizer as O
from bird_jax.train import state as S
from bird_jax.train import step as T
from bird_jax.train.config import default_config
from bird_jax.train.logger import read_metrics
from bird_jax_testing.bounds import SHARDED_STEPS
from bird_jax_testing.records import synthetic_record

ROOT = Path(__file__).resolve().parents[1]


def run_config(shards: str, workdir: str, **train):
  c = default_config()
  c.model.preset = "tiny"
  c.freeze = list(O.BIRD_FREEZE)
  c.data.shards = shards
  c.data.batch_size, c.data.max_len, c.data.max_images_per_row = 4, 192, 2
  c.data.num_epochs = 0
  c.optim.lr, c.optim.warmup_steps = 1e-3, 2
  c.mesh.data = -1  # the subprocess runs see one device
  c.train.update({"workdir": workdir, "steps": 8, "log_every": 1, "ckpt_every": 2,
                  "tensorboard": False, **train})
  return c


def synthetic_batch(cfg, accum=2, rows=4, length=48):
  rng = np.random.default_rng(0)
  tokens = np.stack([np.stack([image_row(cfg, length, [3], seed=a * 10 + b) for b in range(rows)])
                     for a in range(accum)])
  labels = tokens.copy()
  labels[..., :20] = -100
  return dict(tokens=tokens, labels=labels, segment_ids=np.ones_like(tokens),
              positions=np.broadcast_to(np.arange(length, dtype=np.int32), tokens.shape).copy(),
              images=rng.integers(0, 255, (accum, rows, 1, 56, 56, 3)).astype(np.uint8))


def three_steps(cfg, mesh):
  tx, lr = O.make_optimizer(O.OptimConfig(lr=5e-5, warmup_steps=1), 10)
  with jax.set_mesh(mesh):
    layout = S.make_layout(cfg, O.BIRD_FREEZE, tx, mesh)
    params, frozen = S.random_params(cfg, O.BIRD_FREEZE, layout, seed=0)
    state = S.initial_state(params, tx, layout)
    initial = jax.device_get((state["params"], frozen))
    step = T.jit_step(T.make_train_step(layout.graphdef, tx, lr, T.StepConfig(loss_chunk=16), cfg.dtype),
                      layout.state_shardings, layout.frozen_shardings, mesh)
    losses = []
    for _ in range(3):
      state, metrics = step(state, frozen, synthetic_batch(cfg))
      losses.append(float(metrics["loss"]))
    return losses, initial, state, frozen


@pytest.fixture(scope="module")
def single_and_sharded(tiny_cfg):
  one = three_steps(tiny_cfg, sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
  eight = three_steps(tiny_cfg, sharding.make_mesh(2, 2, 2))
  return one, eight


def max_tree_diff(a, b) -> float:
  return max(jax.tree.leaves(jax.tree.map(
      lambda x, y: float(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).max()), a, b)))


@pytest.mark.heavy
def test_sharded_steps_equal_single_device(single_and_sharded):
  (l1, _, s1, _), (l8, _, s8, _) = single_and_sharded
  assert np.allclose(l1, l8, rtol=0, atol=SHARDED_STEPS) and l1[2] < l1[0]
  assert max_tree_diff(s1["params"], s8["params"]) <= SHARDED_STEPS
  kernel = s8["params"]["llm"]["h"]["mlp"]["w1"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  assert len({s.data.shape for s in kernel.addressable_shards}) == 1
  assert kernel.addressable_shards[0].data.shape == (2, 128, 256)  # [layers, 256/2, 512/2]


@pytest.mark.heavy
def test_frozen_parameters_stay_bit_identical(single_and_sharded):
  _, (_, (params0, frozen0), state, frozen) = single_and_sharded
  assert max_tree_diff(frozen0, frozen) == 0.0
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                         params0, state["params"])
  assert all(jax.tree.leaves(changed))
  paths = S.param_paths(frozen)
  assert any(p.startswith("visual.blocks") for p in paths)
  assert not any(p.startswith("visual.attn_pool.query") for p in paths)  # the resampler trains


@pytest.mark.heavy
def test_nan_loss_stops_with_step_and_batch(shards, tmp_path, monkeypatch):
  real = loop.global_batch
  calls = []

  def poisoned(micro, mesh):
    calls.append(1)
    batch = real(micro, mesh)
    if len(calls) == 3:
      nan = np.full(batch["images"].shape, np.nan, np.float32)
      batch["images"] = jax.device_put(nan, batch["images"].sharding)
    return batch

  monkeypatch.setattr(loop, "global_batch", poisoned)
  spies = closing_spies(monkeypatch)
  c = run_config(shards, str(tmp_path))
  c.mesh.update(data=4, fsdp=1, tensor=2)  # this process has 8 (host) devices
  with pytest.raises(loop.NonFiniteLoss, match=r"step 3: loss is nan.*data-iterator state.*"
                                              r"last good checkpoint is step 2"):
    loop.train(c)
  steps = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
  assert max(steps) == 2
  # the checkpointer's manager (its background saves), the data iterator and the logger closed
  # (the NaN message's read-back opens and closes no other manager)
  assert {k: s.calls for k, s in spies.items()} == {k: 1 for k in spies}


@pytest.mark.heavy
def test_max_minutes_saves_and_stops(shards, tmp_path, capsys):
  c = run_config(shards, str(tmp_path), steps=200, ckpt_every=1000, max_minutes=1e-6)
  c.mesh.update(data=4, fsdp=1, tensor=2)  # this process has 8 (host) devices
  result = loop.train(c)
  assert (result.step, result.stopped_by) == (1, "time")  # the limit passes during step 1
  assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()] == ["1"]
  assert "train.max_minutes (1e-06) reached: saved step 1" in "".join(capsys.readouterr())


def _launch(config_overrides: list[str]) -> subprocess.Popen:
  cmd = [sys.executable, str(ROOT / "tests" / "train_entry.py"), *config_overrides]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def _wait_for_step(workdir: Path, step: int, proc: subprocess.Popen, timeout: float = 300) -> None:
  t0 = time.time()
  while time.time() - t0 < timeout:
    if any(r["step"] >= step for r in read_metrics(str(workdir))):
      return
    if proc.poll() is not None:
      raise AssertionError(f"training exited early:\n{proc.stdout.read()}")
    time.sleep(0.2)
  raise AssertionError("timed out waiting for training")


@pytest.mark.e2e
def test_kill_and_resume_continues_the_uninterrupted_run(shards, tmp_path):
  args = lambda w: [f"--shards={shards}", f"--workdir={w}"]
  full = tmp_path / "full"
  assert _launch(args(full)).wait() == 0
  killed = tmp_path / "killed"
  proc = _launch(args(killed))
  _wait_for_step(killed, 5, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = time.time()
  assert _launch(args(killed)).wait() == 0
  ref = {r["step"]: r["loss"] for r in read_metrics(str(full))}
  rows = read_metrics(str(killed))
  # one row per step (rows logged after the checkpoint it resumed from were dropped and redone)
  assert [r["step"] for r in rows] == list(range(1, 9))
  kept = [r["step"] for r in rows if r["time"] < killed_at]
  assert 2 <= len(kept) <= 6 and kept == list(range(1, len(kept) + 1)), kept  # resumed, not restarted
  assert [r["loss"] for r in rows] == [ref[r["step"]] for r in rows]


@pytest.mark.e2e
def test_sigterm_saves_and_exits(shards, tmp_path):
  """Through the real CLI: train.py with a config file and --config overrides."""
  overrides = {"data.shards": shards, "train.workdir": tmp_path, "train.steps": 200,
               "train.ckpt_every": 1000, "train.log_every": 1, "train.tensorboard": False,
               "data.batch_size": 4, "data.max_len": 192, "optim.warmup_steps": 2,
               "freeze": '("^visual",)'}  # a tuple field: settable from the command line
  cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs" / "demo.py"),
         *(f"--config.{k}={v}" for k, v in overrides.items())]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  _wait_for_step(tmp_path, 3, proc)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 75, out  # exit_codes.PREEMPTED
  assert "(signal: preempted" in out
  saved = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
  last = max(r["step"] for r in read_metrics(str(tmp_path)))
  assert saved == [last] and 3 <= last < 200
  assert json.loads((tmp_path / "config.json").read_text())["freeze"] == ["^visual"]


def test_init_from_an_hf_folder(tiny_cfg, hf_weights, tiny_model, tmp_path):
  """init.hf: the HF tensors, converted on the fly and placed on a sharded mesh, are exactly
  the parameters of the model built from the same weights."""
  from bird_jax.tree_paths import flatten
  from bird_jax.checkpoint.safetensors_io import save_tensors
  from flax import nnx

  save_tensors(tmp_path, hf_weights, shard_size="200KB")
  (tmp_path / "config.json").write_text(json.dumps(tiny_cfg.to_hf_config()))
  mesh = sharding.make_mesh(4, 2, 1)
  tx, _ = O.make_optimizer(O.OptimConfig(), 10)
  with jax.set_mesh(mesh):
    layout = S.make_layout(tiny_cfg, O.BIRD_FREEZE, tx, mesh)
    params, frozen = S.loaded_params(layout, S.hf_param_sources(str(tmp_path), tiny_cfg),
                                     "the HF folder")
  got = {**flatten(jax.device_get(params)), **flatten(jax.device_get(frozen))}
  want = flatten(nnx.state(tiny_model))
  assert got.keys() == want.keys()
  assert all(np.array_equal(got[k], np.asarray(want[k])) for k in want)
  wte = params["llm"]["wte"]
  # the vocabulary is split over every model-parallel device; the hidden dimension is whole
  assert wte.sharding.spec == jax.sharding.PartitionSpec(("tensor", "fsdp"), None)
  assert wte.addressable_shards[0].data.shape == (256, 256)


def test_init_from_hf_rejects_another_architecture(tiny_cfg, hf_weights, tmp_path):
  from bird_jax.checkpoint.safetensors_io import save_tensors
  import dataclasses

  save_tensors(tmp_path, hf_weights)
  (tmp_path / "config.json").write_text(json.dumps(tiny_cfg.to_hf_config()))
  other = tiny_cfg.replace(llm=dataclasses.replace(tiny_cfg.llm, layers=3))
  with pytest.raises(ValueError, match="another architecture"):
    S.hf_param_sources(str(tmp_path), other)


@pytest.mark.heavy
def test_overfitting_a_few_records_reproduces_their_answers(tiny_cfg, tmp_path):
  """A handful of grounding records: the loss goes to ~0 and greedy decoding then writes the
  exact training answers, boxes included."""
  from flax import nnx

  from bird_jax import chatml
  from bird_jax.data.image import load_pixels
  from bird_jax.data.pipeline import DataConfig, make_dataset
  from bird_jax.generate import GenerationConfig, Generator
  from bird_jax.tokenizer import load_tokenizer

  records = [synthetic_record(i, image_size=56, n_turns=1) for i in range(4)]
  write_shards(records, tmp_path, progress=False)
  data = DataConfig(shards=str(tmp_path), batch_size=4, max_len=192, max_images_per_row=1,
                    packing="none", num_epochs=0, label_mode="assistant_only")
  batch = next(iter(make_dataset(data, tiny_cfg, process_index=0, process_count=1)))
  batch = {k: batch[k][None] for k in T.BATCH_KEYS}
  tx, lr = O.make_optimizer(O.OptimConfig(lr=3e-3, warmup_steps=10, weight_decay=0.0), 60)
  mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  with jax.set_mesh(mesh):
    layout = S.make_layout(tiny_cfg, [], tx, mesh)
    params, frozen = S.random_params(tiny_cfg, [], layout, seed=0)
    state = S.initial_state(params, tx, layout)
    step = T.jit_step(T.make_train_step(layout.graphdef, tx, lr, T.StepConfig(), tiny_cfg.dtype),
                      layout.state_shardings, layout.frozen_shardings, mesh)
    for _ in range(60):
      state, metrics = step(state, frozen, batch)
  assert float(metrics["loss"]) < 0.01 and float(metrics["accuracy"]) == 1.0

  model = nnx.merge(layout.graphdef, state["params"], frozen)
  tok = load_tokenizer(tiny_cfg)
  prompts = [chatml.encode_chat(tok, [{"from": "user", "value": r.conversations[0].value}],
                                n_image_tokens=tiny_cfg.vision.n_queries,
                                add_generation_prompt=True).ids for r in records]
  pixels = np.stack([load_pixels(r.image_bytes, 56)[None] for r in records])
  outputs = Generator(model, GenerationConfig.chat(tok, 64)).generate(prompts, pixels)
  for record, out in zip(records, outputs):
    assert tok.decode(out.tolist()) == record.conversations[1].value + "<|im_end|>"


def test_init_from_an_orbax_params_checkpoint(tiny_cfg, hf_weights, tiny_model, tmp_path):
  """init.ckpt: a `convert hf-to-jax` output initialises training with the same parameters."""
  from bird_jax.tree_paths import flatten
  from bird_jax.checkpoint.safetensors_io import save_tensors
  from bird_jax.convert import hf_to_jax
  from flax import nnx

  save_tensors(tmp_path / "hf", hf_weights)
  (tmp_path / "hf" / "config.json").write_text(json.dumps(tiny_cfg.to_hf_config()))
  hf_to_jax(tmp_path / "hf", tmp_path / "orbax", progress=False)
  c = default_config()
  c.init.ckpt = str(tmp_path / "orbax")
  mesh = sharding.make_mesh(4, 2, 1)
  tx, _ = O.make_optimizer(O.OptimConfig(), 10)
  with jax.set_mesh(mesh):
    layout = S.make_layout(tiny_cfg, O.BIRD_FREEZE, tx, mesh)
    params, frozen = loop.initial_params(c, tiny_cfg, layout, O.BIRD_FREEZE)
  got = {**flatten(jax.device_get(params)), **flatten(jax.device_get(frozen))}
  want = flatten(nnx.state(tiny_model))
  assert got.keys() == want.keys()
  assert all(np.array_equal(got[k], np.asarray(want[k])) for k in want)


# ---- resume: evidence, read errors, set-aside steps; closing on failure; FLOPs ---------------

def small_checkpoints(workdir: Path, steps=(2, 4), nan_at=()):
  """A TrainCheckpointer whose steps hold small params and optimizer arrays (NaN in the params
  of the steps in `nan_at`)."""
  import orbax.checkpoint as ocp

  from bird_jax.checkpoint import orbax as ockpt
  from bird_jax.train.checkpointing import DATA, OPT, TrainCheckpointer

  c = TrainCheckpointer(str(workdir), keep=10, async_save=False)
  for s in steps:
    w = np.full((4, 8), np.nan if s in nan_at else 1.0, np.float32)
    ockpt.save(c.manager, s, params={"llm": {"w": w}, "visual": {"b": np.zeros(3, np.float32)}},
               extra={OPT: ocp.args.StandardSave({"mu": np.zeros(5, np.float32)}),
                      DATA: ocp.args.JsonSave({"streams": {}})})
  return c


def failing_reads(monkeypatch, code: int, array: str = "llm.w") -> None:
  """Every read of `array` fails with OS error `code`, as a filesystem refusing it would."""
  from bird_jax.checkpoint import orbax as ockpt

  read = ockpt.ParamReader.read

  def read_or_fail(self, path, layer=None):
    if path == array:
      raise ValueError(f"reading {path} failed") from OSError(
          code, os.strerror(code), f"{self.arrays[path].directory}/d/0123")
    return read(self, path, layer)

  monkeypatch.setattr(ockpt.ParamReader, "read", read_or_fail)


@pytest.mark.parametrize("code", ["EIO", "EACCES", "ESTALE", "ETIMEDOUT"])
def test_a_read_error_moves_no_checkpoint_aside(tmp_path, monkeypatch, code):
  from bird_jax.train.checkpointing import CheckpointUnreadable

  n = getattr(errno, code)
  c = small_checkpoints(tmp_path)
  failing_reads(monkeypatch, n)
  with pytest.raises(CheckpointUnreadable, match=(
      rf"checkpoint step 4 in {tmp_path}/checkpoints could not be read: params llm.w: "
      rf"{tmp_path}/checkpoints/4/params/d/0123: \[Errno {n}\] {os.strerror(n)}\. "
      r".*nothing was moved aside")) as e:
    c.restore_usable(layout=None)
  assert e.value.exit_code == 2
  assert c.manager.all_steps() == [2, 4] and not (tmp_path / "rejected").exists()


def test_damage_still_moves_a_step_aside(tmp_path, monkeypatch):
  """NaN in step 4: moved to rejected/ and step 2 restored (restore itself stubbed)."""
  c = small_checkpoints(tmp_path, nan_at=(4,))
  monkeypatch.setattr(c, "restore", lambda layout, step: step)
  notes = []
  assert c.restore_usable(layout=None, note=notes.append) == 2
  assert "values are NaN/inf" in notes[0] and c.manager.all_steps() == [2]
  assert [p.name.split("-")[1] for p in (tmp_path / "rejected").iterdir()] == ["4"]


def test_read_errors_and_damage_as_tensorstore_reports_them():
  """Messages as tensorstore words them: the errno it appends decides, then its status."""
  from bird_jax.checkpoint import verify as V

  spec = " [tensorstore_spec='{\\\"path\\\":\\\"/ck/1/params/\\\"}']"
  denied = ValueError('PERMISSION_DENIED: Error opening "zarr" driver: Error reading "b/.zarray"'
                      ' in OCDBT database at local file "/ck/1/params/": Error reading Byte '
                      'range [0, 243) of local file "/ck/1/params/d/5550": Failed to open: '
                      '"/ck/1/params/d/5550": Permission denied' + spec + " [os_error_code='13']")
  truncated = ValueError('OUT_OF_RANGE: Error reading "llm.w/0.0.0": Requested byte range '
                         '[0, 5000) is not valid for value of size 1000' + spec)
  deleted = ValueError('NOT_FOUND: Error opening "zarr" driver: Metadata at "a.w/.zarray" in '
                       'OCDBT database at local file "/ck/1/params/" does not exist' + spec)
  garbage = ValueError('DATA_LOSS: Error decoding local file "/ck/1/params/manifest.ocdbt": '
                       'Error decoding manifest' + spec)
  assert not V.is_damage(denied)
  assert V.read_error(denied) == "/ck/1/params/d/5550: [Errno 13] Permission denied"
  assert all(V.is_damage(e) for e in (truncated, deleted, garbage))
  reader = ValueError('FAILED_PRECONDITION: Error opening "zarr" driver: dtype from metadata '
                      '(float32) does not match dtype in schema (int32)' + spec)
  assert not V.is_damage(reader)  # another reader (a library upgrade), not the bytes
  assert not V.is_damage(RuntimeError("something else"))  # unknown: no evidence
  assert V.is_damage(FileNotFoundError("no params item"))
  assert V.is_damage(_chained(ValueError("restore failed"), truncated))  # the cause tells
  stale = OSError(errno.ESTALE, os.strerror(errno.ESTALE))
  assert not V.is_damage(_chained(truncated, stale))  # an OS error behind it decides


def _chained(outer: BaseException, cause: BaseException) -> BaseException:
  outer.__cause__ = cause
  return outer


def test_a_read_the_filesystem_denies_is_a_read_error(tmp_path):
  """A real permission error from tensorstore (chmod 000; as root, in a child without the
  capabilities that let root read anything)."""
  import shutil as sh

  from bird_jax.checkpoint import orbax as ockpt

  mngr = ockpt.checkpoint_manager(tmp_path / "ck")
  ockpt.save(mngr, 1, params={"a": np.ones((4, 8), np.float32)})
  mngr.wait_until_finished()
  for f in (tmp_path / "ck" / "1" / "params").rglob("d/*"):
    f.chmod(0)
  prefix = []
  if os.geteuid() == 0:
    if not sh.which("setpriv"):
      pytest.skip("running as root without setpriv: reads cannot be denied")
    prefix = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"]
  code = ("import json, sys; from bird_jax.checkpoint import orbax as o, verify as v; "
          "r = v.verify_params(o.checkpoint_manager(sys.argv[1], read_only=True), 1); "
          "print(json.dumps([r.damaged, r.read_errors]))")
  out = subprocess.run([*prefix, sys.executable, "-c", code, str(tmp_path / "ck")],
                       capture_output=True, text=True, timeout=120)
  if out.returncode and "setpriv" in out.stderr:
    pytest.skip(f"setpriv cannot drop capabilities here: {out.stderr[-300:]}")
  damaged, errors = json.loads(out.stdout.strip().splitlines()[-1])
  assert not damaged and errors, out.stdout
  (error,) = errors.values()
  assert error.startswith(f"{tmp_path}/ck/1/params/") and "[Errno 13] Permission denied" in error


def test_a_start_from_step_0_is_refused_behind_set_aside_steps(tmp_path):
  from bird_jax.train import workdir as W

  (tmp_path / "rejected" / "step-8-20261203-081200").mkdir(parents=True)
  with pytest.raises(W.WorkdirError, match=r"would start from step 0, but 1 later checkpoint "
                                           r"step\(s\) were set aside, up to step 8 .*"
                                           r"train.allow_rollback=true"):
    W.refuse_rollback(tmp_path, 0, allow=False)
  W.refuse_rollback(tmp_path, 0, allow=True)
  W.refuse_rollback(tmp_path, 8, allow=False)  # not behind step 8
  # resume=false overwrite=true a second time: the first overwrite's run is in previous/
  (tmp_path / "checkpoints" / "4").mkdir(parents=True)
  (tmp_path / "metrics.jsonl").write_text('{"step": 4}\n')
  shutil.rmtree(tmp_path / "rejected")
  moved = W.start_fresh(tmp_path, overwrite=True)
  assert (moved / "checkpoints" / "4").is_dir()
  (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
  with pytest.raises(W.WorkdirError, match="up to step 4"):
    W.start_fresh(tmp_path, overwrite=True)
  assert W.start_fresh(tmp_path, overwrite=True, allow_rollback=True) is not None
  assert W.set_aside_steps(tmp_path).keys() == {4}


def test_a_failed_save_removes_its_temporary_folder(tmp_path):
  from bird_jax.train.checkpointing import SaveFailed, TrainCheckpointer

  c = TrainCheckpointer(str(tmp_path), keep=3)
  partial = tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp" / "params"
  partial.mkdir(parents=True)
  (partial / "d").write_bytes(b"\0" * 1000)
  other = tmp_path / "checkpoints" / "1"
  other.mkdir()
  c.last_started = 2
  with pytest.raises(SaveFailed, match=r"step 2 could not be written .*\[Errno 28\] No space "
                                       r"left on device \(out of disk space"):
    with c._save_errors():
      raise ValueError("write failed") from OSError(28, os.strerror(28))
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]
  c.close()


class _Spy:
  """Counts calls of a method (wrapping it) on a class."""

  def __init__(self, monkeypatch, cls, name: str):
    self.calls = 0
    real = getattr(cls, name)

    def wrapped(obj, *a, **k):
      self.calls += 1
      return real(obj, *a, **k)

    monkeypatch.setattr(cls, name, wrapped)


def closing_spies(monkeypatch) -> dict[str, _Spy]:
  import orbax.checkpoint as ocp

  from bird_jax.data.streams import StreamsIterator
  from bird_jax.train.logger import MetricLogger

  return {"checkpoint manager": _Spy(monkeypatch, ocp.CheckpointManager, "close"),
          "data iterator": _Spy(monkeypatch, StreamsIterator, "close"),
          "logger": _Spy(monkeypatch, MetricLogger, "close")}


def test_a_run_that_fails_closes_its_checkpointer_and_data_iterator(shards, tmp_path, monkeypatch):
  spies = closing_spies(monkeypatch)

  def fails(*args, **kwargs):
    raise RuntimeError("a step failed")

  monkeypatch.setattr(loop, "_run", fails)
  c = run_config(shards, str(tmp_path))
  c.mesh.update(data=4, fsdp=1, tensor=2)  # this process has 8 (host) devices
  with pytest.raises(RuntimeError, match="a step failed"):
    loop.train(c)
  assert {k: s.calls for k, s in spies.items()} == {k: 1 for k in spies}


def test_lora_step_flops_follow_the_trained_parameters(tiny_cfg):
  """A LoRA run on the LLM: the frozen base costs forward + activation gradients, only the
  adapters get weight gradients; counted by hand here."""
  from bird_jax.model.lora import LoRAConfig
  from bird_jax.train.flops import run_flops, step_flops

  c = default_config()
  c.model.preset = "tiny"
  c.freeze = []
  c.lora.rank, c.lora.targets = 4, [r"^llm\.h\.(attn|mlp)\."]
  c.data.batch_size, c.data.max_len, c.data.max_images_per_row = 4, 192, 2
  c.optim.grad_accum = 2
  tx, _ = O.make_optimizer(O.OptimConfig(), 10)
  mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  with jax.set_mesh(mesh):
    lora = LoRAConfig(rank=4, targets=(r"^llm\.h\.(attn|mlp)\.",))
    layout = S.make_layout(tiny_cfg, [], tx, mesh, lora=lora)
    got = run_flops(c, tiny_cfg, layout)

  m, v, r = tiny_cfg.llm, tiny_cfg.vision, 4
  rows, length, images = 4 * 2, 192, 4 * 2 * 2
  tokens = rows * length
  h, f, L = m.hidden, m.mlp_dim, m.layers
  base = L * (h * 3 * h + h * h + 2 * h * f + f * h) + h * m.vocab_size  # lm_head included
  adapters = L * ((h * r + r * 3 * h) + (h * r + r * h) + 2 * (h * r + r * f) + (f * r + r * h))
  scores = L * rows * 2 * 2 * length * length * h
  llm = (2 * tokens * (base + adapters) + scores          # forward
         + 2 * tokens * (base + adapters) + 2 * scores    # activation gradients, all layers
         + 2 * tokens * adapters)                         # weight gradients: adapters only
  p, q, w, e = v.num_patches, v.n_queries, v.width, v.output_dim
  vit = v.layers * (2 * p * (3 * w * w + w * w + 2 * w * v.mlp_dim) + 4 * p * p * w) \
      + 2 * p * 3 * v.patch_size ** 2 * w
  resampler = 2 * p * w * e + 2 * q * e * e + 2 * 2 * p * e * e + 4 * q * p * e + 2 * q * e * e
  vision = images * (vit + resampler + 2 * q * e * e)  # all frozen, nothing before: forward
  assert got.llm == pytest.approx(llm, rel=1e-12)
  assert got.vision == pytest.approx(vision, rel=1e-12)
  full = step_flops(tiny_cfg, rows=rows, length=length, images=images)  # LLM fully trained
  assert full.llm / got.llm == pytest.approx(6 / 4, rel=0.15)  # 6 per parameter, not 4
  assert full.llm == pytest.approx(6 * tokens * base + 3 * scores, rel=1e-12)


def test_bird_step_flops_follow_the_freeze_patterns(tiny_cfg):
  """BiRD's freeze: the ViT forward only; the resampler 3x; `proj` (frozen, after the trained
  resampler) forward + activation gradients; the LLM 3x."""
  from bird_jax.train.flops import block_forward, param_shapes, step_flops

  tx, _ = O.make_optimizer(O.OptimConfig(), 10)
  mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  with jax.set_mesh(mesh):
    layout = S.make_layout(tiny_cfg, O.BIRD_FREEZE, tx, mesh)
  kw = dict(rows=4, length=64, images=4)
  got = step_flops(tiny_cfg, trained=param_shapes(layout.abstract_params),
                   frozen=param_shapes(layout.abstract_frozen), **kw)
  fwd = block_forward(tiny_cfg, **kw)
  assert got.vision == pytest.approx(sum(fwd["vit"]) + 3 * sum(fwd["resampler"])
                                     + 2 * fwd["proj"][0], rel=1e-12)
  assert got.llm == pytest.approx(3 * sum(fwd["llm"]), rel=1e-12)
