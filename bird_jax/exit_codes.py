"""Process exit codes of the command-line tools (train, eval, convert, datagen, demo, audit).

One table, so a job chain (`sbatch --dependency=afterok`, a shell `&&`) can tell a finished
run from one that must be rerun or inspected. docs/faults.md explains each case.

Library code raises ToolError subclasses (or any exception with an `exit_code` attribute);
bird_jax/cli.py turns them into the process's exit code and one line, and any other exception
into exit 1 with its traceback.
"""

import contextlib

OK = 0  # finished: every planned step / sample / tensor done
FAILED = 1  # an unexpected error (Python's own code for an uncaught exception)
BAD_INPUT = 2  # refused before any work: config, data, checkpoint or workdir (one line says why)
OUT_OF_DATA = 3  # train: the data ended before train.steps; the last state is saved
NON_FINITE = 4  # train: loss, gradients or parameters not finite (nothing of that step saved);
#                 eval / convert: the checkpoint's weights are not finite
SAVE_FAILED = 5  # train: a checkpoint could not be written (the step, path and OS error named)
NOTHING_SCORED = 6  # eval: no sample of some task could be scored (report.json says why)
TOO_MANY_FALLBACKS = 7  # datagen: more images fell back to template text than allowed
CONTENT_MISMATCH = 8  # audit: a recorded file, report figure, replayed loss or parameter differs
ENVIRONMENT_DIFFERS = 9  # audit: every content matched; the environment differs from the run's
PREEMPTED = 75  # SIGTERM / SIGINT or train.max_minutes: the state is saved, rerun to resume
#                (EX_TEMPFAIL)
INTERRUPTED = 130  # Ctrl-C (SIGINT) in a tool with nothing to resume from (128 + SIGINT)

DESCRIPTIONS = {
    OK: "finished",
    FAILED: "unexpected error",
    BAD_INPUT: "refused: bad config, data, checkpoint or workdir",
    OUT_OF_DATA: "stopped early: out of data (state saved)",
    NON_FINITE: "stopped: non-finite loss, gradients or weights",
    SAVE_FAILED: "stopped: a checkpoint could not be written",
    NOTHING_SCORED: "nothing could be scored",
    TOO_MANY_FALLBACKS: "too many LLM fallbacks",
    CONTENT_MISMATCH: "the run's content differs from its manifest",
    ENVIRONMENT_DIFFERS: "the content matches; the environment differs",
    PREEMPTED: "preempted or out of time: state saved, rerun to resume",
    INTERRUPTED: "interrupted",
}

# How a training run ended (TrainResult.stopped_by) -> the process's exit code.
TRAIN_STOPS = {"done": OK, "data": OUT_OF_DATA, "signal": PREEMPTED, "time": PREEMPTED,
               "stop_step": OK}


class ToolError(Exception):
  """An error a tool reports in one line and answers with `exit_code`."""

  exit_code = FAILED


class BadInput(ToolError, ValueError):
  """Input (a flag, file, record, config field, checkpoint or workdir) refused before any
  work; the message names it."""

  exit_code = BAD_INPUT


def exit_code_of(e: BaseException) -> int | None:
  """The exit code an exception declares (None: an unexpected error)."""
  code = getattr(e, "exit_code", None)
  return code if isinstance(code, int) else None


@contextlib.contextmanager
def refusing(*types: type[BaseException], where: str = ""):
  """Turns `types` raised inside the block into BadInput (`where: message`): for the stage
  that checks input, before anything is written. Exceptions that declare an exit code keep it."""
  try:
    yield
  except types as e:
    if exit_code_of(e) is not None:
      raise
    message = _message(e)
    raise BadInput(f"{where}: {message}" if where else message) from e


def _message(e: BaseException) -> str:
  """An exception's message for one line: a KeyError without its quotes, an OS error as
  `FILE: REASON`, whitespace collapsed and tensorstore's spec dump left out."""
  if isinstance(e, KeyError):
    text = str(e.args[0] if e.args else e)
  elif isinstance(e, OSError) and e.strerror and e.filename is not None:
    text = f"{e.filename}: {e.strerror}"
  else:
    text = str(e).split(" [tensorstore_spec=")[0]
  return " ".join(text.split())
