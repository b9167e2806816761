"""What a run ran on: the code, Python and package versions, devices and XLA's CPU settings.

    environment(mesh={"data": 8, "fsdp": 1, "tensor": 1})   # the record a manifest keeps
    differences(recorded, environment())                    # ["packages.jax: 0.10.2 -> 0.10.3"]

The record is plain JSON. Package versions come from the installed distributions' metadata
(nothing is imported to read them); the git commit and whether tracked files were modified
are read when the package runs from a checkout (git missing or slow: None); the devices are
JAX's (`devices=False` leaves JAX alone, for tools that do not use it).
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

from bird_jax import xla_cpu

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy",
            "transformers", "tensorstore", "ml-dtypes")
GIT_TIMEOUT_S = 5.0
# Fields whose difference can change computed numbers (the others name the code and the host).
NUMERIC = ("python", "packages.jax", "packages.jaxlib", "packages.numpy", "packages.ml-dtypes",
           "devices.kind", "devices.count", "devices.processes", "mesh", "xla_cpu.cpu",
           "xla_cpu.xla_compiled_isa", "xla_cpu.xla_flags", "xla_cpu.cpu_threads",
           "xla_cpu.xla_threads", "xla_cpu.l1d_cache")


def package_version(name: str) -> str | None:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
  """bird_jax's version, and where it runs from a git checkout, its commit and whether tracked
  files differ from it (`dirty`)."""
  root = Path(__file__).resolve().parents[1]
  out: dict[str, Any] = {"bird_jax": package_version("bird_jax"), "git_commit": None,
                         "git_dirty": None}
  if not (root / ".git").exists():
    return out

  def git(*args: str) -> str | None:
    try:
      done = subprocess.run(["git", "--no-optional-locks", "-C", str(root), *args],
                            capture_output=True, text=True, timeout=GIT_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
      return None
    return done.stdout if done.returncode == 0 else None

  commit = git("rev-parse", "HEAD")
  if commit:
    out["git_commit"] = commit.strip()
    status = git("status", "--porcelain", "--untracked-files=no")
    out["git_dirty"] = None if status is None else bool(status.strip())
  return out


def devices() -> dict[str, Any]:
  """JAX's devices as this process sees them: kind, count (all processes) and processes."""
  import jax

  return {"kind": jax.devices()[0].device_kind, "platform": jax.default_backend(),
          "count": jax.device_count(), "processes": jax.process_count()}


def environment(*, mesh: dict[str, int] | None = None, with_devices: bool = True
                ) -> dict[str, Any]:
  """The record of what this process runs on; `mesh`: the run's mesh axis sizes."""
  return {"code": code_version(), "python": platform.python_version(),
          "packages": {name: package_version(name) for name in PACKAGES},
          "devices": devices() if with_devices else None, "mesh": mesh,
          "xla_cpu": xla_cpu.describe()}


def flat(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  """{"packages.jax": "0.10.2", ...}: the record's leaves by dotted path."""
  out: dict[str, Any] = {}
  for k, v in record.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict) and v and k != "mesh":
      out.update(flat(v, key + "."))
    else:
      out[key] = v
  return out


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """`field: recorded -> current` for every field that differs (a field one side lacks
  counts). Devices are compared only where both records hold them."""
  a, b = flat(recorded), flat(current)
  if recorded.get("devices") is None or current.get("devices") is None:
    a = {k: v for k, v in a.items() if not k.startswith("devices")}
    b = {k: v for k, v in b.items() if not k.startswith("devices")}
  return [f"{k}: {a.get(k, '(not recorded)')!r} -> {b.get(k, '(absent)')!r}"
          for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def same_numerics(recorded: dict[str, Any], current: dict[str, Any]) -> bool:
  """Whether nothing in NUMERIC differs: the same computation gives the same bits."""
  return not [d for d in differences(recorded, current)
              if any(d.startswith(f"{k}:") or d.startswith(f"{k}.") for k in NUMERIC)]
