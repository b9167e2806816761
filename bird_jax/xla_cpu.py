"""What XLA's CPU backend computes with on this machine, and the setting that makes its results
the same on every x86-64 machine.

XLA:CPU results can depend on the machine in two ways:
- the instruction set its own kernels are compiled for (the host's, unless `--xla_cpu_max_isa`
  caps it) and the vector width they use;
- the matrix-product library it calls (YNNPACK by default) picks its kernels at run time from
  the CPU it finds;
- work is split by the number of threads, which is the number of cores the process may use:
  sums split differently round differently.

`pin()` fixes all three: XLA's own kernels for at most AVX2 with 256-bit vectors, every matrix
product through Eigen on one thread per product, and PINNED_THREADS threads whatever the
machine has. docs/reproducibility.md gives the measurements behind it, its cost and what it
leaves machine-dependent. `pin()` must run before JAX creates its CPU backend.
"""

from __future__ import annotations

import os
import re
import shlex

# Highest first: the names XLA's `--xla_cpu_max_isa` takes, and the /proc/cpuinfo flag of each.
ISA_FLAGS = (("AVX512", "avx512f"), ("AVX2", "avx2"), ("AVX", "avx"), ("SSE4_2", "sse4_2"))
ISA_ORDER = [name for name, _ in reversed(ISA_FLAGS)]  # lowest first

PINNED_ISA = "AVX2"
PINNED_FLAGS = (
    f"--xla_cpu_max_isa={PINNED_ISA}",
    "--xla_cpu_prefer_vector_width=256",
    "--xla_cpu_experimental_ynn_fusion_type=",
    "--xla_cpu_multi_thread_eigen=false",
)
PINNED_THREADS = 2  # XLA's CPU thread pool size (PJRT_NPROC), whatever the machine has
THREADS_VARIABLE = "PJRT_NPROC"


def _cpuinfo() -> dict[str, str]:
  """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
  try:
    with open("/proc/cpuinfo") as f:
      text = f.read().split("\n\n", 1)[0]
  except OSError:
    return {}
  fields = {}
  for line in text.splitlines():
    key, sep, value = line.partition(":")
    if sep:
      fields[key.strip()] = value.strip()
  return fields


def cpu_model() -> str:
  """The CPU's name, with its family and model numbers (some hosts hide the full name)."""
  info = _cpuinfo()
  if not info:
    import platform

    return platform.processor() or platform.machine()
  name = info.get("model name", "unknown CPU")
  family, model = info.get("cpu family"), info.get("model")
  return f"{name} (family {family}, model {model})" if family and model else name


def cpu_isa() -> str | None:
  """The highest instruction set of ISA_FLAGS the CPU has (None: not x86-64 or unknown)."""
  flags = set(_cpuinfo().get("flags", "").split())
  for name, flag in ISA_FLAGS:
    if flag in flags:
      return name
  return None


def l1d_cache() -> str | None:
  """The size of the L1 data cache (e.g. "32K"; None where the system does not say): Eigen sizes
  its blocks along the summed dimension of a matrix product from it."""
  import glob

  for d in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
    try:
      with open(f"{d}/level") as lv, open(f"{d}/type") as ty, open(f"{d}/size") as sz:
        if lv.read().strip() == "1" and ty.read().strip() == "Data":
          return sz.read().strip()
    except OSError:
      continue
  return None


def xla_flag(name: str, xla_flags: str | None = None) -> str | None:
  """The value of `--name` in XLA_FLAGS (the last one wins, as in XLA); None where unset."""
  text = os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags
  value = None
  for arg in shlex.split(text):
    m = re.fullmatch(rf"--{re.escape(name)}(?:=(.*))?", arg)
    if m:
      value = m.group(1) if m.group(1) is not None else "true"
  return value


