"""Sharding: THE table that maps logical axis names to mesh axes.

Parameters carry logical names in their `axes` metadata (e.g. ('embed', 'mlp')); activations
are constrained with `constrain(x, ('batch', 'length', 'embed'))`. Mesh axes are
('data', 'fsdp', 'tensor'). Nothing else in the code base names a mesh axis.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from bird_jax.exit_codes import BadInput
from bird_jax.tree_paths import dotted

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated)
LOGICAL_RULES: dict[str, Any] = {
    # activations
    "batch": ("data", "fsdp"),
    "length": None,
    "act_embed": None,
    "act_heads": "tensor",
    "act_mlp": "tensor",
    # the logits: vocabulary split over every model-parallel device, rows over data only, so
    # neither the lm_head nor the full-vocabulary logits are ever gathered on one device
    "act_vocab": ("tensor", "fsdp"),
    "act_batch_data": "data",
    # parameters
    "embed": "fsdp",
    "mlp": "tensor",
    "heads": "tensor",
    "kv": None,
    "qkv": None,
    # wte / lm_head: split along the vocabulary over every model-parallel device (their
    # hidden dimension is never split), so lookups and logits need no gathered table
    "vocab": ("tensor", "fsdp"),
    "layers": None,
    "norm": None,
    "patch": None,
    "channels": None,
    "positions": None,
    "queries": None,
}


def logical_to_spec(axes: Sequence[str | None], rules: dict[str, Any] | None = None,
                    mesh_axes: Sequence[str] = MESH_AXES) -> P:
  """('embed', 'mlp') -> PartitionSpec('fsdp', 'tensor').

  A mesh axis is used at most once per array; mesh axes missing from `mesh_axes` are dropped.
  """
  rules = LOGICAL_RULES if rules is None else rules
  used: set[str] = set()
  out = []
  for name in axes:
    if name is None:
      out.append(None)
      continue
    if name not in rules:
      raise KeyError(f"logical axis {name!r} has no sharding rule; add it to LOGICAL_RULES")
    target = rules[name]
    targets = () if target is None else (target,) if isinstance(target, str) else tuple(target)
    targets = tuple(t for t in targets if t not in used and t in mesh_axes)
    used.update(targets)
    out.append(None if not targets else targets[0] if len(targets) == 1 else targets)
  return P(*out)


def batch_shards(mesh_axes: Mapping[str, int]) -> int:
  """How many parts a batch's rows are split into on a mesh of these axis sizes: the product of
  the mesh axes the 'batch' rule names (data x fsdp)."""
  spec = logical_to_spec(("batch",), mesh_axes=tuple(mesh_axes))[0]
  names = () if spec is None else (spec,) if isinstance(spec, str) else spec
  return int(np.prod([mesh_axes[a] for a in names]))


def _active_mesh():
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh is None or mesh.empty else mesh


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """Sharding constraint by logical names; a no-op when no mesh is set (`jax.set_mesh`)."""
  mesh = _active_mesh()
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(axes, mesh_axes=mesh.axis_names))


def param_specs(tree: Any, mesh: jax.sharding.Mesh | None = None) -> Any:
  """PartitionSpecs for an nnx State / module, from each Variable's `axes` metadata.

  With a mesh, mesh axes absent from it or not dividing the dimension are dropped (that
  dimension is then replicated; `check_replication` reports it when it matters).
  """

  def spec(v: Any) -> Any:
    if not isinstance(v, nnx.Variable):
      return P()
    axes = v.get_metadata().get("axes")
    if axes is None:
      return v.replace(P())
    if mesh is None:
      return v.replace(logical_to_spec(axes))
    out = []
    for dim, s in zip(v.shape, logical_to_spec(axes, mesh_axes=mesh.axis_names)):
      size = int(np.prod([mesh.shape[a] for a in ((s,) if isinstance(s, str) else s or ())]))
      out.append(s if s is not None and dim % size == 0 else None)
    return v.replace(P(*out))

  return jax.tree.map(spec, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


# ---- meshes ------------------------------------------------------------------------------

def mesh_shape(data: int = -1, fsdp: int = 1, tensor: int = 1,
               n_devices: int | None = None) -> tuple[int, int, int]:
  """Mesh axis sizes; one of them may be -1 (= the devices left over). A mesh the devices
  cannot fill is refused (BadInput, a ValueError), naming the sizes and the device count."""
  n = jax.device_count() if n_devices is None else n_devices
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1:
    raise BadInput(f"mesh: at most one axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if n % known:
      raise BadInput(f"mesh: {n} devices are not divisible by the fixed axes ({known})")
    sizes[sizes.index(-1)] = n // known
  if int(np.prod(sizes)) != n:
    raise BadInput(f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, "
                   f"there are {n}")
  return tuple(sizes)  # type: ignore[return-value]


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[Any] | None = None) -> jax.sharding.Mesh:
  """A ('data', 'fsdp', 'tensor') mesh over `devices` (default: all devices of all processes),
  with classic GSPMD (Auto) axes."""
  from jax.sharding import AxisType

  n = None if devices is None else len(devices)
  return jax.make_mesh(mesh_shape(data, fsdp, tensor, n), MESH_AXES,
                       axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def abstract_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, *,
                  n_devices: int) -> jax.sharding.AbstractMesh:
  """`make_mesh`'s mesh over `n_devices` devices that need not exist: shardings on it trace
  and lower (`.lower(lowering_platforms=("cuda",))`) for any platform, on any host."""
  from jax.sharding import AbstractMesh, AxisType

  return AbstractMesh(mesh_shape(data, fsdp, tensor, n_devices), MESH_AXES,
                      axis_types=(AxisType.Auto,) * len(MESH_AXES))


def use_mesh(mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh | None):
  """The context that makes `mesh` current while a program is traced (`constrain` reads it):
  `jax.set_mesh` for a Mesh, `jax.sharding.use_abstract_mesh` for an AbstractMesh, nothing
  for None."""
  import contextlib

  if mesh is None:
    return contextlib.nullcontext()
  if isinstance(mesh, jax.sharding.AbstractMesh):
    return jax.sharding.use_abstract_mesh(mesh)
  return jax.set_mesh(mesh)


def with_shardings(tree: Any, shardings: Any) -> Any:
  """`tree`'s arrays (or ShapeDtypeStructs) as ShapeDtypeStructs carrying `shardings` (a tree of
  the same structure): abstract arguments for tracing, nothing allocated."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def named_shardings(specs: Any, mesh: jax.sharding.Mesh) -> Any:
  """PartitionSpec tree (e.g. from `param_specs`) -> NamedSharding tree."""
  return jax.tree.map(lambda s: jax.sharding.NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, P))


