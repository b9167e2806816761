"""A command-line tool run in this process, as its `__main__` runs it: the exit code it would
leave (bird_jax/cli.py's rules), without starting a Python process."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from bird_jax.cli import run_tool


def exit_code(main: Callable[[Sequence[str] | None], int | None],
              argv: Sequence[str] | None = None, prog: str = "tool", *,
              resumable: bool = False) -> int:
  """The exit code of `run_tool(prog, main, argv, resumable=...)` (what it prints goes to
  stdout/stderr)."""
  try:
    run_tool(prog, main, argv, resumable=resumable)
  except SystemExit as e:
    if e.code is None:
      return 0
    return e.code if isinstance(e.code, int) else 1
  raise AssertionError("run_tool returned instead of exiting")
