"""The one command-line wrapper of every tool: exceptions -> exit codes (bird_jax/exit_codes.py).

    def main(argv) -> int: ...             # the tool's work; returns an exit code
    if __name__ == "__main__":
      run_tool("python -m bird_jax.x", main)         # argparse tools (parser: ToolParser)
      run_absl("train.py", main)                     # absl tools (config files, flags)

- an exception that carries `exit_code` (exit_codes.ToolError: BadInput and its kin) prints
  one line, ``PROG: error: MESSAGE``, and exits with that code;
- input refused before the first step or the first write raises BadInput (exit 2); the
  `exit_codes.refusing(ValueError, ...)` block turns the exceptions of a validation stage into BadInput;
- anything else is a bug or a fault nobody planned for: its traceback is printed and the tool
  exits 1 (Python's own code for an uncaught exception);
- a flag that does not parse exits 2 in one line as well (ToolParser, run_absl).
"""

from __future__ import annotations

import argparse
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn

from bird_jax import exit_codes
from bird_jax.exit_codes import exit_code_of


def report(prog: str, e: BaseException) -> int:
  """Prints `e` as its tool should and returns the exit code."""
  code = exit_code_of(e)
  if code is None:
    traceback.print_exception(e)
    print(f"{prog}: unexpected error (exit {exit_codes.FAILED}): {type(e).__name__}: {e}",
          file=sys.stderr)
    return exit_codes.FAILED
  print(f"{prog}: error: {e}", file=sys.stderr)
  return code


class ToolParser(argparse.ArgumentParser):
  """argparse, with a usage error in one line like any other refused input:
  ``PROG: error: MESSAGE (--help shows the usage)``, exit 2. Subcommands' parsers are
  ToolParsers too."""

  def error(self, message: str) -> NoReturn:
    sys.exit(_refuse(self.prog, f"{message} (--help shows the usage)"))


def run_tool(prog: str, main: Callable[[Sequence[str] | None], int | None],
             argv: Sequence[str] | None = None, *, resumable: bool = False) -> NoReturn:
  """Runs `main(argv)` and exits with its code (or the code of what it raised). Ctrl-C exits
  75 (PREEMPTED: rerun to resume) for a `resumable` tool, else 130 (INTERRUPTED)."""
  try:
    code = main(argv)
  except SystemExit:
    raise  # argparse's usage errors (exit 2) and explicit exits
  except KeyboardInterrupt:
    print(f"{prog}: interrupted" + (" (rerun the same command to resume)" if resumable else ""),
          file=sys.stderr)
    code = exit_codes.PREEMPTED if resumable else exit_codes.INTERRUPTED
  except Exception as e:  # noqa: BLE001 -- the one place exceptions become exit codes
    code = report(prog, e)
  sys.exit(exit_codes.OK if code is None else code)


def run_absl(prog: str, main: Callable[[list[str]], int | None],
             configs: Sequence = (), *, resumable: bool = False) -> NoReturn:
  """`absl.app.run(main)` with the same rules, plus: a flag or config file that does not parse
  (an unknown --config.field, a bad value, a config file that is missing or raises) exits 2 in
  one line. `configs`: the tool's config flag holders (ml_collections defers a config file's
  load error to the first use of the config; they are touched here so that it comes first)."""
  from absl import app, flags

  def parse(argv: list[str]) -> list[str]:
    try:
      rest = flags.FLAGS(argv)
      for holder in configs:
        try:
          holder.value.get  # a config that failed to load raises on any attribute
        except OSError as e:
          sys.exit(_refuse(prog, f"--{holder.name}: {_last_line(str(e))}"))
      return rest
    except flags.Error as e:  # an unknown flag, a bad value, a config file that raised
      sys.exit(_refuse(prog, _last_line(str(e))))
    except (KeyError, AttributeError) as e:  # an override naming no field of a locked config
      sys.exit(_refuse(prog, _no_such_field(e, argv)))

  def wrapped(argv: list[str]) -> NoReturn:
    run_tool(prog, lambda _: main(argv), resumable=resumable)

  app.run(wrapped, flags_parser=parse)
  raise AssertionError("unreachable")  # app.run exits


def define_config_file(prog: str, name: str, default: str | None, help_string: str,
                       **kwargs):
  """`config_flags.DEFINE_config_file`, refusing like run_absl: with a default file,
  ml_collections applies the --NAME.field overrides of sys.argv as the flag is defined, so an
  override naming no field, or a value that does not parse, exits 2 in one line here."""
  from absl import flags
  from ml_collections import config_flags

  try:
    return config_flags.DEFINE_config_file(name, default, help_string, **kwargs)
  except flags.Error as e:
    sys.exit(_refuse(prog, _last_line(str(e))))
  except (KeyError, AttributeError) as e:
    sys.exit(_refuse(prog, _no_such_field(e, sys.argv)))


def _no_such_field(e: BaseException, argv: Sequence[str]) -> str:
  """`--config.a.nope: no such config field`, naming the flag that names a missing field (and
  the field ml_collections suggests, if any)."""
  text = str(e).replace("\\", "")
  found = re.search(r"'(\w+)'", text)
  key = found.group(1) if found else text.strip("\"'")
  named = [a.split("=")[0] for a in argv[1:]
           if a.startswith("--") and key in a.split("=")[0].split(".")]
  hint = re.search(r'Did you mean "(\w+)"', text)
  return (f"{named[0] if named else key}: no such config field"
          + (f" (did you mean {hint.group(1)}?)" if hint else ""))


def _last_line(text: str) -> str:
  """A flag error's message, or the last line of the traceback absl puts into it."""
  lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
  if len(lines) > 1 and any(line.startswith("Traceback") for line in lines):
    return f"{lines[0].rstrip(':')}: {lines[-1]}"
  return lines[-1] if lines else text


def _refuse(prog: str, message: str) -> int:
  print(f"{prog}: error: {message}", file=sys.stderr)
  return exit_codes.BAD_INPUT
