"""Optimizer: the fused AdamW equals optax's chain, bf16 moments, groups, schedule."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bird_jax.train import optimizer as O


def _params(rng):
  return {"llm": {"h": {"w": jnp.asarray(rng.standard_normal((3, 4, 5)), jnp.float32),
                        "bias": jnp.asarray(rng.standard_normal((3, 5)), jnp.float32)}},
          "visual": {"ln_pre": {"weight": jnp.asarray(rng.standard_normal(5), jnp.float32)}}}


def _run(tx, params, grads_seq):
  state = tx.init(params)
  for g in grads_seq:
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
  return params


@pytest.mark.heavy
@pytest.mark.parametrize("clip", [1.0, 0.0])
def test_fused_adamw_equals_optax_chain(clip):
  rng = np.random.default_rng(0)
  params = _params(rng)
  grads = [jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape) * s, jnp.float32), params)
           for s in (0.05, 3.0, 0.2, 5.0, 1.0)]  # both sides of the clipping threshold
  c = O.OptimConfig(lr=1e-2, warmup_steps=2, clip_norm=clip)
  ours, lr = O.make_optimizer(c, 10)
  ref = optax.adamw(lr, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay,
                    mask=lambda p: O.decay_mask(p, c.no_decay))
  if clip:
    ref = optax.chain(optax.clip_by_global_norm(clip), ref)
  a, b = _run(ours, params, grads), _run(ref, params, grads)
  # 1 ulp: the clip is one scalar factor here, a divide then multiply in optax
  assert max(jax.tree.leaves(jax.tree.map(lambda x, y: float(jnp.abs(x - y).max()), a, b))) <= 3e-7


def test_bf16_moments_halve_the_state_and_stay_close():
  rng = np.random.default_rng(1)
  params = _params(rng)
  grads = [jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), jnp.float32), params)
           for _ in range(20)]
  full, _ = O.make_optimizer(O.OptimConfig(lr=1e-3, warmup_steps=1), 20)
  half, _ = O.make_optimizer(O.OptimConfig(lr=1e-3, warmup_steps=1, moments_dtype="bfloat16"), 20)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(half.init(params).mu))
  a, b = _run(full, params, grads), _run(half, params, grads)
  rel = max(jax.tree.leaves(jax.tree.map(
      lambda x, y, p: float(jnp.abs(x - y).max() / (jnp.abs(x - p).max() + 1e-12)), a, b, params)))
  assert rel < 0.02  # the parameter change differs by < 2% after 20 steps


def test_weight_decay_follows_hf_trainer_rule():
  mask = O.decay_mask({"llm": {"h": {"ln_1": {"weight": 0}, "attn": {"c_attn": {"kernel": 0,
                                                                                 "bias": 0}}}},
                       "visual": {"ln_post": {"weight": 0, "bias": 0},
                                  "attn_pool": {"ln_q": {"weight": 0}, "query": 0}}},
                      O.HF_NO_DECAY)
  assert mask["llm"]["h"]["ln_1"]["weight"] is True  # Qwen's RMSNorm is decayed, as in BiRD
  assert mask["llm"]["h"]["attn"]["c_attn"] == {"kernel": True, "bias": False}
  assert mask["visual"]["ln_post"] == {"weight": False, "bias": False}
  assert mask["visual"]["attn_pool"] == {"ln_q": {"weight": False}, "query": True}


def test_bird_freeze_pattern():
  from flax import nnx

  f = O.trainable_filter(O.BIRD_FREEZE)
  p = nnx.Param(jnp.zeros(1))
  assert f(("visual", "attn_pool", "query"), p) and f(("llm", "wte"), p)
  assert not f(("visual", "blocks", "mlp", "c_fc", "kernel"), p)
  assert not f(("visual", "proj"), p) and not f(("visual", "ln_post", "weight"), p)


def test_schedule_is_hf_cosine_with_linear_warmup():
  lr = O.schedule(O.OptimConfig(lr=1.0, warmup_ratio=0.1), 100)
  assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(0.5)
  assert float(lr(10)) == pytest.approx(1.0)
  assert float(lr(55)) == pytest.approx(0.5, abs=1e-6)  # half way through the cosine
  assert float(lr(100)) == pytest.approx(0.0, abs=1e-7)
