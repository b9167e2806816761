"""Streaming loads (bird_jax/checkpoint/streaming.py): weights go from disk onto the mesh one
block at a time, equal to the in-memory conversion; names, shapes and memory are checked
before the first read; NaN/inf are refused naming the block."""

from __future__ import annotations

import json

import jax
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from conftest import write_hf_folder
from bird_jax import load_pretrained
from bird_jax.checkpoint import orbax as ockpt
from bird_jax.checkpoint import safetensors_io as st
from bird_jax.checkpoint import streaming
from bird_jax.checkpoint.hf import CheckpointMismatch
from bird_jax.checkpoint.verify import NonFiniteWeights
from bird_jax.sharding import make_mesh
from bird_jax.tree_paths import flatten

BF16 = np.dtype(ml_dtypes.bfloat16)


def params_of(model) -> dict[str, np.ndarray]:
  return {p: np.asarray(v) for p, v in flatten(nnx.state(model)).items()}


@pytest.mark.heavy
def test_streamed_onto_a_mesh_equals_the_in_memory_model(tmp_path, tiny_cfg, hf_weights,
                                                         tiny_model):
  write_hf_folder(tmp_path / "hf", tiny_cfg, hf_weights)
  mesh = make_mesh(2, 2, 2)
  loaded = load_pretrained(tmp_path / "hf", mesh=mesh)
  want = params_of(tiny_model)
  got = params_of(loaded.model)
  assert got.keys() == want.keys()
  assert all(np.array_equal(got[p], want[p]) for p in want)
  state = flatten(nnx.state(loaded.model))
  assert state["llm.h.mlp.w1.kernel"].sharding.spec == jax.sharding.PartitionSpec(
      None, "fsdp", "tensor")

  # the same weights through an Orbax step, streamed one layer at a time
  mngr = ockpt.checkpoint_manager(tmp_path / "orbax")
  ockpt.save(mngr, 3, params=nnx.to_pure_dict(nnx.state(tiny_model)), config=tiny_cfg)
  mngr.wait_until_finished()
  sources = streaming.orbax_sources(mngr, 3)
  assert sources["llm.h.mlp.w1.kernel"].blocks == tiny_cfg.llm.layers
  again = params_of(load_pretrained(tmp_path / "orbax", mesh=mesh).model)
  assert all(np.array_equal(again[p], want[p]) for p in want)


def test_parameters_keep_their_stored_dtype_unless_asked(tmp_path, tiny_cfg, hf_weights):
  bf16 = {n: w.astype(BF16) for n, w in hf_weights.items()}
  st.save_tensors(tmp_path, bf16, shard_size=10**9)
  (tmp_path / "config.json").write_text(json.dumps(tiny_cfg.to_hf_config()))
  model, _, cfg = load_pretrained(tmp_path)
  assert (cfg.param_dtype, cfg.vision_param_dtype) == ("bfloat16", None)
  assert flatten(nnx.state(model))["llm.wte"].dtype == BF16
  model, _, cfg = load_pretrained(tmp_path, param_dtype="float32", dtype="float32")
  assert cfg.param_dtype == "float32"
  assert flatten(nnx.state(model))["llm.h.attn.c_attn.kernel"].dtype == np.float32


def test_a_non_finite_layer_is_refused_by_name(tmp_path, tiny_cfg, hf_weights):
  weights = dict(hf_weights)
  bad = weights["transformer.h.1.mlp.w1.weight"].copy()
  bad[3, 4] = np.nan
  weights["transformer.h.1.mlp.w1.weight"] = bad
  write_hf_folder(tmp_path, tiny_cfg, weights)
  with pytest.raises(NonFiniteWeights, match=r"llm\.h\.mlp\.w1\.kernel block 1: .*NaN/inf"):
    load_pretrained(tmp_path)


def test_a_load_that_cannot_fit_is_refused_before_reading(tmp_path, tiny_cfg, hf_weights,
                                                          monkeypatch):
  write_hf_folder(tmp_path, tiny_cfg, hf_weights)
  reads = []
  monkeypatch.setattr(st.HFReader, "get", lambda self, name: reads.append(name))
  monkeypatch.setattr(streaming, "host_available_bytes", lambda: 10**6)
  with pytest.raises(streaming.WeightsDoNotFit,
                     match=r"loading needs \d+\.\d\d GB of host memory .* but 0\.00 GB is available"):
    load_pretrained(tmp_path)
  assert reads == []


def test_wrong_vocab_and_truncated_shards_are_refused_before_any_weight(tmp_path, tiny_cfg,
                                                                        hf_weights, monkeypatch):
  placed = []
  monkeypatch.setattr(streaming, "place_one", lambda *a: placed.append(a))
  write_hf_folder(tmp_path / "vocab", tiny_cfg, hf_weights)
  config = json.loads((tmp_path / "vocab" / "config.json").read_text())
  config["vocab_size"] += 64
  (tmp_path / "vocab" / "config.json").write_text(json.dumps(config))
  with pytest.raises(CheckpointMismatch, match="transformer.wte.weight"):
    load_pretrained(tmp_path / "vocab")

  st.save_tensors(tmp_path / "cut", dict(hf_weights), shard_size="200KB")
  (tmp_path / "cut" / "config.json").write_text(json.dumps(tiny_cfg.to_hf_config()))
  shard = sorted((tmp_path / "cut").glob("*.safetensors"))[1]
  shard.write_bytes(shard.read_bytes()[:-1000])
  with pytest.raises(st.CheckpointFormatError, match=f"{shard.name}: not a readable"):
    load_pretrained(tmp_path / "cut")
  assert placed == []


def test_an_orbax_step_of_another_shape_is_refused_by_name(tmp_path, tiny_cfg, tiny_model):
  mngr = ockpt.checkpoint_manager(tmp_path)
  ockpt.save(mngr, 1, params=nnx.to_pure_dict(nnx.state(tiny_model)), config=tiny_cfg)
  mngr.wait_until_finished()
  sources = streaming.orbax_sources(mngr, 1)
  target = flatten(ockpt.abstract_params(tiny_cfg))
  target["llm.wte"] = jax.ShapeDtypeStruct((7, 3), np.float32)
  with pytest.raises(CheckpointMismatch, match=r"llm\.wte: stored \[512, 256\], the model "
                                               r"expects \[7, 3\]"):
    streaming.place(target, sources, where="step 1")
