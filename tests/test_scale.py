"""Full-size checks that never allocate the 9.6B model: abstract shapes and AOT compilation."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax
from flax import nnx

from bird_jax.checkpoint import hf
from bird_jax.config import QwenVLConfig, get_preset
from bird_jax.model import abstract_model
from bird_jax_testing.reference import hf_shapes



def test_qwen_vl_7b_has_9_66b_parameters_with_the_spec_shapes():
  cfg = get_preset("qwen_vl_7b")
  state = nnx.state(abstract_model(cfg))
  n = sum(x.size for x in jax.tree.leaves(state))
  assert abs(n - 9.66e9) / 9.66e9 <= 0.005, n
  entries = hf.expected_tensors(cfg, hf.param_shapes(state))
  spec = hf_shapes(cfg)
  assert len(entries) == len(spec) == 853
  assert {name: e.shape for name, e in entries.items()} == spec


def test_hf_config_round_trip():
  cfg = get_preset("qwen_vl_7b")
  hf_cfg = cfg.to_hf_config()
  assert hf_cfg["visual"]["mlp_ratio"] == 4.9231 and hf_cfg["intermediate_size"] == 22016
  assert QwenVLConfig.from_hf_config(hf_cfg) == cfg
  tiny = get_preset("tiny")
  assert QwenVLConfig.from_hf_config(tiny.to_hf_config(), dtype="float32") == tiny


def test_full_size_forward_compiles_quickly():
  """One 448 px image + 512 tokens through all 32 + 48 layers, abstract inputs."""
  bench = Path(__file__).resolve().parents[1] / "bench" / "bench_compile.py"
  spec = importlib.util.spec_from_file_location("bench_compile", bench)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  compile_forward = module.compile_forward

  r = compile_forward(get_preset("qwen_vl_7b"), tokens=512)
  assert r["lower_s"] + r["compile_s"] < 180
