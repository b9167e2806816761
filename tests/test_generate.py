"""Generation: greedy parity with transformers' generate, left padding, stop ids and
min_new_tokens, images at prefill, prompt buckets, sampling, and a sharded mesh."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from conftest import forward, image_row
from bird_jax.data.image import normalize
from bird_jax.generate import (GenerationConfig, Generator, bucket_width, default_buckets,
                               nucleus_mask, sampling_key)
from bird_jax.sharding import make_mesh, param_specs

EOS = 256  # <|endoftext|> of the byte tokenizer
NEW = 12
GREEDY = GenerationConfig(max_new_tokens=NEW, min_new_tokens=1, stop_ids=(EOS,), pad_id=EOS)


@pytest.fixture(scope="module")
def gen(tiny_model):
  return Generator(tiny_model, GREEDY, batch_size=4)


@pytest.fixture(scope="module")
def prompts():
  rng = np.random.default_rng(0)
  return [rng.integers(0, 256, n).astype(np.int32).tolist() for n in (7, 19, 12)]


def hf_generate(torch_reference, prompts, **kw):
  """transformers' generate on a left-padded batch; returns each row's new tokens, cut after
  the first eos like ours."""
  width = max(len(p) for p in prompts)
  ids = torch.full((len(prompts), width), EOS, dtype=torch.long)
  mask = torch.zeros_like(ids)
  for i, p in enumerate(prompts):
    ids[i, width - len(p):] = torch.tensor(p)
    mask[i, width - len(p):] = 1
  with torch.no_grad():
    out = torch_reference.llm.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                       max_new_tokens=NEW, pad_token_id=EOS, **kw)
  rows = []
  eos = kw.get("eos_token_id", EOS)
  eos = {eos} if isinstance(eos, int) else set(eos)
  for r in out[:, width:].tolist():
    cut = next((i + 1 for i, t in enumerate(r) if t in eos), len(r))
    rows.append(r[:cut])
  return rows


@pytest.fixture(scope="module")
def greedy_out(gen, prompts):
  return [o.tolist() for o in gen.generate(prompts)]


def test_greedy_equals_transformers_generate(greedy_out, prompts, torch_reference):
  assert [len(o) for o in greedy_out] == [NEW] * 3  # random weights: no eos in 12 steps
  for p, o in zip(prompts, greedy_out):  # one prompt at a time
    assert hf_generate(torch_reference, [p], eos_token_id=EOS, min_new_tokens=1)[0] == o
  # transformers' own left-padded batch (positions from its attention mask)
  assert hf_generate(torch_reference, prompts, eos_token_id=EOS, min_new_tokens=1) == greedy_out


def test_stop_ids_end_rows_and_match_transformers(gen, prompts, greedy_out, torch_reference):
  stop = greedy_out[0][4]  # a token prompt 0 emits at step 4 (its first occurrence decides)
  first = greedy_out[0].index(stop)
  cfg = GenerationConfig(max_new_tokens=NEW, min_new_tokens=1, stop_ids=(EOS, stop), pad_id=EOS)
  outs = [o.tolist() for o in gen.generate(prompts, cfg=cfg)]
  assert outs[0] == greedy_out[0][:first + 1]  # stop id included, then nothing
  for o, g in zip(outs, greedy_out):  # each row is the greedy row cut at its first stop id
    cut = next((i + 1 for i, t in enumerate(g) if t in (EOS, stop)), len(g))
    assert o == g[:cut]
  assert hf_generate(torch_reference, prompts, eos_token_id=[EOS, stop], min_new_tokens=1) == outs


def test_min_new_tokens_suppresses_stop_ids(gen, prompts, greedy_out, torch_reference):
  stop = greedy_out[1][0]  # the greedy FIRST token of prompt 1
  free = GenerationConfig(max_new_tokens=NEW, min_new_tokens=0, stop_ids=(stop,), pad_id=EOS)
  assert gen.generate(prompts[1:2], cfg=free)[0].tolist() == [stop]  # stops at once
  held = GenerationConfig(max_new_tokens=NEW, min_new_tokens=3, stop_ids=(stop,), pad_id=EOS)
  out = gen.generate(prompts[1:2], cfg=held)[0].tolist()
  assert stop not in out[:3] and out[0] != stop
  assert out == hf_generate(torch_reference, prompts[1:2], eos_token_id=stop, min_new_tokens=3)[0]


def test_prompt_alone_equals_prompt_in_a_padded_batch(gen, prompts, greedy_out):
  for p, g in zip(prompts, greedy_out):
    assert gen.generate([p])[0].tolist() == g
  rng = np.random.default_rng(1)
  long = rng.integers(0, 256, 40).astype(np.int32).tolist()  # forces the 48-wide bucket
  mixed = gen.generate([long, prompts[0], prompts[2]])
  assert mixed[1].tolist() == greedy_out[0] and mixed[2].tolist() == greedy_out[2]


@pytest.mark.heavy
def test_images_are_spliced_at_prefill(gen, tiny_cfg, tiny_model):
  """Cached decoding with an image equals naive greedy (full forward pass per step)."""
  rows = [image_row(tiny_cfg, 26, [2], seed=3), image_row(tiny_cfg, 30, [5], seed=4)]
  pixels = np.random.default_rng(5).integers(0, 256, (2, 1, 56, 56, 3), dtype=np.uint8)
  outs = gen.generate([r.tolist() for r in rows], pixels)
  images = normalize(pixels)
  width = 30 + NEW  # one right-padded buffer: later positions never affect earlier logits
  for b, (row, out) in enumerate(zip(rows, outs)):
    buf = np.full((1, width), EOS, np.int32)
    buf[0, :len(row)] = row
    for i in range(len(row), len(row) + NEW):
      buf[0, i] = int(jnp.argmax(forward(tiny_model, jnp.asarray(buf), images[b:b + 1])[0, i - 1]))
    naive = buf[0, len(row):len(row) + NEW].tolist()
    assert out.tolist() == naive[:naive.index(EOS) + 1 if EOS in naive else NEW]


def test_buckets_bound_compilations(gen, prompts):
  assert default_buckets(300)[:6] == (32, 48, 64, 96, 128, 192)
  assert default_buckets(300)[-1] == 300 and bucket_width(33, (32, 48)) == 48
  with pytest.raises(ValueError, match="longer than the largest bucket"):
    bucket_width(49, (32, 48))
  rng = np.random.default_rng(2)
  gen.generate([rng.integers(0, 256, n).tolist() for n in (3, 30)])  # bucket 32
  gen.generate([rng.integers(0, 256, n).tolist() for n in (33, 44, 9)])  # bucket 48
  before = gen.traces
  for n in (5, 17, 31, 40, 47, 34):  # new prompts and batch sizes, same buckets
    gen.generate([rng.integers(0, 256, n).tolist()] * (1 + n % 3))
  assert gen.traces == before


def test_nucleus_mask_by_hand():
  logits = jnp.log(jnp.asarray([[0.05, 0.5, 0.15, 0.3]]))
  assert nucleus_mask(logits, 0.8).tolist() == [[False, True, False, True]]
  assert nucleus_mask(logits, 0.81).tolist() == [[False, True, True, True]]
  assert nucleus_mask(logits, 1e-6).tolist() == [[False, True, False, False]]
  # a top_p that float32 rounds to 0 still keeps the most probable id
  for tiny in (1e-300, 0.0):
    assert nucleus_mask(logits, tiny).tolist() == [[False, True, False, False]]


def test_sampling(gen, prompts, greedy_out):
  tiny_p = GenerationConfig(max_new_tokens=NEW, stop_ids=(EOS,), pad_id=EOS, temperature=1.0,
                            top_p=1e-6)
  assert [o.tolist() for o in gen.generate(prompts, cfg=tiny_p)] == greedy_out  # nucleus = argmax
  tinier = dataclasses.replace(tiny_p, top_p=1e-300)  # 0 in float32: the argmax still stays
  assert [o.tolist() for o in gen.generate(prompts, cfg=tinier)] == greedy_out
  hot = GenerationConfig(max_new_tokens=NEW, stop_ids=(EOS,), pad_id=EOS, temperature=5.0,
                         top_p=0.99)
  a = [o.tolist() for o in gen.generate(prompts, cfg=hot, seed=1)]
  assert a == [o.tolist() for o in gen.generate(prompts, cfg=hot, seed=1)]  # seeded
  assert a != [o.tolist() for o in gen.generate(prompts, cfg=hot, seed=2)]
  assert a != greedy_out
  # any int is a seed: taken modulo 2**32, the width of the key's seed
  assert [o.tolist() for o in gen.generate(prompts, cfg=hot, seed=2**64 + 1)] == a
  assert sampling_key(-1) == sampling_key(2**32 - 1) and sampling_key(2**63) == sampling_key(0)


@pytest.mark.heavy
def test_sharded_generation_equals_single_device(tiny_model, prompts, greedy_out):
  assert jax.device_count() >= 8, "conftest forces 8 host devices"
  mesh = make_mesh(data=2, fsdp=2, tensor=2)
  sharded = Generator(tiny_model, GREEDY, batch_size=4, mesh=mesh)
  wte = sharded.state["llm"]["wte"].get_value()  # placed per the rules table, not replicated
  assert wte.sharding.spec == param_specs(nnx.state(tiny_model), mesh)["llm"]["wte"].get_value()
  assert any(axis is not None for axis in wte.sharding.spec)
  assert [o.tolist() for o in sharded.generate(prompts)] == greedy_out


def test_a_replicated_parameter_on_a_sharding_mesh_is_warned_about(tiny_cfg):
  """As training checks (bird_jax.sharding.replication_problem): a vocabulary of 1030 does not
  divide by fsdp=4, so the 1 MiB embedding and head stay whole on every device; 1032 does."""
  import dataclasses
  import warnings

  from bird_jax.model import abstract_model

  mesh = make_mesh(data=2, fsdp=4, tensor=1)
  for vocab, warned in ((1030, True), (1032, False)):
    cfg = tiny_cfg.replace(llm=dataclasses.replace(tiny_cfg.llm, vocab_size=vocab))
    graphdef, shapes = nnx.split(abstract_model(cfg))
    model = nnx.merge(graphdef, jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes))
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      Generator(model, GREEDY, batch_size=8, mesh=mesh)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    if warned:
      assert len(messages) == 1 and "replicated on mesh" in messages[0]
      assert "llm.wte" in messages[0] and "llm.lm_head" in messages[0]
    else:
      assert not messages
