"""What the wheel ships: the packages pyproject.toml's find rule selects."""

from __future__ import annotations

from pathlib import Path

import pytest
import setuptools

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_ships_the_library_and_no_test_code():
  rule = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
  found = set(setuptools.find_namespace_packages(str(ROOT), **rule["find"]))
  assert {"bird_jax", "bird_jax.chat", "bird_jax.serve", "datagen", "datagen.llm",
          "bird_jax_demo"} <= found
  assert not [p for p in found if p.split(".")[0] not in ("bird_jax", "datagen", "bird_jax_demo")]
  assert (ROOT / "bird_jax_testing" / "__init__.py").exists()  # still there, for the tests
