"""``python -m datagen``: see datagen.cli."""

from bird_jax.cli import run_tool
from datagen.cli import PROG, main

if __name__ == "__main__":
  run_tool(PROG, main, resumable=True)
