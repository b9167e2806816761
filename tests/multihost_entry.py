"""Runs train.py or eval.py (argv[1], its flags after it) as one process of a launch; with
RECORDS_LOG set, every record this process's data pipeline reads is appended (its shard and
index) to RECORDS_LOG.<JAX_PROCESS_ID or 0>."""

import os
import runpy
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def log_records(path: str) -> None:
  from bird_jax.data.pipeline import SampleMaker

  lock, read = threading.Lock(), SampleMaker.__call__

  def logged(self, item):
    with lock, open(path, "a") as f:
      f.write(item["where"] + "\n")
    return read(self, item)

  SampleMaker.__call__ = logged


if __name__ == "__main__":
  if os.environ.get("RECORDS_LOG"):
    log_records(f"{os.environ['RECORDS_LOG']}.{os.environ.get('JAX_PROCESS_ID', '0')}")
  script = str(ROOT / sys.argv[1])
  sys.argv = [script, *sys.argv[2:]]
  runpy.run_path(script, run_name="__main__")
