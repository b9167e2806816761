"""load_pretrained: one call from an HF folder or an Orbax checkpoint to (model, tokenizer,
config); the attention mask of padded batches; the tokenizer recorded in config.json."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import forward, image_row, write_hf_folder
from bird_jax import load_pretrained
from bird_jax.checkpoint import orbax as ockpt
from bird_jax.checkpoint.verify import NonFiniteWeights
from bird_jax.config import QwenVLConfig
from bird_jax.pretrained import checkpoint_step
from bird_jax.sharding import make_mesh


def tokens_and_images(cfg, rows=2, length=40):
  tokens = np.stack([image_row(cfg, length, [2], seed=r) for r in range(rows)])
  images = np.random.default_rng(0).normal(size=(rows, 1, 56, 56, 3)).astype(np.float32)
  return tokens, images


def max_diff(a, b) -> float:
  return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


@pytest.mark.heavy
def test_an_hf_folder_and_an_orbax_checkpoint_load_in_one_call(tmp_path, tiny_cfg, hf_weights,
                                                               tiny_model):
  write_hf_folder(tmp_path / "hf", tiny_cfg, hf_weights)
  model, tok, cfg = load_pretrained(tmp_path / "hf")
  assert cfg.tokenizer == "byte" and tok.name == "byte" and cfg.llm == tiny_cfg.llm
  assert cfg.dtype == "float32"  # float32 weights compute in float32
  tokens, images = tokens_and_images(cfg)
  want = forward(tiny_model, tokens, images)
  assert max_diff(forward(model, tokens, images), want) == 0.0

  mngr = ockpt.checkpoint_manager(tmp_path / "run" / "checkpoints")
  ockpt.save(mngr, 12, params=nnx.to_pure_dict(nnx.state(tiny_model)), config=tiny_cfg)
  mngr.wait_until_finished()
  (tmp_path / "run" / "config.json").write_text("{}")  # a workdir holds the run's config too
  loaded = load_pretrained(tmp_path / "run", mesh=make_mesh(2, 2, 2))  # a workdir
  assert checkpoint_step(tmp_path / "run") == 12 and loaded.config == tiny_cfg
  kernel = nnx.state(loaded.model)["llm"]["h"]["mlp"]["w1"]["kernel"].get_value()
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  assert max_diff(forward(loaded.model, tokens, images), want) <= 1e-5

  bf16 = load_pretrained(tmp_path / "hf", dtype="bfloat16")
  assert bf16.config.dtype == "bfloat16" and max_diff(forward(bf16.model, tokens, images),
                                                      want) < 0.5


def test_non_finite_weights_are_refused(tmp_path, tiny_cfg, hf_weights):
  weights = dict(hf_weights)
  weights["transformer.ln_f.weight"] = np.full_like(weights["transformer.ln_f.weight"], np.inf)
  write_hf_folder(tmp_path / "hf", tiny_cfg, weights)
  with pytest.raises(NonFiniteWeights, match="NaN/inf"):
    load_pretrained(tmp_path / "hf")


def test_left_and_right_padding_give_each_row_its_own_logits(tiny_cfg, tiny_model):
  """With attention_mask, a padded row's logits equal the row run alone (left or right)."""
  short, full = 30, 40
  tokens, images = tokens_and_images(tiny_cfg, rows=1, length=short)
  alone = np.asarray(forward(tiny_model, tokens, images))[0]
  pad = np.zeros((1, full - short), np.int32)
  for side in ("left", "right"):
    row = np.concatenate([pad, tokens] if side == "left" else [tokens, pad], axis=1)
    mask = (np.arange(full) >= full - short) if side == "left" else (np.arange(full) < short)
    mask = mask[None].astype(np.int32)
    logits = np.asarray(jax.jit(lambda t, i, m: tiny_model(t, i, attention_mask=m))(
        row, images, mask))[0]
    got = logits[full - short:] if side == "left" else logits[:short]
    assert max_diff(got, alone) <= 1e-5, side
  with pytest.raises(ValueError, match="not both"):
    tiny_model(tokens, images, attention_mask=np.ones_like(tokens), segment_ids=tokens)


def test_the_tokenizer_is_recorded_in_config_json(tiny_cfg):
  qwen = tiny_cfg.replace(tokenizer="qwen", image_start_id=151857,
                          llm=dataclasses.replace(tiny_cfg.llm, vocab_size=151936))
  for cfg in (tiny_cfg, qwen):
    d = cfg.to_hf_config()
    assert d["tokenizer_type"] == {"byte": "ByteTokenizer", "qwen": "QWenTokenizer"}[cfg.tokenizer]
    assert QwenVLConfig.from_hf_config(d).tokenizer == cfg.tokenizer
  d = tiny_cfg.to_hf_config()
  d["tokenizer_type"] = "SentencePiece"
  with pytest.raises(ValueError, match="tokenizer_type 'SentencePiece' is not one of"):
    QwenVLConfig.from_hf_config(d)
