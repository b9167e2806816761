"""The device suite: on one accelerator, in one command, what the CPU cannot measure.

    .venv/bin/python bench/device_suite.py [--out device_suite.json] [--budget-s 450]
    .venv/bin/python bench/device_suite.py --cpu-smoke    # tiny sizes on the CPU (CI)

Sections, in order (each one's failure is recorded and the next one runs; once `--budget-s`
seconds have passed, the remaining sections are skipped and say so):

  train      configs/bird_7b.py's recipe (bf16 compute over fp32 masters, full remat, chunked
             loss, ViT frozen, AdamW) on the full-width model cut to a few layers: step time,
             tokens/s, MFU against the matmul peak below; peak device memory against the
             planner's figure for the same config (`bird_jax.plan.plan`, run in a CPU child
             process while the device trains) and the device compiler's own estimate
  peak       matmul FLOP/s in the compute dtype (bf16; fp32 with --cpu-smoke)
  bandwidth  device-to-device copy bytes/s
  forward    the full-size model (9.66 B) at 448 px / 256 image tokens: forward time and
             FLOP/s; bf16-compute logits against fp32 ("highest" matmul precision) logits
  generate   the full-size LLM in bf16, greedy: tokens/s at batch 1, 8, 32; prefill and decode
             as fractions of the matmul peak; batch-1 decode against the memory roofline
             (weights + KV cache read per token / the copy bandwidth above, and / the nominal
             HBM bandwidth of known GPUs)

Writes one JSON file (`--out`), rewritten after every section (a run stopped early keeps what
it measured), and prints a table. Sizes are chosen for one 80-141 GB GPU and
about 8 minutes including compilation.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import measure

REPO = Path(__file__).resolve().parents[1]

SIZES = {
    "gpu": dict(train_layers=(4, 8), train_rows=4, train_len=2048, train_images=2, train_steps=5,
                peak_n=8192, peak_reps=50, copy_bytes=2 * 2**30, copy_reps=20,
                forward_rows=2, forward_len=512, forward_reps=5, preset="qwen_vl_7b",
                batches=(1, 8, 32), prompt=128, new=64, gen_repeats=3),
    "cpu-smoke": dict(train_layers=(1, 1), train_rows=2, train_len=64, train_images=1,
                      train_steps=1, peak_n=256, peak_reps=5, copy_bytes=16 * 2**20, copy_reps=3,
                      forward_rows=1, forward_len=48, forward_reps=1, preset="tiny",
                      batches=(2,), prompt=32, new=8, gen_repeats=2),
}

# nominal HBM bandwidth (bytes/s) by device kind, for the decode roofline
NOMINAL_HBM = {"H200": 4.8e12, "H100": 3.35e12, "A100-SXM4-80GB": 2.04e12, "A100": 1.56e12}


# ---- configs and models ------------------------------------------------------------------------

def train_config(z: dict[str, Any]):
  """configs/bird_7b.py with the model cut to z's depths and a one-device batch."""
  from bird_jax.train.config import load_config_file

  c = load_config_file(REPO / "configs" / "bird_7b.py")
  llm_layers, vit_layers = z["train_layers"]
  over = dict(c.model.overrides)
  over.update(llm={"layers": llm_layers}, vision={"layers": vit_layers})
  c.model.preset = z["preset"]
  c.model.overrides = over
  c.data.batch_size, c.data.max_len = z["train_rows"], z["train_len"]
  c.data.max_images_per_row = z["train_images"]
  c.optim.grad_accum = 1
  c.step.loss_chunk = min(int(c.step.loss_chunk), z["train_len"])
  return c


ONE_DEVICE = {"data": 1, "fsdp": 1, "tensor": 1}


def planner_child(z: dict[str, Any]) -> None:
  """Runs in the child process (CPU): prints the planner's figures as one JSON line."""
  from bird_jax.plan import plan

  p = plan(train_config(z), ONE_DEVICE)
  print(json.dumps({"total_gib": p.total_gib, "argument_gib": p.argument_gib,
                    "temp_gib": p.temp_gib, "compile_s": p.compile_s}))


def start_planner(smoke: bool) -> subprocess.Popen:
  from bird_jax.plan import planner_env

  env = {**os.environ, **planner_env(1), "JAX_PLATFORMS": "cpu"}
  cmd = [sys.executable, __file__, "--planner-child"] + (["--cpu-smoke"] if smoke else [])
  return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def random_model(cfg):
  """The model with random weights, created on the device (never on the host)."""
  from bird_jax.model import QwenVL, abstract_model

  graphdef = nnx.split(abstract_model(cfg))[0]
  return graphdef, jax.jit(lambda: nnx.split(QwenVL(cfg, rngs=nnx.Rngs(0)))[1])()


