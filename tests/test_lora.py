"""LoRA adapters: zero-effect when fresh, merged weights compute what the adapters do."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import forward, image_row
from bird_jax.model import model_from_params
from bird_jax.model.lora import Adapter, LoRAConfig, add_adapters, merge, target_linears
from bird_jax.tree_paths import flatten

LORA = LoRAConfig(rank=4, alpha=8.0, targets=(r"^llm\.h\.(attn|mlp)\.", r"^visual\.attn_pool\."))


@pytest.fixture(scope="module")
def inputs(tiny_cfg):
  s = tiny_cfg.vision.image_size
  images = np.random.default_rng(0).normal(size=(2, 2, s, s, 3)).astype(np.float32)
  tokens = np.stack([image_row(tiny_cfg, 48, [3, 25], seed=1), image_row(tiny_cfg, 48, [], seed=2)])
  return tokens, images


def adapted(tiny_cfg, tiny_model):
  model = model_from_params(tiny_cfg, flatten(nnx.state(tiny_model)))
  return add_adapters(model, LORA)


def test_fresh_adapters_give_exactly_the_base_logits(tiny_cfg, tiny_model, inputs):
  model = adapted(tiny_cfg, tiny_model)
  adapters = flatten(nnx.state(model, Adapter))
  assert len(adapters) == 2 * len(target_linears(model, LORA.targets)) == 2 * 8
  assert not flatten(nnx.state(model, nnx.Param)).keys() & adapters.keys()  # not parameters
  assert adapters["llm.h.attn.c_attn.lora_a"].shape == (2, 256, 4)  # stacked: layers first
  assert adapters["llm.h.attn.c_attn.lora_b"].shape == (2, 4, 3, 4, 64)
  base = np.asarray(forward(tiny_model, *inputs))
  assert np.array_equal(np.asarray(forward(model, *inputs)), base)


def test_merged_weights_compute_what_the_adapters_do(tiny_cfg, tiny_model, inputs):
  model = adapted(tiny_cfg, tiny_model)
  key = jax.random.key(1)
  for i, (path, linear) in enumerate(sorted(target_linears(model, LORA.targets).items())):
    b = linear.lora_b  # as if trained: no longer zero
    b.set_value(0.05 * jax.random.normal(jax.random.fold_in(key, i), b.shape, b.dtype))
  adapted_logits = np.asarray(forward(model, *inputs))
  base = np.asarray(forward(tiny_model, *inputs))
  assert np.abs(adapted_logits - base).max() > 1e-2  # the adapters do change the model
  merged = model_from_params(tiny_cfg, merge(flatten(nnx.state(model)), LORA.scale))
  np.testing.assert_allclose(np.asarray(forward(merged, *inputs)), adapted_logits, atol=1e-5,
                             rtol=0)


def test_targets_that_match_nothing_are_refused(tiny_cfg, tiny_model):
  with pytest.raises(ValueError, match="match no linear layer"):
    add_adapters(model_from_params(tiny_cfg, flatten(nnx.state(tiny_model))),
                 LoRAConfig(rank=2, targets=(r"^nothing\.",)))
  with pytest.raises(ValueError, match="rank"):
    LoRAConfig(rank=-1).validate()
