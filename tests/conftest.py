"""Shared fixtures: the tiny config, random HF-layout weights, the JAX model built from them
through the checkpoint table, and the independent PyTorch reference."""

from __future__ import annotations

import functools
import os
import sys

# Sharding tests need several (host) devices; harmless for the rest.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, os.path.dirname(__file__))
# bird_jax_testing is not installed with the package: the tools that tests start in child
# processes find it in the checkout, as this process does (pytest's pythonpath).
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (_ROOT, os.environ.get("PYTHONPATH", "")) if p)

import numpy as np
import pytest
from flax import nnx

from bird_jax.checkpoint import hf
from bird_jax.config import get_preset
from bird_jax.model import abstract_model, model_from_params


@pytest.fixture(scope="session")
def tiny_cfg():
  return get_preset("tiny")


def build_from_hf(cfg, weights):
  shapes = hf.param_shapes(nnx.state(abstract_model(cfg)))
  entries = hf.expected_tensors(cfg, shapes)
  return model_from_params(cfg, hf.hf_to_params(weights.__getitem__, entries, shapes))


def write_hf_folder(directory, cfg, weights):
  """An HF Qwen-VL folder of float32 weights, as `convert jax-to-hf --dtype fp32` writes it."""
  import json

  from bird_jax.checkpoint import safetensors_io as st

  st.save_tensors(directory, dict(weights), shard_size=10**9)
  config = {**cfg.to_hf_config(), "torch_dtype": "float32", "bf16": False, "fp32": True}
  (directory / "config.json").write_text(json.dumps(config))


@pytest.fixture(scope="session")
def hf_weights(tiny_cfg):
  from bird_jax_testing.reference import random_hf_weights

  return random_hf_weights(tiny_cfg, seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_cfg, hf_weights):
  return build_from_hf(tiny_cfg, hf_weights)


@pytest.fixture(scope="session")
def torch_reference(tiny_cfg, hf_weights):
  from bird_jax_testing.reference import QwenVLReference

  return QwenVLReference(tiny_cfg, hf_weights)


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
  """Training data: 24 synthetic records (56 px images) in 2 ArrayRecord shards."""
  from bird_jax.data.shards import write_shards
  from bird_jax_testing.records import synthetic_record

  out = tmp_path_factory.mktemp("train_shards")
  write_shards([synthetic_record(i, image_size=56) for i in range(24)], out, num_shards=2,
               progress=False)
  return str(out)


@functools.partial(nnx.jit, static_argnames=("train",))
def forward(model, tokens, images=None, positions=None, segment_ids=None, train=False):
  """The model's forward under jit (tests call this; eager op-by-op execution is slow)."""
  return model(tokens, images, positions=positions, segment_ids=segment_ids, train=train)


def image_row(cfg, length: int, starts: list[int], seed: int = 0) -> np.ndarray:
  """A token row of random text ids with well-formed image spans opening at `starts`."""
  rng = np.random.default_rng(seed)
  row = rng.integers(0, 256, length).astype(np.int32)
  q = cfg.vision.n_queries
  for s in starts:
    row[s], row[s + 1:s + 1 + q], row[s + 1 + q] = cfg.image_start_id, cfg.image_pad_id, cfg.image_end_id
  return row


# ---- the fault-injection suite (`pytest -m faults`; bench/faults.py adds --slow) -------------

FAULT_ROWS: list[dict] = []


def pytest_addoption(parser):
  parser.addoption("--slow", action="store_true",
                   help="also run the tests marked slow (the whole fault suite, the "
                        "first-GPU script's tiny run)")
  parser.addoption("--fast", action="store_true",
                   help="the development loop: leave out the tests marked " + ", ".join(FAST_SKIPS))


FAST_SKIPS = ("e2e", "faults", "heavy")


