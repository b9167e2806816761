"""Training: sharded step equivalence, freezing, resume after kill -9, SIGTERM, NaN."""

from __future__ import annotations

import json
import os
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
  assert np.allclose(l1, l8, rtol=0, atol=1e-5) and l1[2] < l1[0]
  assert max_tree_diff(s1["params"], s8["params"]) <= 1e-5
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
  c = run_config(shards, str(tmp_path))
  c.mesh.update(data=4, fsdp=1, tensor=2)  # this process has 8 (host) devices
  with pytest.raises(loop.NonFiniteLoss, match=r"step 3: loss is nan.*data-iterator state.*"
                                              r"last good checkpoint is step 2"):
    loop.train(c)
  steps = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
  assert max(steps) == 2


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
    params, frozen = S.loaded_params(layout, S.hf_param_source(str(tmp_path), tiny_cfg))
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
    S.hf_param_source(str(tmp_path), other)


@pytest.mark.heavy
def test_overfitting_a_few_records_reproduces_their_answers(tiny_cfg, tmp_path):
  """A handful of grounding records: the loss goes to ~0 and greedy decoding then writes the
  exact training answers, boxes included."""
  from flax import nnx

  from bird_jax import chat
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
  prompts = [chat.encode_chat(tok, [{"from": "user", "value": r.conversations[0].value}],
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
