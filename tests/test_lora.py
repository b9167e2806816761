"""LoRA adapters: zero-effect when fresh, merged weights compute what the adapters do."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import forward, image_row
from bird_jax.model import model_from_params
from bird_jax.model.lora import Adapter, LoRAConfig, add_adapters, merge, target_linears
from bird_jax.tree_paths import dotted, flatten
from bird_jax_testing.bounds import LORA_ATTACHED, LORA_MERGED

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
  np.testing.assert_allclose(np.asarray(forward(merged, *inputs)), adapted_logits,
                             atol=LORA_MERGED, rtol=0)


def test_targets_that_match_nothing_are_refused(tiny_cfg, tiny_model):
  with pytest.raises(ValueError, match="match no linear layer"):
    add_adapters(model_from_params(tiny_cfg, flatten(nnx.state(tiny_model))),
                 LoRAConfig(rank=2, targets=(r"^nothing\.",)))
  with pytest.raises(ValueError, match="rank"):
    LoRAConfig(rank=-1).validate()


@pytest.mark.heavy
def test_a_lora_run_trains_only_adapters_and_exports_what_it_computes(tiny_cfg, hf_weights, shards,
                                                                      tmp_path, inputs):
  """train.py with lora.rank > 0 from an HF folder: the base stays as loaded, the adapters
  move; jax-to-hf writes merged weights whose logits are the adapted model's."""
  import jax.numpy as jnp

  from conftest import write_hf_folder
  from test_train import run_config
  from bird_jax import convert
  from bird_jax.checkpoint.orbax import ParamReader, checkpoint_manager
  from bird_jax.pretrained import load_pretrained
  from bird_jax.train.config import lora_config
  from bird_jax.train.loop import train
  from bird_jax.train.state import build_model, hf_param_sources

  base_dir = tmp_path / "base"
  write_hf_folder(base_dir, tiny_cfg, hf_weights)
  c = run_config(shards, str(tmp_path / "run"), steps=3, ckpt_every=3)
  c.init.hf = str(base_dir)
  c.lora.rank, c.lora.alpha = 4, 8.0
  c.optim.lr = 1e-2
  c.mesh.data, c.mesh.fsdp = 2, 4  # adapters sharded like their kernels
  c.data.batch_size = 8
  assert train(c).step == 3
  reader = ParamReader(checkpoint_manager(tmp_path / "run" / "checkpoints", read_only=True))
  base = hf_param_sources(str(base_dir), tiny_cfg)
  for path in ("llm.h.mlp.w1.kernel", "visual.attn_pool.kv_proj.kernel", "llm.wte"):
    src = base[path]  # each stored block in the model's layout, as loading puts it
    stored = np.concatenate([src.to_model(src.read(i)) for i in range(src.blocks)])
    assert np.array_equal(reader.read(path), stored), path  # frozen as loaded
  assert np.abs(reader.read("llm.h.attn.c_attn.lora_b")).max() > 0  # trained from zero

  model = build_model(tiny_cfg, lora_config(c), seed=0)  # the adapted model, checkpoint values
  graphdef, state = nnx.split(model)
  flat = dict(nnx.to_flat_state(state))
  for key, var in flat.items():
    var.set_value(jnp.asarray(reader.read(dotted(key)), var.dtype))
  adapted_logits = np.asarray(forward(nnx.merge(graphdef, nnx.from_flat_state(flat)), *inputs))

  convert.jax_to_hf(tmp_path / "run" / "checkpoints", tmp_path / "hf_out", dtype="fp32",
                    progress=False)
  merged = load_pretrained(tmp_path / "hf_out", dtype="float32").model
  np.testing.assert_allclose(np.asarray(forward(merged, *inputs)), adapted_logits,
                             atol=LORA_MERGED, rtol=0)
  evaluated = load_pretrained(tmp_path / "run").model  # what eval.py --ckpt runs: merged too
  np.testing.assert_allclose(np.asarray(forward(evaluated, *inputs)), adapted_logits,
                             atol=LORA_MERGED, rtol=0)

  # the adapters on their own: a small file, attached to the base they were trained on
  report = convert.lora_export(tmp_path / "run" / "checkpoints", tmp_path / "adapters")
  assert report["adapters"] == 16 and report["bytes"] < 0.2 * sum(a.nbytes for a in hf_weights.values())
  again = load_pretrained(base_dir, dtype="float32", adapters=tmp_path / "adapters").model
  np.testing.assert_allclose(np.asarray(forward(again, *inputs)), adapted_logits,
                             atol=LORA_ATTACHED, rtol=0)


def test_adapters_follow_the_freezing_and_decay_rules(tiny_cfg):
  """Adapters on a frozen layer are refused; trained adapters get weight decay."""
  from bird_jax.sharding import make_mesh
  from bird_jax.train import optimizer as O
  from bird_jax.train.state import make_layout

  mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
  tx, _ = O.make_optimizer(O.OptimConfig(lr=1e-3), 10)
  with jax.set_mesh(mesh):
    with pytest.raises(ValueError, match="adapters on frozen layers"):
      make_layout(tiny_cfg, O.BIRD_FREEZE, tx, mesh, lora=LoRAConfig(rank=2, targets=(r"^visual\.",)))
    layout = make_layout(tiny_cfg, O.BIRD_FREEZE, tx, mesh, lora=LORA)
  trained = flatten(layout.abstract_params)
  assert trained and all(p.endswith(("lora_a", "lora_b")) for p in trained)
  assert all(jax.tree.leaves(O.decay_mask(layout.abstract_params, O.HF_NO_DECAY)))
