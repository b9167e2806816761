"""The planner: AOT-compiled train step memory and FLOPs on a simulated mesh (tiny config)."""

from __future__ import annotations

import jax
import pytest
from flax import nnx

from bird_jax import plan, sharding
from bird_jax.model import abstract_model
from bird_jax.train.config import default_config, model_config
from bird_jax.train.optimizer import BIRD_FREEZE, trainable_filter


def test_rows_per_device_follow_the_batch_rule():
  assert sharding.LOGICAL_RULES["batch"] == ("data", "fsdp")
  assert sharding.batch_shards({"data": 2, "fsdp": 3, "tensor": 4}) == 6
  assert sharding.batch_shards({"data": 1, "fsdp": 1, "tensor": 8}) == 1


@pytest.mark.heavy
def test_planner_memory_and_flops_on_the_tiny_config():
  c = default_config()
  c.model.preset = "tiny"
  c.data.max_len, c.data.max_images_per_row = 128, 2
  c.optim.grad_accum = 2
  p = plan.plan(c, {"data": 1, "fsdp": 2, "tensor": 1}, per_device_batch=2)
  assert p.devices == 2 and p.rows == 4

  # arguments = (trainable fp32 params + Adam mu, nu) + frozen params, split over fsdp=2 (every
  # tiny parameter dimension that is sharded divides by 2), + this device's batch
  model_cfg = model_config(c)
  _, trainable, frozen = nnx.split(abstract_model(model_cfg), trainable_filter(BIRD_FREEZE), ...)
  nbytes = lambda t: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(t))
  s = model_cfg.vision.image_size
  batch = 2 * 2 * (4 * 128 * 4 + 2 * s * s * 3)  # accum x rows/device x (4 int32 + images)
  expected = (3 * nbytes(trainable) + nbytes(frozen)) / 2 + batch
  assert abs(p.argument_gib * 2**30 - expected) / expected < 0.05
  assert p.alias_gib > 0.9 * (3 * nbytes(trainable) / 2) / 2**30  # the donated state
  assert 0 < p.temp_gib < 1.0
  assert 0.95 < p.depth1_ratio < 1.5  # compiled vs analytic FLOPs (no remat here)



@pytest.mark.e2e
def test_plan_command_takes_config_overrides_and_refuses_a_bad_mesh():
  import subprocess
  import sys
  from pathlib import Path

  config = Path(__file__).resolve().parents[1] / "configs" / "demo.py"
  cmd = [sys.executable, "-m", "bird_jax.plan", f"--config={config}"]
  bad = subprocess.run(cmd + ["--mesh=fsdp=2,pipeline=2"], capture_output=True, text=True)
  assert bad.returncode == 2 and "unknown axis 'pipeline'" in bad.stderr
  typo = subprocess.run(cmd + ["--config.optim.learning_rate=1"], capture_output=True, text=True)
  assert typo.returncode == 2 and typo.stderr.strip() == (
      "python -m bird_jax.plan: error: --config.optim.learning_rate: no such config field")