def replicated_fraction(shapes: Any, specs: Any, mesh: jax.sharding.Mesh,
                        min_bytes: int = 1 << 20) -> tuple[float, list[str]]:
  """Fraction of the bytes of arrays >= min_bytes that are fully replicated on a mesh whose
  sharding axes (fsdp, tensor) are > 1, and the paths of those arrays."""
  import math

  flat_shapes = jax.tree_util.tree_flatten_with_path(shapes)[0]
  flat_specs = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
  total = replicated = 0
  names = []
  for (path, x), spec in zip(flat_shapes, flat_specs):
    nbytes = math.prod(x.shape) * np.dtype(x.dtype).itemsize
    if nbytes < min_bytes:
      continue
    total += nbytes
    axes = [a for s in spec if s is not None for a in ((s,) if isinstance(s, str) else s)]
    if not any(mesh.shape[a] > 1 for a in axes if a in ("fsdp", "tensor")):
      replicated += nbytes
      names.append(dotted(path))
  return (replicated / total if total else 0.0), names


def replication_problem(shapes: Any, specs: Any, mesh: jax.sharding.Mesh,
                        tolerance: float = 0.02) -> str | None:
  """What is wrong when more than `tolerance` of the large parameter bytes end up replicated on
  a mesh meant to shard them (a mesh axis that does not divide a dimension is dropped from it:
  `param_specs`), else None."""
  if mesh.shape["fsdp"] * mesh.shape["tensor"] == 1:
    return None  # pure data parallelism replicates by design
  frac, names = replicated_fraction(shapes, specs, mesh)
  if frac <= tolerance:
    return None
  return (f"{frac:.1%} of the large parameter bytes are replicated on mesh "
          f"{dict(mesh.shape)} (tolerance {tolerance:.0%}): {names[:10]}"
          f"{' ...' if len(names) > 10 else ''}; check LOGICAL_RULES and the "
          f"divisibility of the sharded dimensions")


def check_replication(shapes: Any, specs: Any, mesh: jax.sharding.Mesh,
                      tolerance: float = 0.02) -> None:
  """Fails fast (training) when large parameters end up replicated on a mesh meant to shard
  them: `replication_problem`."""
  problem = replication_problem(shapes, specs, mesh, tolerance)
  if problem:
    raise ValueError(problem)
