"""The programs a GPU or TPU user runs, lowered for cuda and tpu on this host (a CPU is enough):
abstract inputs (ShapeDtypeStruct) carrying their real shardings over an AbstractMesh of the
config's mesh shape, `jax.jit(...).trace(...).lower(lowering_platforms=(platform,))`. Nothing
full-size is allocated; every program is the project's own (the trainer's step through
`plan.trace_step`, the eval and serve `Generator`, the model's __call__)."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from bird_jax import plan, sharding
from bird_jax.config import get_preset
from bird_jax.model import abstract_model
from bird_jax.model.layers import cudnn_available
from bird_jax.train import config as C
from bird_jax.train.config import load_config_file

PLATFORMS = ("cuda", "tpu")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# a platform-specific kernel or a host callback shows up as a custom call
CUSTOM_CALL = re.compile(r"custom_call\s*@([\w.$]+)")


def lower(traced, platform: str) -> str:
  """The StableHLO text of `traced` lowered for `platform`; fails on any custom call."""
  t0 = time.perf_counter()
  text = traced.lower(lowering_platforms=(platform,)).as_text()
  print(f"lowered for {platform} in {time.perf_counter() - t0:.2f} s ({len(text) / 1e3:.0f} kB)")
  assert not CUSTOM_CALL.findall(text), sorted(set(CUSTOM_CALL.findall(text)))
  return text


def partitions(text: str) -> int:
  return int(re.search(r"mhlo.num_partitions = (\d+)", text).group(1))


def config_mesh(c) -> jax.sharding.AbstractMesh:
  """The AbstractMesh of a run config's mesh (its sizes fixed: a config file names them)."""
  sizes = (c.mesh.data, c.mesh.fsdp, c.mesh.tensor)
  assert -1 not in sizes, "give the config's mesh sizes"
  return sharding.abstract_mesh(*sizes, n_devices=math.prod(sizes))


def traced_step(name: str):
  """(the config's train step traced on its mesh, Layout, config)."""
  c = load_config_file(CONFIGS / name)
  t0 = time.perf_counter()
  traced, layout = plan.trace_step(c, C.model_config(c), config_mesh(c), int(c.optim.grad_accum))
  print(f"{name}: traced in {time.perf_counter() - t0:.2f} s")
  return traced, layout, c


@pytest.fixture(scope="module")
def step_4gpu():
  return traced_step("bird_7b_4gpu.py")


@pytest.fixture(scope="module")
def step_lora():
  return traced_step("lora_7b_1gpu.py")


def trained(layout) -> float:
  return sum(x.size for x in jax.tree.leaves(layout.abstract_params)) / 1e9


@pytest.mark.parametrize("platform", PLATFORMS)
def test_bird_7b_4gpu_train_step_lowers(step_4gpu, platform):
  traced, layout, c = step_4gpu
  text = lower(traced, platform)
  assert partitions(text) == 4  # fsdp 4
  assert round(trained(layout), 3) == 7.796  # the full-size LLM and resampler
  # 32 micro-batches of 4 rows of 2048 tokens, 4 images of 448 px per row; fsdp-split weights
  assert "tensor<32x4x2048xi32>" in text and "tensor<32x4x4x448x448x3xui8>" in text
  assert '{"fsdp"}' in text


@pytest.mark.parametrize("platform", PLATFORMS)
def test_lora_7b_1gpu_train_step_lowers(step_lora, platform):
  traced, layout, c = step_lora
  text = lower(traced, platform)
  assert partitions(text) == 1
  assert round(trained(layout), 3) == 0.145  # rank-64 adapters over the bf16 base
  assert "tensor<128x1x2048xi32>" in text


# ---- inference: the eval and serve generation program, the forward --------------------------

def inference_model():
  """The full-size model as an HF Qwen-VL-Chat folder loads it (bf16 weights), abstract."""
  return abstract_model(get_preset("qwen_vl_7b").replace(param_dtype="bfloat16"))


@pytest.fixture(scope="module")
def eval_program():
  """eval.py's generator (`make_generator`, BiRD's greedy decoding up to 100 new tokens, batch
  8) on its default mesh (data parallel) over 4 devices, one image per prompt, the largest
  prompt bucket."""
  from bird_jax.evaluation.config import default_config
  from bird_jax.evaluation.runner import RunOptions, make_generator
  from bird_jax.tokenizer import qwen_tokenizer

  model = inference_model()
  mesh = sharding.abstract_mesh(**default_config().mesh.to_dict(), n_devices=4)
  gen = make_generator(model, model.cfg, qwen_tokenizer(), RunOptions(), mesh)
  return gen.trace(8, gen.buckets[-1], images=1), gen


@pytest.fixture(scope="module")
def serve_program():
  """The server's generator (`Assistant`, batch 8 as `python -m bird_jax.serve` runs it) with
  top-p sampling, one image per conversation, the largest prompt bucket; no mesh."""
  import dataclasses

  from bird_jax.assistant import Assistant
  from bird_jax.tokenizer import qwen_tokenizer

  model = inference_model()
  bot = Assistant(model, qwen_tokenizer(), model.cfg, batch_size=8)
  gen = bot.gen
  sampling = dataclasses.replace(gen.cfg, temperature=0.7, top_p=0.9)
  return gen.trace(8, gen.buckets[-1], images=1, cfg=sampling), gen


