"""The training loop: mesh, state, data, jitted step, logging, checkpoints, preemption.

    train(get_config())      # what train.py runs

- checks the data and takes the workdir's lock before building the model;
- resumes from the newest usable checkpoint in `<workdir>/checkpoints` (params, optimizer,
  step and the data iterator, so the batches continue exactly where they stopped); a step
  that is damaged (missing, truncated or undecodable files) or holds NaN/inf is moved aside
  and the one before is used; a step that cannot be read (permissions, I/O) stops the start
  with nothing moved; `train.resume_step` picks a step; `train.resume=false` refuses a
  workdir holding a run unless `train.overwrite=true` moves that run aside; a start from
  step 0 is refused while `rejected/` or `previous/` hold later steps, unless
  `train.allow_rollback=true`;
- saves every `train.ckpt_every` steps, at the end, and on SIGTERM/SIGINT or after
  `train.max_minutes` (then exits); a save that fails stops the run at once, naming the step,
  the path and the OS error; after each regular save an optional probe scores the model
  (logged with the step);
- stops at a non-finite loss, gradient norm or parameter norm, naming the step and the batch,
  before anything of that step is saved, and names the last good checkpoint after reading it
  back (docs/faults.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from bird_jax import distributed, exit_codes, sharding
from bird_jax.data.pipeline import make_dataset
from bird_jax.data.shards import check_shards
from bird_jax.data.streams import merge_states, samples_read
from bird_jax.exit_codes import BadInput, ToolError, refusing
from bird_jax.train import config as C
from bird_jax.train import workdir as W
from bird_jax.train.checkpointing import CheckpointUnreadable, TrainCheckpointer
from bird_jax.train.flops import StepFlops, mfu, run_flops
from bird_jax.train.logger import MetricLogger
from bird_jax.train.optimizer import make_optimizer
from bird_jax.train.record import TrainRecord
from bird_jax.train.state import (fresh_adapters, hf_param_sources, initial_state, loaded_params,
                                  make_layout, random_params)
from bird_jax.train.step import BATCH_KEYS, batch_sharding, jit_step, make_train_step


# probe(step, model) -> numbers to log with the step (e.g. a held-out score); see train()
Probe = Callable[[int, nnx.Module], dict[str, float]]


class NonFiniteLoss(ToolError):
  """A step's loss, gradient norm or updated parameter norm is NaN/inf."""

  exit_code = exit_codes.NON_FINITE


class _Preemption:
  """SIGTERM / SIGINT set a flag; the loop saves and exits at the next step boundary."""

  def __init__(self):
    self.signal: int | None = None
    self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

  def _handle(self, signum, frame) -> None:
    self.signal = signum

  def restore(self) -> None:
    for s, h in self._old.items():
      signal.signal(s, h)


@dataclasses.dataclass
class TrainResult:
  step: int
  # "done" | "data" | "signal" | "time" (train.max_minutes) | "stop_step" (train.stop_step)
  stopped_by: str
  metrics: dict[str, float]
  samples: int | None = None  # samples the data iterator had read at the last save


def global_batch(micro: list[dict[str, np.ndarray]], mesh) -> dict[str, jax.Array]:
  """Stacks this process's micro-batches into [A, B_local, ...] and assembles global arrays."""
  shard = batch_sharding(mesh)
  out = {}
  for k in BATCH_KEYS:
    local = np.stack([m[k] for m in micro])
    out[k] = jax.make_array_from_process_local_data(shard(local.ndim), local)
  return out


def next_micro_batches(it: Iterator, n: int) -> list[dict[str, np.ndarray]] | None:
  """The next `n` micro-batches, or None when the data of some process has ended (every
  process stops at the same step)."""
  out = []
  for _ in range(n):
    try:
      out.append(next(it))
    except StopIteration:
      out = None
      break
  return None if distributed.any_process(out is None) else out


def initial_params(c: ml_collections.ConfigDict, model_cfg, layout, freeze, lora=None):
  """(trainable, frozen) a new run starts from: init.hf, init.ckpt or random weights; a LoRA
  run adds fresh adapters to the base weights."""
  from bird_jax.checkpoint.orbax import checkpoint_manager
  from bird_jax.checkpoint.streaming import array_sources, orbax_sources

  C.check_init(c)
  if not c.init.hf and not c.init.ckpt:
    return random_params(model_cfg, freeze, layout, c.init.seed, lora, c.init.keep_positions,
                         c.init.vit_positions)
  where = f"config.init.hf {c.init.hf}" if c.init.hf else f"config.init.ckpt {c.init.ckpt}"
  sources = (hf_param_sources(c.init.hf, model_cfg) if c.init.hf else
             orbax_sources(checkpoint_manager(c.init.ckpt, read_only=True)))
  if lora is not None:
    sources = {**sources, **array_sources(fresh_adapters(model_cfg, lora))}
  return loaded_params(layout, sources, where)


