"""A few train steps of the tiny model on fixed data; prints a digest of every metric and every
state array, so that two processes (other thread counts, other XLA settings) can be compared
bit for bit:

    python -m bird_jax_testing.numerics [--pin] [--rows 4] [--length 256] [--steps 2]

`--pin` pins XLA's CPU numerics (bird_jax/xla_cpu.py) before JAX starts. The output also holds
`seconds_per_step`: the median of the steps after the first (which compiles).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time


def synthetic_batch(cfg, rows: int, length: int) -> dict:
  """One packed batch of random bytes with an image span per row (fixed seed)."""
  import numpy as np

  rng = np.random.default_rng(0)
  q, s = cfg.vision.n_queries, cfg.vision.image_size
  tokens = rng.integers(0, 256, (1, rows, length)).astype(np.int32)
  tokens[..., 5], tokens[..., 6:6 + q], tokens[..., 6 + q] = (
      cfg.image_start_id, cfg.image_pad_id, cfg.image_end_id)
  return dict(tokens=tokens, labels=tokens.copy(), segment_ids=np.ones_like(tokens),
              positions=np.broadcast_to(np.arange(length, dtype=np.int32), tokens.shape).copy(),
              images=rng.integers(0, 255, (1, rows, 1, s, s, 3)).astype(np.uint8))


def train_setup(cfg, freeze, rows: int, length: int, lr: float):
  """(mesh, state, frozen, jitted step, batch) of a one-device run from seed 0."""
  import jax

  from bird_jax import sharding
  from bird_jax.train import optimizer as O
  from bird_jax.train import state as S
  from bird_jax.train import step as T

  mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  tx, schedule = O.make_optimizer(O.OptimConfig(lr=lr, warmup_steps=1), 100)
  with jax.set_mesh(mesh):
    layout = S.make_layout(cfg, freeze, tx, mesh)
    params, frozen = S.random_params(cfg, freeze, layout, seed=0)
    state = S.initial_state(params, tx, layout)
    step = T.jit_step(T.make_train_step(layout.graphdef, tx, schedule, T.StepConfig(), cfg.dtype),
                      layout.state_shardings, layout.frozen_shardings, mesh)
  return mesh, state, frozen, step, synthetic_batch(cfg, rows, length)


def digest(rows: int, length: int, steps: int) -> dict:
  import jax
  import numpy as np

  from bird_jax.config import get_preset

  mesh, state, frozen, step, batch = train_setup(get_preset("tiny"), (), rows, length, lr=1e-3)
  out = {}
  with jax.set_mesh(mesh):
    seconds = []
    for i in range(steps):
      t0 = time.perf_counter()
      state, metrics = step(state, frozen, batch)
      out[f"step {i + 1}"] = {k: float(v).hex() for k, v in sorted(metrics.items())}
      seconds.append(time.perf_counter() - t0)
  if steps > 1:
    out["seconds_per_step"] = statistics.median(seconds[1:])
  for path, x in jax.tree_util.tree_leaves_with_path(state):
    out[jax.tree_util.keystr(path)] = hashlib.sha256(np.asarray(x).tobytes()).hexdigest()[:16]
  return out


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--pin", action="store_true", help="pin XLA's CPU numerics first")
  ap.add_argument("--rows", type=int, default=4)
  ap.add_argument("--length", type=int, default=256)
  ap.add_argument("--steps", type=int, default=2)
  a = ap.parse_args(argv)
  if a.pin:
    from bird_jax import xla_cpu

    xla_cpu.pin()
  print(json.dumps(digest(a.rows, a.length, a.steps)))


if __name__ == "__main__":
  main()