def image_tokens(cfg, rows: int, length: int, rng: np.random.Generator) -> np.ndarray:
  """[rows, length] random text ids with one image span at position 5."""
  q = cfg.vision.n_queries
  tokens = rng.integers(0, 256, (rows, length)).astype(np.int32)
  tokens[:, 5], tokens[:, 6:6 + q], tokens[:, 6 + q] = (
      cfg.image_start_id, cfg.image_pad_id, cfg.image_end_id)
  return tokens


def device_memory() -> dict[str, float] | None:
  stats = jax.devices()[0].memory_stats()
  if not stats:
    return None
  gib = lambda k: stats.get(k, float("nan")) / 2**30
  return {"peak_gib": gib("peak_bytes_in_use"), "in_use_gib": gib("bytes_in_use"),
          "limit_gib": gib("bytes_limit")}


# ---- sections ----------------------------------------------------------------------------------

def section_train(z, ctx) -> dict[str, Any]:
  from bird_jax import sharding
  from bird_jax.plan import compile_step
  from bird_jax.train import config as C
  from bird_jax.train import optimizer as O
  from bird_jax.train import state as S

  c = train_config(z)
  cfg = C.model_config(c)
  mesh = sharding.make_mesh(**ONE_DEVICE, devices=jax.devices()[:1])
  t0 = time.perf_counter()
  compiled, flops, _ = compile_step(c, cfg, mesh, 1)
  compile_s = time.perf_counter() - t0
  m = compiled.memory_analysis()
  compiled_gib = (m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes
                  - m.alias_size_in_bytes) / 2**30
  tx, _ = O.make_optimizer(C.optim_config(c), int(c.train.steps))
  rows, length, images = z["train_rows"], z["train_len"], z["train_images"]
  rng = np.random.default_rng(0)
  tokens = image_tokens(cfg, rows, length, rng)
  s = cfg.vision.image_size
  if images > 1:  # a second span after the first
    q = cfg.vision.n_queries
    at = 8 + q
    tokens[:, at], tokens[:, at + 1:at + 1 + q], tokens[:, at + 1 + q] = (
        cfg.image_start_id, cfg.image_pad_id, cfg.image_end_id)
  batch = {"tokens": tokens[None], "labels": tokens[None].copy(),
           "segment_ids": np.ones((1, rows, length), np.int32),
           "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (1, rows, length)).copy(),
           "images": rng.integers(0, 255, (1, rows, images, s, s, 3)).astype(np.uint8)}
  batch = jax.device_put(batch, compiled.input_shardings[0][2])
  with jax.set_mesh(mesh):
    layout = S.make_layout(cfg, list(c.freeze), tx, mesh)
    params, frozen = S.random_params(cfg, list(c.freeze), layout, seed=0)
    state = S.initial_state(params, tx, layout)
    for _ in range(2):  # warm-up
      state, metrics = compiled(state, frozen, batch)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(z["train_steps"]):
      state, metrics = compiled(state, frozen, batch)
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - t0) / z["train_steps"]
  memory = device_memory()
  n_params = sum(x.size for x in jax.tree.leaves((layout.abstract_params, layout.abstract_frozen)))
  r = {"model": f"{z['preset']} width, LLM {cfg.llm.layers} / ViT {cfg.vision.layers} layers, "
                f"{n_params / 1e9:.2f} B parameters",
       "batch": f"{rows} x {length} tokens, {images} image(s) of {s} px per row",
       "compile_s": compile_s, "step_s": step_s, "tokens_per_s": rows * length / step_s,
       "analytic_tflop_per_step": flops.total / 1e12,
       "achieved_tflops": flops.total / step_s / 1e12, "loss": float(metrics["loss"]),
       "compiled_estimate_gib": compiled_gib}
  if memory:
    r["peak_memory_gib"] = memory["peak_gib"]
  ctx["train_flops_per_s"] = flops.total / step_s
  return r


def collect_planner(proc: subprocess.Popen, timeout: float) -> dict[str, Any]:
  try:
    stdout, stderr = proc.communicate(timeout=max(timeout, 1))
  except subprocess.TimeoutExpired:
    proc.kill()
    return {"error": "the planner's child process did not finish in time"}
  if proc.returncode != 0:
    return {"error": (stderr.strip().splitlines() or ["?"])[-1]}
  return json.loads(stdout.strip().splitlines()[-1])


def add_planner(train: dict[str, Any], proc: subprocess.Popen, left: float) -> None:
  plan = collect_planner(proc, left + 60)
  train["planner"] = plan
  if "peak_memory_gib" in train and "total_gib" in plan:
    train["measured_over_planned"] = train["peak_memory_gib"] / plan["total_gib"]