def pytest_collection_modifyitems(config, items):
  """`slow` runs with --slow only; `needs_java` is skipped (with the reason) where there is no
  Java runtime, except in CI (CI=true), where that is an error; `needs_browser` is skipped
  where chromium, chromedriver or selenium is missing; --fast deselects FAST_SKIPS."""
  import importlib.util
  import shutil

  if config.getoption("--fast"):
    fast = [not any(m in item.keywords for m in FAST_SKIPS) for item in items]
    config.hook.pytest_deselected(items=[item for item, keep in zip(items, fast) if not keep])
    items[:] = [item for item, keep in zip(items, fast) if keep]

  no_java = shutil.which("java") is None
  if no_java and os.environ.get("CI", "").lower() == "true":
    raise pytest.UsageError("CI needs a Java runtime for the metric parity tests "
                            "(apt-get install default-jre-headless)")
  no_browser = not (shutil.which("chromium") and shutil.which("chromedriver")
                    and importlib.util.find_spec("selenium"))
  browser = pytest.mark.skip(reason="needs chromium and chromedriver on PATH (Debian: "
                             "apt-get install chromium chromium-driver) and selenium")
  slow = pytest.mark.skip(reason="slow: run with --slow")
  java = pytest.mark.skip(reason="needs a Java runtime (the official pycocoevalcap jars)")
  for item in items:
    if "slow" in item.keywords and not config.getoption("--slow"):
      item.add_marker(slow)
    if "needs_java" in item.keywords and no_java:
      item.add_marker(java)
    if "needs_browser" in item.keywords and no_browser:
      item.add_marker(browser)


@pytest.fixture
def fault_log(request):
  """record(recovered=None|bool, poisoned=0, lost=0, duplicated=0): one injected fault of this
  test and what came of it (summed up after the run by pytest_terminal_summary). A fault that
  poisoned a checkpoint, or lost or repeated a record, fails the test that records it."""
  def record(*, recovered: bool | None = None, poisoned: int = 0, lost: int = 0,
             duplicated: int = 0, what: str = "") -> None:
    FAULT_ROWS.append({"what": what or request.node.name, "recovered": recovered,
                       "poisoned": poisoned, "lost": lost, "duplicated": duplicated})
    assert (poisoned, lost, duplicated) == (0, 0, 0), FAULT_ROWS[-1]
  return record


# Under pytest-xdist each worker records its own rows: it hands them to the controller with
# its results (workeroutput), and the controller, which prints the summary, collects them.
FAULT_ROWS_KEY = "bird_jax_fault_rows"


def pytest_sessionfinish(session):
  workeroutput = getattr(session.config, "workeroutput", None)
  if workeroutput is not None:  # an xdist worker
    workeroutput[FAULT_ROWS_KEY] = list(FAULT_ROWS)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
  """xdist controller: a worker is done; keep its fault rows."""
  FAULT_ROWS.extend(getattr(node, "workeroutput", {}).get(FAULT_ROWS_KEY, []))


def fault_summary(rows: list[dict]) -> list[str]:
  """The fault-injection summary: a line per fault, then the totals."""
  lines = []
  for r in rows:
    outcome = {None: "refused/reported", True: "recovered", False: "NOT RECOVERED"}[r["recovered"]]
    lines.append(f"{r['what']} -> {outcome}; poisoned checkpoints {r['poisoned']}, "
                 f"records lost {r['lost']}, duplicated {r['duplicated']}")
  runs = [r for r in rows if r["recovered"] is not None]
  lines.append(f"faults injected {len(rows)}, runs recovered "
               f"{sum(bool(r['recovered']) for r in runs)}/{len(runs)}, checkpoints poisoned "
               f"{sum(r['poisoned'] for r in rows)}, records lost {sum(r['lost'] for r in rows)}, "
               f"duplicated {sum(r['duplicated'] for r in rows)}")
  return lines


def pytest_terminal_summary(terminalreporter):
  if not FAULT_ROWS:
    return
  terminalreporter.section("fault injection")
  for line in fault_summary(FAULT_ROWS):
    terminalreporter.line(line)