@pytest.mark.parametrize("platform", PLATFORMS)
def test_eval_generation_lowers(eval_program, platform):
  traced, gen = eval_program
  text = lower(traced, platform)
  assert partitions(text) == 4 and gen.buckets[-1] == 1948
  # the KV cache: 32 layers x 8 rows x 32 heads x (1948 + 100) positions x 128, rows split
  assert "tensor<32x8x32x2048x128xbf16>" in text
  assert "stablehlo.while" in text  # the decoding loop


@pytest.mark.parametrize("platform", PLATFORMS)
def test_serve_generation_lowers(serve_program, platform):
  traced, gen = serve_program
  text = lower(traced, platform)
  assert partitions(text) == 1
  assert "stablehlo.while" in text and "stablehlo.sort" in text  # top-p sorts the logits


@pytest.fixture(scope="module")
def forward_program():
  """The model's __call__ on 4 rows of 2048 tokens with 4 images each, parameters and rows
  sharded as bird_7b_4gpu.py's mesh shards them (fsdp 4)."""
  c = load_config_file(CONFIGS / "bird_7b_4gpu.py")
  cfg = C.model_config(c)
  mesh = config_mesh(c)
  graphdef, state = nnx.split(abstract_model(cfg))
  state = sharding.with_shardings(
      state, sharding.named_shardings(sharding.param_specs(state, mesh), mesh))
  rows = sharding.logical_to_spec(("batch",), mesh_axes=mesh.axis_names)[0]
  s = cfg.vision.image_size
  tokens = jax.ShapeDtypeStruct((4, 2048), jnp.int32, sharding=NamedSharding(mesh, P(rows)))
  images = jax.ShapeDtypeStruct((4, 4, s, s, 3), jnp.float32,
                                sharding=NamedSharding(mesh, P(rows)))

  def forward(state, tokens, images):
    return nnx.merge(graphdef, state)(tokens, images)

  with sharding.use_mesh(mesh):
    return jax.jit(forward).trace(state, tokens, images)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_full_size_forward_lowers(forward_program, platform):
  text = lower(forward_program, platform)
  assert partitions(text) == 4
  assert re.search(r"-> \(tensor<4x2048x151936xf32>", text)  # the logits


# ---- the attention implementation ---------------------------------------------------------

def test_cudnn_attention_lowers_for_cuda_or_is_refused_up_front():
  """attention_impl='cudnn' (the model config's option) on a packed batch: where jax has its
  CUDA plugin it lowers to cuDNN's kernel; elsewhere tracing stops with one line naming the
  option (jax's own error would be 'cuDNN is not detected.')."""
  cfg = get_preset("tiny").replace(attention_impl="cudnn", dtype="bfloat16")
  graphdef, state = nnx.split(abstract_model(cfg))
  tokens = jax.ShapeDtypeStruct((2, 64), jnp.int32)

  def forward(state, tokens, segment_ids):
    return nnx.merge(graphdef, state)(tokens, segment_ids=segment_ids)

  program = jax.jit(forward)
  if cudnn_available():
    text = program.trace(state, tokens, tokens).lower(lowering_platforms=("cuda",)).as_text()
    assert "cudnn" in text
    return
  with pytest.raises(ValueError) as e:
    program.trace(state, tokens, tokens)
  assert "attention_impl" in str(e.value) and "\n" not in str(e.value)


def test_the_configs_use_xla_attention():
  """What runs on a GPU for the recipes' packed batches: jax's XLA attention (the default)."""
  for name in ("bird_7b.py", "bird_7b_4gpu.py", "bird_7b_8gpu.py", "bird_7b_1gpu.py",
               "lora_7b_1gpu.py"):
    assert C.model_config(load_config_file(CONFIGS / name)).attention_impl is None, name


def test_attention_memory_at_2048_tokens():
  """docs/training.md's figures, from the 7B config's shapes: XLA's attention stores the fp32
  scores [heads, T, T] and the bf16 probabilities per row and layer; the packed mask is bool
  [1, T, T], cuDNN's bias from it bf16; the ViT's fp32 scores per image."""
  cfg = get_preset("qwen_vl_7b")
  t, mib = 2048, 2**20
  scores = cfg.llm.heads * t * t
  assert round(scores / 1e6) == 134
  assert (scores * 4 / mib, scores * 2 / mib) == (512, 256)  # fp32 scores, bf16 probabilities
  assert (t * t / mib, t * t * 2 / mib) == (4, 8)
  patches = (cfg.vision.image_size // cfg.vision.patch_size) ** 2
  assert cfg.vision.heads * patches**2 * 4 / mib == 64


def test_full_size_generation_on_cpu_holds_no_float32_copy_of_the_weights():
  """XLA:CPU converts 16-bit weights to float32 for its products; the generation program is
  compiled without loop-invariant code motion (bird_jax/xla_cpu.py) and the logits run in
  chunks, so its temporaries stay near 1 GB beside 19.3 GB of bfloat16 weights (39.3 GB of
  them when the converts are lifted out of the loops)."""
  from bird_jax.generate import GenerationConfig, Generator

  cfg = get_preset("qwen_vl_7b").replace(param_dtype="bfloat16")
  gen = Generator(abstract_model(cfg), GenerationConfig(max_new_tokens=8, stop_ids=(151643,),
                                                        pad_id=151643),
                  batch_size=1, buckets=(298,))
  memory = gen.trace(1, 298, 1).lower().compile().memory_analysis()
  assert memory.argument_size_in_bytes > 19e9
  assert memory.temp_size_in_bytes < 2e9, memory.temp_size_in_bytes / 1e9