def add_mfu(results: dict[str, Any], ctx) -> None:
  if "train_flops_per_s" in ctx and ctx.get("peak"):
    results["train"]["mfu"] = ctx["train_flops_per_s"] / ctx["peak"]


def section_peak(z, ctx) -> dict[str, Any]:
  dtype = "float32" if ctx["smoke"] else "bfloat16"
  peak = measure.matmul_peak(z["peak_n"], z["peak_reps"], dtype)
  ctx["peak"] = peak
  return {"dtype": dtype, "n": z["peak_n"], "tflops": peak / 1e12}


def section_bandwidth(z, ctx) -> dict[str, Any]:
  bw = measure.copy_bandwidth(z["copy_bytes"], z["copy_reps"])
  ctx["bandwidth"] = bw
  return {"bytes": z["copy_bytes"], "gb_per_s": bw / 1e9}


def section_forward(z, ctx) -> dict[str, Any]:
  from bird_jax.config import get_preset
  from bird_jax.train.flops import forward_flops

  cfg32 = get_preset(z["preset"]).replace(dtype="float32", param_dtype="float32")
  _, state = random_model(cfg32)
  rows, length = z["forward_rows"], z["forward_len"]
  rng = np.random.default_rng(1)
  tokens = jnp.asarray(image_tokens(cfg32, rows, length, rng))
  s = cfg32.vision.image_size
  pixels = jnp.asarray(rng.standard_normal((rows, 1, s, s, 3)), jnp.float32)

  def forward(compute: str):
    from bird_jax.model import abstract_model

    compute_graph = nnx.split(abstract_model(cfg32.replace(dtype=compute)))[0]
    return jax.jit(lambda state, tokens, pixels: nnx.merge(compute_graph, state)(tokens, pixels))

  t0 = time.perf_counter()
  f16 = forward("bfloat16")
  logits16 = jax.block_until_ready(f16(state, tokens, pixels))
  first_s = time.perf_counter() - t0
  fwd_s = measure.seconds(lambda: f16(state, tokens, pixels), z["forward_reps"])
  with jax.default_matmul_precision("highest"):
    logits32 = jax.block_until_ready(forward("float32")(state, tokens, pixels))
  flops = forward_flops(cfg32, rows=rows, length=length, images=rows)
  a, b = np.asarray(logits16, np.float32), np.asarray(logits32, np.float32)
  diff = np.abs(a - b)
  r = {"inputs": f"{rows} x {length} tokens, 1 image of {s} px ({cfg32.vision.n_queries} "
                 f"image tokens) per row", "first_call_s": first_s, "forward_s": fwd_s,
       "tokens_per_s": rows * length / fwd_s, "achieved_tflops": flops / fwd_s / 1e12,
       "bf16_vs_fp32": {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
                        "fp32_logit_std": float(b.std()),
                        "top1_agreement": float((a.argmax(-1) == b.argmax(-1)).mean())}}
  if ctx.get("peak"):
    r["fraction_of_peak"] = flops / fwd_s / ctx["peak"]
  return r


def section_generate(z, ctx) -> dict[str, Any]:
  from bird_jax.config import get_preset
  from bird_jax.generate import GenerationConfig, Generator
  from bird_jax.train.flops import decode_step_bytes, decode_step_flops, prefill_flops

  cfg = get_preset(z["preset"]).replace(dtype="bfloat16", param_dtype="bfloat16",
                                        vision_param_dtype="bfloat16")
  graphdef, state = random_model(cfg)
  model = nnx.merge(graphdef, state)
  prompt, new = z["prompt"], z["new"]
  gcfg = GenerationConfig(max_new_tokens=new, min_new_tokens=new, stop_ids=(256,), pad_id=256)
  ids = np.random.default_rng(2).integers(0, 256, prompt).tolist()
  cache_len = prompt + new
  r: dict[str, Any] = {"setup": f"{cfg.llm.layers}-layer LLM, bf16 weights and KV cache, "
                                f"greedy, {prompt}-token prompts, {new} new tokens"}
  for b in z["batches"]:
    if ctx["over_budget"]():
      r[f"batch_{b}"] = {"skipped": "budget"}
      continue
    gen = Generator(model, gcfg, batch_size=b, buckets=(prompt,))
    t0 = time.perf_counter()
    gen.generate([ids] * b)
    compile_s = time.perf_counter() - t0
    ph = measure.phase_times(gen, [ids] * b, repeats=z["gen_repeats"])
    row = {"compile_and_first_s": compile_s, "tokens_per_s": b * new / ph.total_s,
           "prefill_s": ph.prefill_s, "decode_step_ms": ph.decode_step_s * 1e3,
           "decode_tokens_per_s": b / ph.decode_step_s}
    if ctx.get("peak"):
      row["prefill_fraction_of_peak"] = (prefill_flops(cfg, rows=b, length=prompt)
                                         / ph.prefill_s / ctx["peak"])
      row["decode_fraction_of_peak"] = (decode_step_flops(cfg, rows=b, cache_length=cache_len)
                                        / ph.decode_step_s / ctx["peak"])
    nbytes = decode_step_bytes(cfg, rows=b, cache_length=cache_len, weight_bytes=2, cache_bytes=2)
    row["bytes_per_step_gb"] = nbytes / 1e9
    if ctx.get("bandwidth"):
      row["roofline_measured_ms"] = nbytes / ctx["bandwidth"] * 1e3
      row["fraction_of_measured_roofline"] = nbytes / ctx["bandwidth"] / ph.decode_step_s
    nominal = next((v for k, v in NOMINAL_HBM.items() if k in ctx["device_kind"]), None)
    if nominal:
      row["roofline_nominal_ms"] = nbytes / nominal * 1e3
      row["fraction_of_nominal_roofline"] = nbytes / nominal / ph.decode_step_s
    r[f"batch_{b}"] = row
  return r