def train(c: ml_collections.ConfigDict, probe: Probe | None = None) -> TrainResult:
  """Runs (or resumes) the run `c` describes. `probe(step, model)`, when given, is called on
  every process after each checkpoint is saved, with the model at that step; the numbers it
  returns are logged with the step (metrics.jsonl, TensorBoard)."""
  with refusing(ValueError, TypeError, where="train.heartbeat_timeout_s"):
    heartbeat = distributed.heartbeat_timeout(c.train.heartbeat_timeout_s or None)
  distributed.initialize(heartbeat_timeout_s=heartbeat)
  with refusing(ValueError, OSError, KeyError):  # the config, the mesh and the data, first
    model_cfg, data_cfg, optim_cfg = C.model_config(c), C.data_config(c), C.optim_config(c)
    C.check_init(c)
    sharding.mesh_shape(c.mesh.data, c.mesh.fsdp, c.mesh.tensor)
    check_shards(c.data.shards, min_records=data_cfg.streams or jax.process_count())
  workdir = c.train.workdir
  lead = distributed.is_lead()
  with contextlib.ExitStack() as stack:

    def claim_workdir() -> None:  # process 0 holds the lock for the run
      stack.enter_context(W.WorkdirLock(workdir))
      if not c.train.resume:
        moved = W.start_fresh(workdir, overwrite=c.train.overwrite,
                              allow_rollback=c.train.allow_rollback)
        if moved is not None:
          print(f"train.overwrite: the earlier run in {workdir} was moved to {moved}")
      elif c.train.resume_step < 0 and not W.checkpoint_steps(workdir):  # a start from step 0
        # behind rejected steps of this run; an earlier run in previous/ was moved on purpose
        W.refuse_rollback(workdir, 0, allow=c.train.allow_rollback, previous=False)

    try:
      distributed.on_lead(claim_workdir, errors=(W.WorkdirError,))
    except W.WorkdirError as e:
      raise BadInput(str(e)) from None
    return _train(c, model_cfg, data_cfg, optim_cfg, workdir, lead, probe)


def _train(c, model_cfg, data_cfg, optim_cfg, workdir: str, lead: bool, probe: Probe | None
           ) -> TrainResult:
  freeze, accum, steps = list(c.freeze), int(c.optim.grad_accum), int(c.train.steps)
  mesh = sharding.make_mesh(c.mesh.data, c.mesh.fsdp, c.mesh.tensor)
  tx, lr = make_optimizer(optim_cfg, steps)
  # Whatever way the run ends, the checkpointer (a save in flight), the data iterator (its
  # worker processes) and the logger are closed, last opened first.
  with contextlib.ExitStack() as stack, jax.set_mesh(mesh):
    # the manifest closes after the checkpointer: the last save is final by then
    record = stack.enter_context(TrainRecord(c, workdir, dict(mesh.shape))) if lead else None
    checkpointer = stack.enter_context(TrainCheckpointer(workdir, keep=c.train.keep))
    checkpointer.remove_partial_saves()  # of a run that died mid-save
    lora = C.lora_config(c)
    layout = make_layout(model_cfg, freeze, tx, mesh, c.train.replication_tolerance, lora)
    data_state = None
    pick = None if c.train.resume_step < 0 else int(c.train.resume_step)
    if c.train.resume and (checkpointer.latest_step() is not None or pick is not None):
      try:
        state, frozen, data_state = checkpointer.restore_usable(
            layout, pick, note=print if lead else (lambda _: None))
      except ValueError as e:
        raise BadInput(str(e)) from None
    else:
      params, frozen = initial_params(c, model_cfg, layout, freeze, lora)
      state = initial_state(params, tx, layout)
    start = int(jax.device_get(state["step"]))
    if lead:
      W.trim_metrics(workdir, start)
      record.begin(start, samples_read(data_state))
      checkpointer.on_final = record.saved
    dataset = make_dataset(data_cfg, model_cfg, tokenizer_dir=c.init.hf or None)
    it = iter(dataset)
    stack.callback(it.close)
    if data_state is not None:
      try:
        it.set_state(data_state)
      except ValueError as e:
        raise BadInput(f"{checkpointer.directory}: {e}") from None
    step_fn = jit_step(make_train_step(layout.graphdef, tx, lr, C.step_config(c), model_cfg.dtype),
                       layout.state_shardings, layout.frozen_shardings, mesh)
    logger = MetricLogger(workdir, total_steps=steps, start_step=start,
                          tensorboard=c.train.tensorboard)
    stack.callback(logger.close)
    _write_run_config(workdir, c)

    def after_save(step: int, state: dict[str, Any]) -> None:
      if probe is not None:
        logger.step(step, probe(step, nnx.merge(layout.graphdef, state["params"], frozen)))

    result = _run(c, model_cfg, mesh, state, frozen, it, step_fn, checkpointer, logger, start,
                  steps, accum, after_save, run_flops(c, model_cfg, layout))
    if record is not None:
      record.finish(result)
    return result


