"""Pinned XLA CPU numerics (bird_jax/xla_cpu.py): the setting itself, bitwise-equal training
whatever the number of cores, and the demo's quick losses against the ones recorded on
another machine."""

import json
import os
import subprocess
import sys

import pytest

from bird_jax import xla_cpu

# `python -m bird_jax_demo --quick` (pinned), the loss at each logged step, recorded on a 2-core
# AMD EPYC family 25 (Zen 3), AVX2 without AVX-512. A machine with more (AVX-512, more cores)
# pins down to the same kernels and thread count and must print the same values.
QUICK_DEMO_LOSSES = {1: 6.222042083740234, 2: 6.2507429122924805, 4: 6.016541004180908,
                     6: 5.675862789154053, 8: 5.411693572998047, 10: 5.123237133026123,
                     12: 4.681451320648193}


def test_pin_adds_the_settings_and_keeps_what_the_user_set():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  assert xla_cpu.pin(env)
  assert env["XLA_FLAGS"].startswith("--xla_force_host_platform_device_count=2 ")
  assert all(f in env["XLA_FLAGS"].split() for f in xla_cpu.PINNED_FLAGS)
  assert env[xla_cpu.THREADS_VARIABLE] == str(xla_cpu.PINNED_THREADS)
  assert xla_cpu.pin(env) and env["XLA_FLAGS"].count("--xla_cpu_max_isa") == 1  # idempotent

  mine = {"XLA_FLAGS": "--xla_cpu_max_isa=SSE4_2"}
  assert not xla_cpu.pin(mine)  # the user's cap stays, and the run is not called pinned
  assert xla_cpu.xla_flag("xla_cpu_max_isa", mine["XLA_FLAGS"]) == "SSE4_2"
  assert not xla_cpu.pin({xla_cpu.THREADS_VARIABLE: "7"})


def test_pinning_after_jax_started_is_refused():
  import jax

  jax.devices()
  with pytest.raises(RuntimeError, match="before JAX starts"):
    xla_cpu.pin()


def test_flags_parse_as_xla_reads_them():
  flags = "--xla_cpu_max_isa=AVX --xla_cpu_enable_fast_math --xla_cpu_max_isa=SSE4_2"
  assert xla_cpu.xla_flag("xla_cpu_max_isa", flags) == "SSE4_2"  # the last one wins
  assert xla_cpu.xla_flag("xla_cpu_enable_fast_math", flags) == "true"
  assert xla_cpu.xla_flag("xla_cpu_prefer_vector_width", flags) is None
  have = xla_cpu.cpu_isa()
  if have is not None:
    assert xla_cpu.compiled_isa("--xla_cpu_max_isa=SSE4_2") == "SSE4_2"
    assert xla_cpu.compiled_isa("") == have
  facts = xla_cpu.describe()
  assert {"cpu", "cpu_isa", "xla_compiled_isa", "cpu_threads", "xla_flags", "pinned"} <= set(facts)


def _numerics(core_sets: list[set[int]], pin: bool) -> list[dict]:
  """bird_jax_testing.numerics in one child per set of cores (at the same time), without the
  suite's XLA_FLAGS: each child's digests."""
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_cpu.THREADS_VARIABLE)}
  cmd = [sys.executable, "-m", "bird_jax_testing.numerics", "--rows", "2", "--length", "64"]
  children = [subprocess.Popen(cmd + ["--pin"] * pin, env=env, stdout=subprocess.PIPE, text=True,
                               preexec_fn=lambda cores=cores: os.sched_setaffinity(0, cores))
              for cores in core_sets]
  digests = []
  for child in children:
    out, _ = child.communicate(timeout=600)
    assert child.returncode == 0, out
    digests.append(json.loads(out.splitlines()[-1]))
    digests[-1].pop("seconds_per_step", None)
  return digests


def _two_core_sets() -> tuple[set[int], set[int]]:
  cores = sorted(os.sched_getaffinity(0))
  if len(cores) < 2:
    pytest.skip("needs 2 cores to compare 1 core with 2")
  return {cores[0]}, set(cores[:2])


@pytest.mark.e2e
def test_pinned_training_is_bitwise_equal_on_one_core_and_on_two():
  a, b = _numerics(list(_two_core_sets()), pin=True)
  assert a == b, [k for k in a if a[k] != b.get(k)]


@pytest.mark.slow
def test_unpinned_training_depends_on_the_number_of_cores():
  """What the pin is for."""
  a, b = _numerics(list(_two_core_sets()), pin=False)
  assert a != b


@pytest.mark.slow
def test_the_quick_demo_reproduces_the_recorded_losses(tmp_path):
  """On any x86-64 machine with AVX2 and the L1 data cache of the recorded one (32 KiB)."""
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_cpu.THREADS_VARIABLE)}
  one, _ = _two_core_sets()
  subprocess.run([sys.executable, "-m", "bird_jax_demo", "--quick", "--out", str(tmp_path)],
                 env=env, check=True, capture_output=True, timeout=1200,
                 preexec_fn=lambda: os.sched_setaffinity(0, one))
  rows = [json.loads(line) for line in (tmp_path / "train" / "metrics.jsonl").open()]
  assert {r["step"]: r["loss"] for r in rows if "loss" in r} == QUICK_DEMO_LOSSES
