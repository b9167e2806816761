"""Does this Python run the project? A few seconds of checks, one JSON line on stdout:

    python bench/env_check.py [--platform gpu]

- versions: jax, flax, optax, orbax-checkpoint, grain, array_record, ml_collections, numpy,
  and where each was imported from (the machine's site-packages or a carried wheel);
- devices: JAX's backend and device kinds (`--platform gpu` fails on a CPU-only JAX);
- imports: the modules the device suite and the demo base load;
- model: the tiny model's forward, gradient and an AdamW update under jit;
- checkpoint: orbax saves and restores the model's parameters;
- loader: two synthetic records written to an ArrayRecord shard and packed by the Grain
  pipeline into one batch.

Exit status 0 when every check passes. `bench/first_gpu.py` runs this to choose between the
machine's flax/optax/orbax and the project's pinned ones.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.metadata as md
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

DISTS = {"jax": "jax", "jaxlib": "jaxlib", "flax": "flax", "optax": "optax",
         "orbax-checkpoint": "orbax.checkpoint", "grain": "grain", "array_record": "array_record",
         "ml_collections": "ml_collections", "numpy": "numpy"}
MODULES = ("bird_jax.train.loop", "bird_jax.plan", "bird_jax.generate", "bird_jax.convert",
           "bird_jax.data.pipeline", "bird_jax_demo.base", "datagen.run")


def versions() -> dict[str, Any]:
  out = {}
  for dist, module in DISTS.items():
    try:
      version = md.version(dist)
    except md.PackageNotFoundError:
      version = None
    try:
      where = str(Path(importlib.import_module(module).__file__).parent)
    except Exception as e:  # reported, not raised: the other checks say what breaks
      where = f"not importable: {type(e).__name__}: {e}"[:200]
    out[dist] = {"version": version, "from": where}
  return out


def devices(platform: str) -> dict[str, Any]:
  import jax

  backend = jax.default_backend()
  if platform and backend != platform:
    raise RuntimeError(f"JAX's backend is {backend!r}, {platform!r} wanted")
  return {"backend": backend, "devices": [d.device_kind for d in jax.devices()]}


def imports() -> dict[str, Any]:
  for name in MODULES:
    importlib.import_module(name)
  return {"modules": len(MODULES)}


@functools.lru_cache(maxsize=1)
def tiny_model():
  """The tiny preset's (graphdef, parameters), created under jit (eager creation is slow)."""
  import jax
  from flax import nnx

  from bird_jax.config import get_preset
  from bird_jax.model import QwenVL, abstract_model

  cfg = get_preset("tiny")
  graphdef = nnx.split(abstract_model(cfg))[0]
  return cfg, graphdef, jax.jit(lambda: nnx.split(QwenVL(cfg, rngs=nnx.Rngs(0)))[1])()


def model_step() -> dict[str, Any]:
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from flax import nnx

  cfg, graphdef, params = tiny_model()
  q = cfg.vision.n_queries
  tokens = np.random.default_rng(0).integers(0, 256, (2, 16 + q)).astype(np.int32)
  tokens[:, 2], tokens[:, 3:3 + q], tokens[:, 3 + q] = (
      cfg.image_start_id, cfg.image_pad_id, cfg.image_end_id)
  s = cfg.vision.image_size
  pixels = jnp.zeros((2, 1, s, s, 3), jnp.float32)
  tx = optax.adamw(1e-3)

  def loss(params, tokens):
    logits = nnx.merge(graphdef, params)(tokens, pixels)
    return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:]).mean()

  @jax.jit
  def step(params, opt_state, tokens):
    value, grads = jax.value_and_grad(loss)(params, tokens)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  opt_state = tx.init(params)
  params, opt_state, first = step(params, opt_state, jnp.asarray(tokens))
  _, _, second = jax.block_until_ready(step(params, opt_state, jnp.asarray(tokens)))
  first, second = float(first), float(second)
  if not (np.isfinite(first) and np.isfinite(second) and second < first):
    raise FloatingPointError(f"losses {first}, {second}: not finite, or the step did not lower it")
  return {"loss_first": first, "loss_second": second}


def checkpoint() -> dict[str, Any]:
  import jax
  import numpy as np
  import orbax.checkpoint as ocp

  _, _, params = tiny_model()
  with tempfile.TemporaryDirectory() as d:
    with ocp.StandardCheckpointer() as ckpt:
      ckpt.save(Path(d) / "params", params)
      ckpt.wait_until_finished()
      back = ckpt.restore(Path(d) / "params", params)
  same = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
                      params, back)
  if not all(jax.tree.leaves(same)):
    raise ValueError("restored parameters differ")
  return {"leaves": len(jax.tree.leaves(params))}


def loader() -> dict[str, Any]:
  from bird_jax.config import get_preset
  from bird_jax.data.pipeline import DataConfig, make_dataset
  from bird_jax.data.shards import write_shards
  from bird_jax_testing.records import synthetic_record

  cfg = get_preset("tiny")
  with tempfile.TemporaryDirectory() as d:
    write_shards([synthetic_record(i, image_size=56) for i in range(2)], d, progress=False)
    ds = make_dataset(DataConfig(shards=d, batch_size=2, max_len=256, max_images_per_row=2),
                      cfg, process_index=0, process_count=1)
    batch = next(iter(ds))
  return {"batch_tokens": list(batch["tokens"].shape)}


def run_checks(platform: str) -> dict[str, Any]:
  checks: dict[str, Callable[[], dict[str, Any]]] = {
      "devices": lambda: devices(platform), "imports": imports, "model": model_step,
      "checkpoint": checkpoint, "loader": loader}
  report: dict[str, Any] = {"python": sys.version.split()[0], "versions": versions()}
  for name, fn in checks.items():
    t0 = time.perf_counter()
    try:
      report[name] = {"ok": True, **fn()}
    except Exception as e:  # every check runs: the report names each one that fails
      traceback.print_exc()
      report[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:400]}
    report[name]["s"] = round(time.perf_counter() - t0, 2)
  report["ok"] = all(report[name]["ok"] for name in checks)
  return report


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--platform", default="", help="the JAX backend required (gpu, cpu)")
  args = ap.parse_args()
  report = run_checks(args.platform)
  print(json.dumps(report, default=str), flush=True)
  sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
  main()
