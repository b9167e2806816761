"""Model behaviour beyond parity: splice locality, packed segments, bad inputs, dtypes."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import forward, image_row
from bird_jax.config import get_preset
from bird_jax.tree_paths import flatten
from bird_jax.model import abstract_model, model_from_params
from bird_jax.model.qwen import KVCache, ntk_alpha


def test_splice_changes_only_logits_at_and_after_the_image(tiny_cfg, tiny_model):
  tokens = np.stack([image_row(tiny_cfg, 48, [3, 25], seed=1), image_row(tiny_cfg, 48, [], seed=2)])
  images = np.random.default_rng(3).standard_normal((2, 2, 56, 56, 3)).astype(np.float32)
  base = np.asarray(forward(tiny_model, tokens, images))
  changed = images.copy()
  changed[0, 1] += 1.0  # the second image of row 0 (span opens at 25)
  changed[1] += 1.0  # row 1 has no span: its image slots are ignored
  out = np.asarray(forward(tiny_model, tokens, changed))
  diff = np.abs(out - base).max(-1)
  assert diff[0, :26].max() == 0.0  # up to and including <img>
  assert diff[0, 26:].min() > 1e-4  # image positions and everything after
  assert diff[1].max() == 0.0


@pytest.mark.heavy
def test_packed_segments_equal_separate_sequences(tiny_cfg, tiny_model):
  a = image_row(tiny_cfg, 12, [], seed=4)
  b = image_row(tiny_cfg, 30, [4], seed=5)
  img = np.random.default_rng(6).standard_normal((1, 1, 56, 56, 3)).astype(np.float32)
  packed = np.concatenate([a, b, np.full(6, 256, np.int32)])[None]
  seg = np.array([[1] * 12 + [2] * 30 + [0] * 6], np.int32)
  pos = np.array([list(range(12)) + list(range(30)) + list(range(6))], np.int32)
  out = np.asarray(forward(tiny_model, packed, img, positions=pos, segment_ids=seg, train=True))
  alone_a = np.asarray(forward(tiny_model, a[None], train=True))
  alone_b = np.asarray(forward(tiny_model, b[None], img, train=True))
  assert np.abs(out[0, :12] - alone_a[0]).max() <= 1e-5
  assert np.abs(out[0, 12:42] - alone_b[0]).max() <= 1e-5
  assert np.isfinite(out).all()


@pytest.mark.heavy
def test_jit_matches_eager_and_does_not_retrace(tiny_cfg, tiny_model):
  graphdef, state = nnx.split(tiny_model)
  traces = []

  @jax.jit
  def forward(state, tokens, images):
    traces.append(1)
    return nnx.merge(graphdef, state)(tokens, images)

  tokens = image_row(tiny_cfg, 40, [5], seed=7)[None]
  images = np.zeros((1, 1, 56, 56, 3), np.float32)
  eager = tiny_model(jnp.asarray(tokens), jnp.asarray(images))
  for _ in range(3):
    jitted = forward(state, tokens, images)
  assert len(traces) == 1
  assert np.abs(np.asarray(eager) - np.asarray(jitted)).max() <= 1e-5


@pytest.mark.parametrize("tokens,images,num_images,match", [
    ("ok1", (1, 1, 64, 64, 3), None, r"images must be \[batch=1, max_images, 56, 56, 3\]"),
    ("ok1", (1, 1, 3, 56, 56), None, "channels-first"),
    ("ok1", (1, 1, 56, 56, 1), None, "images must be"),
    ("ok1", (2, 1, 56, 56, 3), None, "batch=1"),
    ("no_end", (1, 1, 56, 56, 3), None, "1 <img> vs 0 </img>"),
    ("short", (1, 1, 56, 56, 3), None, "holds 10 ids; the model expects exactly n_queries=16"),
    ("nested", (1, 2, 56, 56, 3), None, "nested or overlapping"),
    ("ok2", (1, 1, 56, 56, 3), None, "row 0 has 2 image span"),
    ("ok2", (1, 2, 56, 56, 3), [1], "row 0: 2 span"),
    ("ok1", None, None, "only 0 image slot"),
    ("long", None, None, "exceeds the model maximum"),
])
def test_bad_inputs_raise_clear_errors(tiny_cfg, tiny_model, tokens, images, num_images, match):
  c = tiny_cfg
  rows = {
      "ok1": image_row(c, 40, [3]), "ok2": image_row(c, 60, [3, 30]),
      "no_end": np.r_[[c.image_start_id], np.zeros(30, np.int32)],
      "short": np.r_[[c.image_start_id], np.zeros(10, np.int32), [c.image_end_id]],
      "nested": image_row(c, 60, [3, 30]), "long": np.zeros(c.llm.max_position_embeddings + 1),
  }
  row = rows[tokens].astype(np.int32)
  if tokens == "nested":
    row[10] = c.image_start_id  # opens inside the first span
    row[28] = c.image_end_id
  pixels = None if images is None else np.zeros(images, np.float32)
  with pytest.raises(ValueError, match=match):
    tiny_model(jnp.asarray(row[None]), pixels, num_images=num_images)


def test_ntk_alpha_formula():
  lengths = jnp.array([100, 2048, 2049, 3000, 4096, 4097, 8192])
  assert ntk_alpha(lengths, 2048).tolist() == [1, 1, 3, 3, 3, 7, 7]


@pytest.mark.heavy
def test_training_dtypes_fp32_params_bf16_compute(tiny_model):
  cfg = get_preset("tiny").replace(dtype="bfloat16", vision_param_dtype="bfloat16")
  model = model_from_params(cfg, flatten(nnx.state(tiny_model)))
  assert model.llm.h.attn.c_attn.kernel[...].dtype == jnp.float32
  assert model.visual.blocks.attn.in_proj.kernel[...].dtype == jnp.bfloat16
  tokens = jnp.asarray(image_row(cfg, 24, [2])[None])
  logits = forward(model, tokens, jnp.zeros((1, 1, 56, 56, 3)))
  assert logits.dtype == jnp.float32 and bool(jnp.isfinite(logits).all())


@pytest.mark.heavy
@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_policies_give_the_same_gradients(tiny_cfg, tiny_model, remat):
  tokens = jnp.asarray(image_row(tiny_cfg, 32, [2], seed=9)[None])
  images = jnp.ones((1, 1, 56, 56, 3))

  @nnx.jit
  def grads(model):
    return nnx.grad(lambda m: m(tokens, images, train=True).mean())(model)

  remat_graphdef = nnx.split(abstract_model(tiny_cfg.replace(remat=remat)))[0]
  remat_model = nnx.merge(remat_graphdef, nnx.state(tiny_model))
  g0, g1 = nnx.state(grads(tiny_model)), nnx.state(grads(remat_model))
  diffs = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), g0, g1)
  assert max(jax.tree.leaves(diffs)) <= 1e-6


@pytest.mark.heavy
def test_kv_cache_decoding_equals_the_full_forward(tiny_cfg, tiny_model):
  """Prefill (image included) then token-by-token decoding, with and without left padding."""
  row = image_row(tiny_cfg, 30, [3], seed=10)[None]
  img = jnp.asarray(np.random.default_rng(11).standard_normal((1, 1, 56, 56, 3)), jnp.float32)
  full = np.asarray(forward(tiny_model, row, img))

  step = nnx.jit(lambda m, t, p, s, c: m(t, positions=p, segment_ids=s, cache=c))
  for pad in (0, 5):
    tokens = np.concatenate([np.zeros((1, pad), np.int32), row], 1)
    seg = (np.arange(pad + 30) >= pad).astype(np.int32)[None]
    pos = np.maximum(np.arange(pad + 30) - pad, 0).astype(np.int32)[None]
    cache = KVCache.empty(tiny_cfg.llm, 1, 40, jnp.float32)
    n = pad + 22
    logits, cache = nnx.jit(lambda m, t, i, p, s, c: m(t, i, positions=p, segment_ids=s, cache=c))(
        tiny_model, tokens[:, :n], img, pos[:, :n], seg[:, :n], cache)
    assert np.abs(np.asarray(logits)[0, pad:] - full[0, :22]).max() <= 1e-5
    for i in range(n, pad + 30):
      logits, cache = step(tiny_model, tokens[:, i:i + 1], pos[:, i:i + 1], seg[:, i:i + 1], cache)
      assert np.abs(np.asarray(logits)[0, 0] - full[0, i - pad]).max() <= 1e-5


def test_keep_positions_makes_image_token_k_pool_patch_k():
  """Resampler.keep_positions: every query puts almost all its weight on its own patch (at
  random initialisation the weights are nearly uniform), and the image tokens then differ
  between grid cells as the patches do."""
  from bird_jax.model import layers as L
  from bird_jax.model.qwen_vl import QwenVL

  cfg = get_preset("demo")
  pool = QwenVL(cfg, rngs=nnx.Rngs(0)).visual.attn_pool
  x = jax.random.normal(jax.random.key(1), (2, cfg.vision.num_patches, cfg.vision.output_dim))

  def own_patch_weight():
    pos = pool.pos_embed[...]
    q = pool.attn.in_proj(pool.ln_q(pool.query[...]) + pos, part=0)
    k = pool.attn.in_proj(pool.ln_kv(x) + L.resize_grid(pos, pool.grid), part=1)
    w = jax.nn.softmax(jnp.einsum("qhd,bphd->bhqp", q, k) / np.sqrt(q.shape[-1]), -1)
    return np.asarray(jnp.diagonal(w, axis1=-2, axis2=-1))

  assert own_patch_weight().mean() < 0.1  # random: about uniform over 64 patches
  pool.keep_positions()
  w = own_patch_weight()
  assert w.mean() > 0.9 and w.min() > 0.5
  with pytest.raises(ValueError, match="one query per patch: 16 queries, 64 patches"):
    QwenVL(get_preset("demo").replace(vision=dataclasses.replace(
        cfg.vision, n_queries=16)), rngs=nnx.Rngs(0)).visual.attn_pool.keep_positions()


def test_sincos_positions_make_the_slot_linearly_readable_from_the_image_tokens():
  """VisionTower.sincos_positions: a linear read-out fitted on the image tokens of some images
  finds every token's grid cell on other images to within a fraction of a cell; with the
  random positions it does little better than guessing the middle."""
  from bird_jax.model.qwen_vl import QwenVL

  cfg = get_preset("demo")
  g = cfg.vision.grid
  cells = np.stack([np.arange(g * g) % g, np.arange(g * g) // g], 1).astype(np.float64)
  pixels = jax.random.normal(jax.random.key(2), (16, cfg.vision.image_size,
                                                 cfg.vision.image_size, 3)) * 0.5

  def readout_error(model) -> float:
    tokens = np.asarray(model.encode_images(pixels[:, None])[:, 0], np.float64)  # [16, 64, D]
    x, y = tokens.reshape(-1, tokens.shape[-1]), np.tile(cells, (16, 1))
    half = 8 * g * g
    mu, ym = x[:half].mean(0), y[:half].mean(0)
    a = x[:half] - mu
    w = np.linalg.solve(a.T @ a + 1e-2 * np.eye(a.shape[1]), a.T @ (y[:half] - ym))
    return float(np.abs((x[half:] - mu) @ w + ym - y[half:]).mean())

  model = QwenVL(cfg, rngs=nnx.Rngs(0))
  model.visual.attn_pool.keep_positions()
  before = readout_error(model)
  model.visual.sincos_positions(2.0)
  after = readout_error(model)
  assert before > 1.0 and after < 0.5, (before, after)  # guessing the middle: 2.0 cells


def test_logits_of_a_16bit_lm_head_in_chunks_equal_the_whole_product(tiny_cfg, monkeypatch):
  """On CPU a bfloat16 lm_head is multiplied LOGIT_CHUNK columns at a time (the last chunk
  overlapping the one before): the same logits as one product."""
  import bird_jax.model.qwen as Q

  cfg = tiny_cfg.replace(param_dtype="bfloat16", dtype="bfloat16")
  llm = abstract_model(cfg).llm  # only lm_head is read
  llm.lm_head.set_value(jax.random.normal(jax.random.key(0), llm.lm_head.shape, jnp.bfloat16))
  h = jax.random.normal(jax.random.key(1), (2, 3, cfg.llm.hidden), jnp.bfloat16)
  whole = np.asarray(jax.jit(llm.logits)(h))
  monkeypatch.setattr(Q, "LOGIT_CHUNK", 96)  # 512 columns: 6 chunks, the last overlapping
  chunked = np.asarray(jax.jit(llm.logits)(h))
  assert chunked.shape == whole.shape and np.array_equal(chunked, whole)
