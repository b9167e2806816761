"""Plan a training run without the hardware: compile the full-size train step ahead of time.

    .venv/bin/python -m bird_jax.plan --config configs/bird_7b.py --mesh fsdp=4 \\
        [--per_device_batch 1] [--peak_tflops 312] [--mfu 0.4] [--config.a.b=value ...]

The train step of the config is lowered and compiled on abstract inputs over a simulated mesh
of host (CPU) devices; nothing is allocated. Printed per device: memory (arguments, outputs,
temporaries; donated state aliased), compiled FLOPs; and the analytic FLOPs per step with the
step time they imply at the given peak and MFU.

Caveats:
- XLA's cost analysis counts a scanned layer once, so compiled FLOPs are also reported for a
  depth-1 variant and compared with the analytic count of that variant.
- The CPU backend has no bf16 matmul: it widens bf16 operands to fp32, and its loop-invariant
  code motion then hoists those widenings of whole stacked weights out of the layer loops
  (an fp32 copy of every layer's weights, which a GPU never makes). The planner therefore
  compiles with that pass disabled (`--cpu-licm` keeps it, for the raw CPU figure). The CPU
  backend also materialises the attention scores (a GPU's fused attention does not) and keeps
  the saved layer inputs in fp32; what remains is a conservative estimate for a GPU.

Exit codes: 0 planned, 2 refused input (one line: a flag, a config field, a mesh), 1 anything
unexpected (with its traceback).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

from absl import flags
from ml_collections import config_flags

from bird_jax import xla_cpu
from bird_jax.exit_codes import BadInput


def parse_mesh(text: str) -> dict[str, int]:
  """`data=2,fsdp=4` -> {"data": 2, "fsdp": 4, "tensor": 1}; BadInput names what is wrong."""
  out = {"data": 1, "fsdp": 1, "tensor": 1}
  for part in filter(None, text.split(",")):
    key, _, value = part.partition("=")
    if key not in out:
      raise BadInput(f"--mesh: unknown axis {key!r} (axes: data, fsdp, tensor)")
    if not value.strip().isdigit() or int(value) < 1:
      raise BadInput(f"--mesh: {part!r}: the size of an axis is a whole number >= 1")
    out[key] = int(value)
  return out


@dataclasses.dataclass
class Plan:
  devices: int
  rows: int  # global rows per micro-step
  argument_gib: float
  output_gib: float
  alias_gib: float
  temp_gib: float
  compile_s: float
  compiled_flops: float  # per device, scanned layers counted once
  depth1_ratio: float  # compiled / analytic FLOPs of the depth-1 variant
  analytic_flops: float  # whole step, all devices
  trained_params: int  # parameters (or adapters) the step updates

  @property
  def total_gib(self) -> float:
    """Live memory per device: arguments + temporaries + outputs not aliased to arguments."""
    return self.argument_gib + self.temp_gib + self.output_gib - self.alias_gib

  def headroom_gib(self, device_gib: float) -> float:
    """What a device of `device_gib` GiB keeps free (negative: the step does not fit)."""
    return device_gib - self.total_gib


@dataclasses.dataclass
class Counts:
  analytic_flops: float  # whole step, all devices
  trained_params: int  # parameters (or adapters) the step updates


def step_seconds(analytic_flops: float, devices: int, peak_tflops: float, mfu: float) -> float:
  """The step time the analytic FLOPs imply at `peak_tflops` per device and `mfu`."""
  return analytic_flops / (devices * peak_tflops * 1e12 * mfu)


def set_per_device_batch(c, mesh_axes: dict[str, int], per_device_batch: int | None) -> None:
  """data.batch_size = `per_device_batch` rows per batch shard of `mesh_axes` (None: kept)."""
  from bird_jax import sharding

  if per_device_batch is not None:
    c.data.batch_size = per_device_batch * sharding.batch_shards(mesh_axes)


def make_run_layout(c, model_cfg, mesh):
  """(Layout, optimizer, learning-rate schedule) of the config's run on `mesh` (a Mesh or an
  AbstractMesh), abstract."""
  from bird_jax import sharding
  from bird_jax.train import config as C
  from bird_jax.train.optimizer import make_optimizer
  from bird_jax.train.state import make_layout

  tx, lr = make_optimizer(C.optim_config(c), int(c.train.steps))
  with sharding.use_mesh(mesh):
    layout = make_layout(model_cfg, list(c.freeze), tx, mesh, c.train.replication_tolerance,
                         lora=C.lora_config(c))
  return layout, tx, lr


def trained_count(layout) -> int:
  """Parameters (or adapters) a layout trains."""
  import jax

  return sum(x.size for x in jax.tree.leaves(layout.abstract_params))


def counts(c, mesh_axes: dict[str, int], per_device_batch: int | None = None) -> Counts:
  """Analytic FLOPs per step and trained parameters of the config's run on a mesh of
  `mesh_axes`, without compiling (about a second at full size). Neither depends on how the
  parameters are sharded, so the layout is built on one device."""
  import jax

  from bird_jax import sharding
  from bird_jax.train import config as C
  from bird_jax.train.flops import run_flops

  set_per_device_batch(c, mesh_axes, per_device_batch)
  model_cfg = C.model_config(c)
  layout, _, _ = make_run_layout(c, model_cfg, sharding.make_mesh(devices=jax.devices()[:1]))
  return Counts(run_flops(c, model_cfg, layout).total, trained_count(layout))


def trace_step(c, model_cfg, mesh, accum: int):
  """(the config's jitted train step traced on abstract inputs, its Layout): the trainer's own
  step (`make_train_step` + `jit_step`) with the state, frozen parameters and a batch of
  `accum` micro-batches of `data.batch_size` rows of `data.max_len` tokens as ShapeDtypeStructs
  with their shardings on `mesh`. `mesh` may be an AbstractMesh (`sharding.abstract_mesh`):
  `.lower(lowering_platforms=("cuda",))` then lowers the step for a platform this host lacks
  (tests/test_lowering.py)."""
  import jax
  import jax.numpy as jnp

  from bird_jax import sharding
  from bird_jax.train import config as C
  from bird_jax.train.step import BATCH_KEYS, batch_sharding, jit_step, make_train_step

  d = C.data_config(c, validate=False)  # shapes only: no data needed
  layout, tx, lr = make_run_layout(c, model_cfg, mesh)
  with sharding.use_mesh(mesh):
    step = jit_step(make_train_step(layout.graphdef, tx, lr, C.step_config(c), model_cfg.dtype),
                    layout.state_shardings, layout.frozen_shardings, mesh)
    s = model_cfg.vision.image_size
    shapes = {"tokens": (accum, d.batch_size, d.max_len),
              "images": (accum, d.batch_size, d.max_images_per_row, s, s, 3)}
    shard = batch_sharding(mesh)
    batch = {k: jax.ShapeDtypeStruct(shapes.get(k, shapes["tokens"]),
                                     jnp.uint8 if k == "images" else jnp.int32,
                                     sharding=shard(len(shapes.get(k, shapes["tokens"]))))
             for k in BATCH_KEYS}
    state = sharding.with_shardings(layout.abstract_state, layout.state_shardings)
    frozen = sharding.with_shardings(layout.abstract_frozen, layout.frozen_shardings)
    return step.trace(state, frozen, batch), layout


def compile_step(c, model_cfg, mesh, accum: int):
  """(compiled executable, analytic StepFlops, trained parameter count) of the config's train
  step on `mesh`."""
  from bird_jax.train.flops import run_flops

  traced, layout = trace_step(c, model_cfg, mesh, accum)
  compiled = traced.lower().compile()
  return compiled, run_flops(c, model_cfg, layout), trained_count(layout)


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get("flops", float("nan")))


def plan(c, mesh_axes: dict[str, int], per_device_batch: int | None = None) -> Plan:
  import jax

  from bird_jax import sharding
  from bird_jax.train import config as C

  n = math.prod(mesh_axes.values())
  mesh = sharding.make_mesh(**mesh_axes, devices=jax.devices()[:n])
  set_per_device_batch(c, mesh_axes, per_device_batch)
  accum = int(c.optim.grad_accum)
  model_cfg = C.model_config(c)
  t0 = time.perf_counter()
  compiled, flops, trained = compile_step(c, model_cfg, mesh, accum)
  compile_s = time.perf_counter() - t0
  m = compiled.memory_analysis()
  gib = lambda b: b / 2**30
  # depth 1: the scanned layer runs once, so XLA's count is the whole step's
  shallow = dataclasses.replace
  d1 = model_cfg.replace(llm=shallow(model_cfg.llm, layers=1),
                         vision=shallow(model_cfg.vision, layers=1))
  c1 = c.copy_and_resolve_references()
  c1.optim.grad_accum = 1
  c1.step.loss_chunk = 0  # a chunked loss is a scan too
  compiled1, flops1, _ = compile_step(c1, d1, mesh, 1)
  ratio = _flops(compiled1) * n / flops1.total
  return Plan(devices=n, rows=int(c.data.batch_size), argument_gib=gib(m.argument_size_in_bytes),
              output_gib=gib(m.output_size_in_bytes), alias_gib=gib(m.alias_size_in_bytes),
              temp_gib=gib(m.temp_size_in_bytes), compile_s=compile_s,
              compiled_flops=_flops(compiled), depth1_ratio=ratio, analytic_flops=flops.total,
              trained_params=trained)


def planner_env(devices: int, cpu_licm: bool = False) -> dict[str, str]:
  """Environment for a process that plans on `devices` simulated host devices (set before
  jax starts; see the module docstring for the disabled pass)."""
  xla = f" --xla_force_host_platform_device_count={devices}"
  if not cpu_licm:
    xla += f" --xla_disable_hlo_passes={xla_cpu.LOOP_MOTION_PASS}"
  return {"XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + xla,
          "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}


def define_flags():
  """The command's flags (defined when it runs, not when the module is imported); returns the
  config flag's holder."""
  config = config_flags.DEFINE_config_file(
      "config", None, "Python config file (configs/*.py); override fields with "
      "--config.a.b=value", lock_config=True)
  flags.DEFINE_string("mesh", "fsdp=4", "the simulated mesh, e.g. fsdp=4 or "
                      "data=2,fsdp=4,tensor=1")
  flags.DEFINE_integer("per_device_batch", None, "rows of data.max_len tokens per device per "
                       "micro-step (sets data.batch_size)")
  flags.DEFINE_float("peak_tflops", 312.0, "per device (A100 bf16: 312)")
  flags.DEFINE_float("mfu", 0.4, "assumed MFU for the step time")
  flags.DEFINE_float("device_gib", 0.0, "memory of one device in GiB (e.g. 40, 80, 141): says "
                     "whether the step fits")
  flags.DEFINE_bool("cpu_licm", False, "keep XLA's loop-invariant code motion (see the module "
                    "docstring)")
  flags.mark_flags_as_required(["config"])
  return config


def main(argv) -> int:
  del argv
  f = flags.FLAGS
  mesh_axes = parse_mesh(f.mesh)
  n = math.prod(mesh_axes.values())
  # the backend starts at the first use of jax (below), after these flags are set
  os.environ.update(planner_env(n, f.cpu_licm))

  from absl import logging

  logging.set_verbosity(logging.WARNING)
  c = f.config
  p = plan(c, mesh_axes, f.per_device_batch)
  step_s = step_seconds(p.analytic_flops, n, f.peak_tflops, f.mfu)
  tokens = p.rows * int(c.optim.grad_accum) * int(c.data.max_len)
  name = config_flags.get_config_filename(f["config"])
  print(f"config {name}: mesh {mesh_axes} ({n} simulated devices), "
        f"{p.rows} rows x {c.data.max_len} tokens per micro-step, grad_accum {c.optim.grad_accum}, "
        f"remat {c.model.overrides.get('remat', 'none')}")
  print(f"compile                      {p.compile_s:.1f} s")
  print("memory per device")
  print(f"  arguments                  {p.argument_gib:6.2f} GiB  (params, optimizer state, batch)")
  print(f"  outputs                    {p.output_gib:6.2f} GiB  ({p.alias_gib:.2f} GiB aliased to "
        f"donated arguments)")
  print(f"  temporaries                {p.temp_gib:6.2f} GiB")
  print(f"  total                      {p.total_gib:6.2f} GiB")
  if f.device_gib:
    left = p.headroom_gib(f.device_gib)
    verdict = "fits" if left >= 0 else "does NOT fit"
    print(f"  {f'on a {f.device_gib:g} GiB device':<27}{verdict} ({left:+.2f} GiB)")
  lora = c.lora.rank > 0
  print(f"trained                      {p.trained_params / 1e9:.3f} B "
        + (f"adapter parameters (LoRA rank {c.lora.rank})" if lora else "parameters"))
  print(f"FLOPs per step (all devices) {p.analytic_flops / 1e15:.3f} PFLOP analytic; compiled/"
        f"analytic {p.depth1_ratio:.3f} on the depth-1 variant")
  print(f"compiled FLOPs per device    {p.compiled_flops / 1e12:.2f} TFLOP (scanned layers counted once)")
  print(f"step time                    {step_s:.2f} s at {f.peak_tflops:g} TFLOP/s x {n} "
        f"devices x MFU {f.mfu:g} -> {tokens / step_s:,.0f} tokens/s")
  return 0


if __name__ == "__main__":
  from bird_jax.cli import run_absl

  run_absl("python -m bird_jax.plan", main, configs=[define_flags()])