SECTIONS: dict[str, Callable] = {"train": section_train, "peak": section_peak,
                                 "bandwidth": section_bandwidth, "forward": section_forward,
                                 "generate": section_generate}


# ---- driver ------------------------------------------------------------------------------------

def git_commit() -> str:
  try:
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def flatten(prefix: str, value: Any) -> list[tuple[str, Any]]:
  if isinstance(value, dict):
    return [kv for k, v in value.items() for kv in flatten(f"{prefix}.{k}" if prefix else k, v)]
  return [(prefix, value)]


def table(results: dict[str, Any]) -> str:
  lines = ["| section | figure | value |", "|---|---|---|"]
  for name, res in results.items():
    for key, value in flatten("", res):
      text = f"{value:.4g}" if isinstance(value, float) else str(value)
      lines.append(f"| {name} | {key} | {text} |")
  return "\n".join(lines)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes, CPU (CI)")
  ap.add_argument("--out", default="device_suite.json")
  ap.add_argument("--budget-s", type=float, default=450.0,
                  help="skip the sections that would start after this many seconds")
  ap.add_argument("--only", nargs="*", choices=list(SECTIONS), default=None)
  ap.add_argument("--planner-child", action="store_true", help=argparse.SUPPRESS)
  args = ap.parse_args()
  z = SIZES["cpu-smoke" if args.cpu_smoke else "gpu"]
  if args.planner_child:
    planner_child(z)
    return
  if args.cpu_smoke:
    jax.config.update("jax_platforms", "cpu")
  start = time.perf_counter()
  names = args.only or list(SECTIONS)
  planner = start_planner(args.cpu_smoke) if "train" in names else None
  device = jax.devices()[0]
  ctx = {"smoke": args.cpu_smoke, "device_kind": device.device_kind,
         "over_budget": lambda: time.perf_counter() - start > args.budget_s}
  results: dict[str, Any] = {}
  meta = {"date": datetime.date.today().isoformat(), "commit": git_commit(),
          "device": f"{device.platform} {device.device_kind}", "devices": jax.device_count(),
          "jax": jax.__version__, "command": " ".join([Path(sys.executable).name] + sys.argv),
          "sizes": z}

  def write() -> None:  # after every section: a run stopped early keeps what it measured
    meta["wall_s"] = time.perf_counter() - start
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=1,
                                         default=str))

  for name in names:
    if ctx["over_budget"]():
      results[name] = {"skipped": "budget"}
      continue
    t0 = time.perf_counter()
    try:
      results[name] = SECTIONS[name](z, ctx)
    except Exception as e:  # one section's failure must not lose the others' figures
      traceback.print_exc()
      results[name] = {"error": f"{type(e).__name__}: {e}"[:500]}
    results[name]["wall_s"] = time.perf_counter() - t0
    if name == "train" and planner is not None:
      add_planner(results["train"], planner, args.budget_s - (time.perf_counter() - start))
      planner = None
    add_mfu(results, ctx)
    write()
    print(f"[{time.perf_counter() - start:6.1f} s] {name}: done", flush=True)
  if planner is not None:  # train was skipped
    planner.kill()
  write()
  print(f"\n{meta['device']}, commit {meta['commit']}, {meta['date']}, "
        f"{meta['wall_s']:.0f} s -> {args.out}")
  print(table(results))


if __name__ == "__main__":
  main()