def _run(c, model_cfg, mesh, state, frozen, it, step_fn, checkpointer, logger, start, steps,
         accum, after_save: Callable[[int, dict[str, Any]], None], flops: StepFlops
         ) -> TrainResult:
  preempt = _Preemption()
  run_config = json.loads(c.to_json_best_effort())
  peak = float(c.train.peak_tflops) * 1e12

  samples = None

  def save(step: int, data_state: dict[str, Any]) -> None:
    nonlocal samples
    merged = merge_states(distributed.allgather_json(data_state))
    samples = samples_read(merged)
    checkpointer.save(step, state, frozen, data_state=merged, run_config=run_config,
                      model_config=model_cfg)

  # train.stop_step: stop (and save) there; the schedule still spans train.steps
  end = min(steps, c.train.stop_step) if c.train.stop_step > 0 else steps
  step, stopped_by, metrics = start, "done" if end == steps else "stop_step", {}
  minutes = float(c.train.max_minutes)
  deadline = time.monotonic() + 60 * minutes if minutes > 0 else math.inf
  data_state = it.get_state()
  micro = next_micro_batches(it, accum) if step < end else None
  last_saved = start
  try:
    while step < end:
      if micro is None:
        stopped_by = "data"
        break
      t0 = time.perf_counter()
      state, device_metrics = step_fn(state, frozen, global_batch(micro, mesh))
      batch_state = data_state  # the iterator position before this step's batches
      data_state = it.get_state()
      micro = next_micro_batches(it, accum) if step + 1 < end else None  # overlaps the step
      metrics = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
      dt = time.perf_counter() - t0
      step += 1
      checkpointer.check()  # a background save that failed stops the run here
      bad = [k for k in ("loss", "grad_norm", "param_norm") if not math.isfinite(metrics[k])]
      if bad:
        raise NonFiniteLoss(
            f"step {step}: loss is {metrics['loss']}, grad norm {metrics['grad_norm']}, "
            f"param norm {metrics['param_norm']} (non-finite: {', '.join(bad)}); the run stops "
            f"without saving this state. The batch starts at data-iterator state "
            f"{json.dumps(batch_state)}; {_last_good(checkpointer, last_saved)}")
      metrics["step_time"] = dt
      metrics["tokens_per_s"] = metrics["tokens"] / dt
      if peak > 0:
        metrics["mfu"] = mfu(flops.total, dt, jax.device_count(), peak)
      log_now = step % c.train.log_every == 0 or step == end or step == start + 1
      logger.step(step, metrics if log_now else None)
      # every process stops here: 2 = a signal, 1 = train.max_minutes reached (on any process)
      stop = distributed.max_over_processes(
          2 if preempt.signal is not None else int(time.monotonic() > deadline))
      if stop:
        save(step, data_state)
        last_saved, stopped_by = step, "signal" if stop == 2 else "time"
        reason = (f"signal {preempt.signal or 'on another process'}" if stop == 2
                  else f"train.max_minutes ({minutes:g}) reached")
        logger.write(f"{reason}: saved step {step}, exiting")
        break
      if step % c.train.ckpt_every == 0 or step == end:
        save(step, data_state)
        last_saved = step
        after_save(step, state)
    if stopped_by == "data" and step > last_saved:
      save(step, data_state)
  finally:
    preempt.restore()
  return TrainResult(step, stopped_by, metrics, samples)


def _last_good(checkpointer: TrainCheckpointer, step: int) -> str:
  """Names the newest saved step after reading it back (waits for a save in flight)."""
  checkpointer.wait()
  if step not in checkpointer.manager.all_steps():
    return "no checkpoint of this run was saved yet (rerun from scratch with other settings)"
  try:
    why = checkpointer.why_unusable(step)
  except CheckpointUnreadable as e:
    return f"the newest checkpoint could not be read back to check it ({e})"
  if not why:
    return (f"the last good checkpoint is step {step} (verified: its parameters and optimizer "
            "state read back, all finite)")
  return (f"the newest checkpoint, step {step}, is NOT usable ({why}); resume moves it aside "
          "and uses an older step")


def _write_run_config(workdir: str, c: ml_collections.ConfigDict) -> None:
  if distributed.is_lead():
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(c.to_json_best_effort(indent=2))