def compiled_isa(xla_flags: str | None = None) -> str | None:
  """The instruction set XLA's own CPU kernels are compiled for: the CPU's, capped by
  `--xla_cpu_max_isa`."""
  have = cpu_isa()
  cap = (xla_flag("xla_cpu_max_isa", xla_flags) or "").upper()
  if have is None or cap not in ISA_ORDER:
    return have
  return min(have, cap, key=ISA_ORDER.index)


def is_pinned(environ=os.environ) -> bool:
  """Whether `environ` holds every pinned setting with its pinned value."""
  if environ.get(THREADS_VARIABLE) != str(PINNED_THREADS):
    return False
  xla_flags = environ.get("XLA_FLAGS", "")
  for arg in PINNED_FLAGS:
    name, _, value = arg[2:].partition("=")
    if xla_flag(name, xla_flags) != value:
      return False
  return True


def backend_started() -> bool:
  """Whether JAX has created its backends (XLA_FLAGS is read then, and not again)."""
  from jax._src import xla_bridge

  return xla_bridge.backends_are_initialized()


def pin(environ=os.environ) -> bool:
  """Adds PINNED_FLAGS to XLA_FLAGS and sets the thread count (a flag or a thread count the
  user already set keeps the user's value). Returns whether the result is pinned. Raises RuntimeError once JAX has created its backends,
  when it would be too late to take effect."""
  if environ is os.environ and backend_started():
    raise RuntimeError("XLA's CPU numerics must be pinned before JAX starts its backends")
  current = environ.get("XLA_FLAGS", "")
  extra = [a for a in PINNED_FLAGS if xla_flag(a[2:].partition("=")[0], current) is None]
  environ["XLA_FLAGS"] = " ".join([current] * bool(current) + extra)
  environ.setdefault(THREADS_VARIABLE, str(PINNED_THREADS))
  return is_pinned(environ)


def describe() -> dict:
  """The facts a run's manifest records about the CPU side of XLA."""
  threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return {"cpu": cpu_model(), "cpu_isa": cpu_isa(), "l1d_cache": l1d_cache(),
          "xla_compiled_isa": compiled_isa(),
          "cpu_threads": threads, "xla_threads": os.environ.get(THREADS_VARIABLE),
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "pinned": is_pinned()}


# ---- 16-bit weights ----------------------------------------------------------------------------
# XLA:CPU has no 16-bit float products: it converts their operands to float32. Within a loop
# (the layer scan, the decoding loop) its loop-invariant code motion then lifts that convert of
# one layer's slice out of the loop onto the whole stacked weight, so a program holds a float32
# copy of every weight for its whole run: measured on the full-size generation program with
# bfloat16 weights (`compiled.memory_analysis()`, commit ca3e662), 39.3 GB of temporaries beside
# the 19.3 GB of weights; 3.57 GB without the motion, most of it the float32 lm_head (see
# `converts_16bit` in bird_jax/model/qwen.py's logits), and 1.08 GB with the logits in chunks.

# (the planner, bird_jax/plan.py, compiles without the same pass for the same reason)
LOOP_MOTION_PASS = "while-loop-invariant-code-motion"
NO_HOISTING = {"xla_disable_hlo_passes": LOOP_MOTION_PASS}


def converts_16bit(dtype) -> bool:
  """Whether products with weights of `dtype` are computed by converting them to float32:
  16-bit floats on the CPU backend."""
  import jax
  import numpy as np

  dtype = np.dtype(dtype)
  sixteen_bit_float = dtype.itemsize == 2 and (dtype.kind == "f" or dtype.name == "bfloat16")
  return sixteen_bit_float and jax.default_backend() == "cpu"


def compiler_options(tree) -> dict | None:
  """`jax.jit(compiler_options=...)` for a program over the arrays of `tree` (e.g. a model's
  state): NO_HOISTING where some weight is converted (see above), else None."""
  import jax

  leaves = [x for x in jax.tree.leaves(tree) if hasattr(x, "dtype")]
  return NO_HOISTING if any(converts_16bit(x.dtype) for x in leaves) else None
