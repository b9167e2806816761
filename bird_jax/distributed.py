"""Several processes, one run: joining them, barriers, and the host values they must agree on.

Every process runs the same command; `initialize()` joins them when the launcher says there
are several (docs/training.md):

    SLURM (srun)    SLURM_NTASKS > 1; JAX reads the rest of SLURM's environment
    by hand         JAX_COORDINATOR_ADDRESS=host:port JAX_NUM_PROCESSES=n JAX_PROCESS_ID=i
    optional        JAX_INITIALIZATION_TIMEOUT_SECONDS (300), JAX_HEARTBEAT_TIMEOUT_SECONDS (15)

When a process dies, JAX's distributed runtime terminates the others (SIGABRT) within the
heartbeat timeout, at once when process 0 (the coordinator) dies. The timeout is
`initialize(heartbeat_timeout_s=...)` when given (train.py passes train.heartbeat_timeout_s),
else JAX_HEARTBEAT_TIMEOUT_SECONDS, else HEARTBEAT_S; JAX's own default is 100 s.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import jax
import numpy as np

ENV_COUNT, ENV_ID = "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"
ENV_INIT_TIMEOUT = "JAX_INITIALIZATION_TIMEOUT_SECONDS"
ENV_HEARTBEAT = "JAX_HEARTBEAT_TIMEOUT_SECONDS"
# Seconds without a heartbeat after which a process counts as dead: long enough for a busy
# host (heartbeats come from a runtime thread, not Python), short enough that a job whose peer
# died ends in well under a minute instead of idling its accelerators.
HEARTBEAT_S = 15


def heartbeat_timeout(seconds: int | None = None) -> int:
  """The heartbeat timeout to use: `seconds` when given, else the environment's, else
  HEARTBEAT_S."""
  value = int(seconds if seconds is not None else os.environ.get(ENV_HEARTBEAT, HEARTBEAT_S))
  if value < 1:
    raise ValueError(f"heartbeat timeout {value} s: give at least 1 second")
  return value


def initialize(heartbeat_timeout_s: int | None = None) -> None:
  """`jax.distributed.initialize` when launched as one of several processes; else nothing.
  `heartbeat_timeout_s`: see heartbeat_timeout()."""
  count = int(os.environ.get(ENV_COUNT, os.environ.get("SLURM_NTASKS", "1")))
  if count <= 1 or jax.distributed.is_initialized():
    return
  kwargs: dict[str, Any] = {
      "initialization_timeout": int(os.environ.get(ENV_INIT_TIMEOUT, "300")),
      "heartbeat_timeout_seconds": heartbeat_timeout(heartbeat_timeout_s)}
  if ENV_COUNT in os.environ:  # JAX itself reads only the coordinator address
    if ENV_ID not in os.environ or "JAX_COORDINATOR_ADDRESS" not in os.environ:
      raise ValueError(f"{ENV_COUNT}={count} needs JAX_COORDINATOR_ADDRESS and {ENV_ID} too")
    kwargs.update(num_processes=count, process_id=int(os.environ[ENV_ID]))
  jax.distributed.initialize(**kwargs)


def is_lead() -> bool:
  """Process 0: the one that writes files other than checkpoint arrays."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (nothing with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def allgather_json(value: Any) -> list[Any]:
  """Every process's JSON-able `value`, in process order, on every process."""
  if jax.process_count() == 1:
    return [value]
  from jax.experimental import multihost_utils

  data = np.frombuffer(json.dumps(value).encode(), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.int32(data.size))).reshape(-1)
  width = -(-int(sizes.max()) // 4096) * 4096  # few distinct shapes, few compilations
  padded = np.zeros(width, np.uint8)
  padded[:data.size] = data
  rows = np.asarray(multihost_utils.process_allgather(padded))
  return [json.loads(bytes(row[:n])) for row, n in zip(rows, sizes)]


def max_over_processes(value: int) -> int:
  """The largest of the small ints (0..127) the processes pass: one collective of a byte per
  process (the training loop asks every step)."""
  if jax.process_count() == 1:
    return int(value)
  from jax.experimental import multihost_utils

  return int(np.asarray(multihost_utils.process_allgather(np.int8(value))).max())


def any_process(flag: bool) -> bool:
  """Whether `flag` holds on some process (each process passes its own)."""
  return max_over_processes(int(bool(flag))) > 0


def on_lead(fn: Callable[[], Any], errors: tuple[type[Exception], ...] = ()) -> Any:
  """Runs `fn()` on process 0 only; every process returns its JSON-able result. An exception
  of a type in `errors` raised there is raised on every process, same type and message."""
  if jax.process_count() == 1:
    return fn()
  outcome = None
  if is_lead():
    try:
      outcome = {"value": fn()}
    except errors as e:
      outcome = {"error": [i for i, t in enumerate(errors) if isinstance(e, t)][0],
                 "message": str(e)}
  outcome = allgather_json(outcome)[0]
  if "error" in outcome:
    raise errors[outcome["error"]](outcome["message"])
  return outcome["value"]
