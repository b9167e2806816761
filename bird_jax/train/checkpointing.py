"""Train checkpoints: one Orbax `CheckpointManager` under `<workdir>/checkpoints`.

Every step holds the model parameters (trainable and frozen together, so any train checkpoint
is also a params checkpoint for `eval.py` and `convert jax-to-hf`), the model config, the
optimizer state, the data-iterator state of every data stream and the resolved run config.
With several processes every one of them calls `save` and writes its shards of the arrays;
process 0 writes the JSON items and commits the step.

A save that fails leaves nothing behind: its temporary folder (`<step>.orbax-checkpoint-tmp*`)
is removed by process 0, and any left by a run that died mid-save is removed when the next
run opens the checkpoints. Resume moves a step aside only on evidence that it is bad
(`bird_jax.checkpoint.verify`); a step that merely could not be read stops the start instead.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from flax import nnx

from bird_jax import distributed, exit_codes
from bird_jax.checkpoint import orbax as ckpt
from bird_jax.tree_paths import flatten, unflatten
from bird_jax.checkpoint.verify import exception_chain, first_line, os_errno, verify_params
from bird_jax.config import QwenVLConfig
from bird_jax.exit_codes import BadInput, ToolError
from bird_jax.train.state import Layout, place_params
from bird_jax.train.workdir import reject_step

OPT, DATA = "opt_state", "data_iter"
RUN_CONFIG = ckpt.RUN_CONFIG


class SaveFailed(ToolError):
  """A checkpoint could not be written (the message names the step, the path and the error)."""

  exit_code = exit_codes.SAVE_FAILED


class NoUsableCheckpoint(ValueError):
  """Resume found no checkpoint step it could read (or not the one asked for)."""


class CheckpointUnreadable(BadInput):
  """A checkpoint step could not be read for a reason that says nothing about its bytes
  (permission denied, an I/O error, a network filesystem): resume stops and moves nothing."""


TMP_SUFFIX = ".orbax-checkpoint-tmp"  # Orbax writes step N under N.orbax-checkpoint-tmp*


class TrainCheckpointer:
  """The run's checkpoints. A context manager: leaving the `with` normally waits for the last
  save (raising SaveFailed if it failed); leaving it on an exception still waits for a save in
  flight and closes the manager, without raising over that exception."""

  def __init__(self, workdir: str, *, keep: int, async_save: bool = True):
    self.directory = os.path.join(workdir, "checkpoints")
    self.manager = ckpt.checkpoint_manager(
        self.directory, max_to_keep=keep, async_save=async_save,
        extra_handlers={OPT: ocp.StandardCheckpointHandler(), DATA: ocp.JsonCheckpointHandler()})
    self.last_started: int | None = None  # the newest save's step (errors belong to it)
    # called with each step once its save is final (the run's manifest hashes its files)
    self.on_final: Callable[[int], None] | None = None
    self._final: int | None = None

  def __enter__(self) -> "TrainCheckpointer":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    else:
      self.abandon()

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: dict[str, Any], frozen: Any, *, data_state: dict[str, Any],
           run_config: dict[str, Any], model_config: QwenVLConfig) -> None:
    """Starts saving `step` (in the background); raises SaveFailed for an earlier save that
    failed, or for this one when it cannot even start."""
    self.wait()  # the previous save first, so a failure is named by its own step
    params = nnx.to_pure_dict(nnx.merge_state(state["params"], frozen))
    self.last_started = step
    with self._save_errors():
      ckpt.save(self.manager, step, params=params, config=model_config, force=True, extra={
          OPT: ocp.args.StandardSave(state["opt"]), DATA: ocp.args.JsonSave(data_state),
          RUN_CONFIG: ocp.args.JsonSave(run_config)})

  def check(self) -> None:
    """Raises SaveFailed if the background save failed (cheap; call it every step)."""
    with self._save_errors():
      self.manager.check_for_errors()
    if not self.manager.is_saving_in_progress():
      self._note_final()

  def wait(self) -> None:
    with self._save_errors():
      self.manager.wait_until_finished()
    self._note_final()

  def _note_final(self) -> None:
    """Tells `on_final` (once) that the newest save is final."""
    step = self.last_started
    if self.on_final is not None and step is not None and step != self._final:
      self._final = step
      self.on_final(step)

  def close(self) -> None:
    self.wait()
    self.manager.close()

  def abandon(self) -> None:
    """Closes after a failure elsewhere: waits for a save in flight (a good step stays good),
    and never raises (a failed save has already been reported or cleaned up)."""
    with contextlib.suppress(Exception):
      self.wait()
    with contextlib.suppress(Exception):
      self.manager.close()

  def remove_partial_saves(self, step: int | None = None) -> list[str]:
    """Removes the temporary folders of saves that did not complete (of `step`, or of every
    step), on process 0; returns them. Only while no save of that step is in flight: after a
    failed save, or before the run's first one."""
    if not distributed.is_lead():
      return []
    pattern = f"{'*' if step is None else step}{TMP_SUFFIX}*"
    gone = [str(p) for p in sorted(Path(self.directory).glob(pattern)) if p.is_dir()]
    for p in gone:
      shutil.rmtree(p, ignore_errors=True)
    return gone

  @contextlib.contextmanager
  def _save_errors(self):
    """Any error raised while saving (or checking a background save) becomes SaveFailed, naming
    the newest save's step, its path and the OS error; the failed save's temporary folder is
    removed (it may hold most of a checkpoint's bytes on a disk that is full)."""
    try:
      yield
    except SaveFailed:
      raise
    except Exception as e:  # noqa: BLE001 -- Orbax and tensorstore wrap the OS error variously
      step = self.last_started
      why = _os_reason(e) or first_line(e)
      if any(os.strerror(n) in why for n in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)):
        why += " (out of disk space, quota or file-size limit)"
      where = self.directory if step is None else os.path.join(self.directory, str(step))
      if step is not None and jax.process_count() == 1:  # with several processes, others may
        with contextlib.suppress(Exception):  # still write: the next start removes it instead
          self.manager.wait_until_finished()
        self.remove_partial_saves(step)
      raise SaveFailed(f"checkpoint step {step} could not be written to {where}: {why}") from e

  def restore(self, layout: Layout, step: int | None = None
              ) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """(state, frozen, data-iterator state) of `step` (default: the latest), on the layout's
    shardings whatever mesh they were saved from."""
    step = self.manager.latest_step() if step is None else step
    trainable, frozen = restore_params_on(self.manager, layout, step)
    opt_target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                              layout.abstract_state["opt"], layout.state_shardings["opt"])
    out = self.manager.restore(step, args=ocp.args.Composite(
        **{OPT: ocp.args.StandardRestore(opt_target), DATA: ocp.args.JsonRestore()}))
    state = {"step": jax.device_put(jax.numpy.asarray(step, jax.numpy.int32),
                                    layout.state_shardings["step"]),
             "params": trainable, "opt": out[OPT]}
    return state, frozen, out[DATA]

  def why_unusable(self, step: int) -> str:
    """Why a step cannot be resumed from ("" if it can): every array of its parameters and
    optimizer state is read back (streamed, host memory only) and must be finite. Checking
    before Orbax's restore keeps a failure to one clear line. Raises CheckpointUnreadable when
    reading failed without evidence against the step (verify.is_damage). Process 0 reads;
    every process gets its answer (or the error), so all decide alike."""
    return distributed.on_lead(lambda: self._why_unusable(step), errors=(CheckpointUnreadable,))

  def _why_unusable(self, step: int) -> str:
    reports = {item: verify_params(self.manager, step, item) for item in (ckpt.PARAMS, OPT)}
    for item, report in reports.items():  # a read error anywhere: no verdict on the step
      if report.read_errors:
        path, err = next(iter(report.read_errors.items()))
        more = len(report.read_errors) - 1
        raise CheckpointUnreadable(
            f"checkpoint step {step} in {self.directory} could not be read: {item} {path}: "
            f"{err}{f' (and {more} more)' if more else ''}. A permission or I/O error says "
            "nothing about the checkpoint, so nothing was moved aside; fix the access (or wait "
            "for the filesystem) and rerun, or resume from an older step with "
            "--config.train.resume_step=N")
    for item, report in reports.items():
      if report.damaged:
        return f"{item}: {report.summary().split(': ', 1)[1]}"
    return ""

  def restore_usable(self, layout: Layout, step: int | None = None,
                     note: Callable[[str], None] = print
                     ) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """Restores the newest step that reads back completely with finite values, or exactly
    `step`. Steps newer than the one restored (damaged ones, or all newer than `step`) are
    moved to `<workdir>/rejected/` with a note saying why: the run continues from the step it
    restored and never mixes in the later ones (their numbers are saved again). A step that
    could not be read (CheckpointUnreadable: permissions, I/O) stops it before anything is
    moved."""
    steps = sorted(self.manager.all_steps(), reverse=True)
    if step is not None:
      if step not in steps:
        raise NoUsableCheckpoint(f"{self.directory}: no checkpoint step {step} "
                                 f"(steps: {sorted(steps)})")
      why = self.why_unusable(step)
      if why:
        raise NoUsableCheckpoint(f"{self.directory}: step {step} is not usable ({why})")
      for s in steps:
        if s > step:
          note(f"resume: step {s} is newer than train.resume_step={step}; moved to "
               f"{self._reject(s)}")
      return self.restore(layout, step)
    for s in steps:
      why = self.why_unusable(s)
      if not why:
        if s != steps[0]:
          note(f"resume: continuing from step {s}, the newest usable checkpoint")
        return self.restore(layout, s)
      note(f"resume: checkpoint step {s} is not usable ({why}); moved to {self._reject(s)}")
    raise NoUsableCheckpoint(
        f"{self.directory}: no usable checkpoint (steps {sorted(steps)} moved to "
        f"{os.path.join(os.path.dirname(self.directory), 'rejected')}); a rerun would start "
        "from step 0 and is refused unless --config.train.allow_rollback=true")

  def _reject(self, step: int) -> str:
    """Moves `step` to rejected/ (process 0, once every process is done with it) and returns
    where it went."""
    distributed.barrier(f"reject-{step}")
    moved = reject_step(self.directory, step) if distributed.is_lead() else "rejected/"
    distributed.barrier(f"rejected-{step}")
    self.manager.reload()
    return str(moved)


_SAVE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EIO)


def _os_reason(e: BaseException) -> str:
  """'[Errno N] text' of the OS error behind an exception ('' if none is found): an OSError in
  its chain, or the code or the OS's message inside the text tensorstore reports it with."""
  n = os_errno(e)
  if n is None:
    n = next((k for x in exception_chain(e) for k in _SAVE_ERRNOS if os.strerror(k) in str(x)),
             None)
  return "" if n is None else f"[Errno {n}] {os.strerror(n)}"


def quiet_background_save_logs() -> None:
  """A failed background save makes Orbax log every failing write with its traceback, asyncio
  log each unretrieved failure, and tensorstore callbacks print "Event loop is closed"
  tracebacks: hundreds of lines for the one error SaveFailed reports in a line. Drops those
  three; for apps (train.py), not the library."""
  from absl import logging as absl_logging

  class _DropOrbaxErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
      return not ("orbax" in record.pathname and record.levelno >= logging.ERROR)

  class _DropUnretrieved(logging.Filter):  # the failed writes' futures, when collected
    def filter(self, record: logging.LogRecord) -> bool:
      return "exception was never retrieved" not in record.getMessage()

  absl_logging.get_absl_logger().addFilter(_DropOrbaxErrors())
  logging.getLogger("asyncio").addFilter(_DropUnretrieved())
  hook = sys.unraisablehook  # tensorstore's callbacks report through it

  def quiet(u) -> None:
    if not (u.exc_type is RuntimeError and str(u.exc_value) == "Event loop is closed"):
      hook(u)

  sys.unraisablehook = quiet


def restore_params_on(manager: ocp.CheckpointManager, layout: Layout, step: int | None = None
                      ) -> tuple[Any, Any]:
  """(trainable, frozen) of a params checkpoint, read straight onto the layout's shardings
  (whatever mesh it was saved from)."""
  abstract = {**flatten(_with_shardings(layout.abstract_params, layout.state_shardings["params"])),
              **flatten(_with_shardings(layout.abstract_frozen, layout.frozen_shardings))}
  params = flatten(ckpt.restore_params(manager, unflatten(abstract), step))
  return (place_params(layout.abstract_params, layout.state_shardings["params"], params.__getitem__),
          place_params(layout.abstract_frozen, layout.frozen_shardings, params.__getitem__))


def _with_shardings(abstract: Any, shardings: Any) -> dict[str, Any]:
  flat_a, flat_s = flatten(abstract), flatten(shardings)
  return unflatten({k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=flat_s[k])
                    for k, v in flat_a.items()})
