"""Sharding: THE table that maps logical axis names to mesh axes.

Parameters carry logical names in their `axes` metadata (e.g. ('embed', 'mlp')); activations
are constrained with `constrain(x, ('batch', 'length', 'embed'))`. Mesh axes are
('data', 'fsdp', 'tensor'). Nothing else in the code base names a mesh axis.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
from flax import nnx
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated)
LOGICAL_RULES: dict[str, Any] = {
    # activations
    "batch": ("data", "fsdp"),
    "length": None,
    "act_embed": None,
    "act_heads": "tensor",
    "act_mlp": "tensor",
    "act_vocab": "tensor",
    # parameters
    "embed": "fsdp",
    "mlp": "tensor",
    "heads": "tensor",
    "kv": None,
    "qkv": None,
    "vocab": "tensor",
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


def _active_mesh():
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh is None or mesh.empty else mesh


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """Sharding constraint by logical names; a no-op when no mesh is set (`jax.set_mesh`)."""
  mesh = _active_mesh()
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(axes, mesh_axes=mesh.axis_names))


def param_specs(tree: Any) -> Any:
  """PartitionSpecs for an nnx State / module, from each Variable's `axes` metadata."""

  def spec(v: Any) -> Any:
    if isinstance(v, nnx.Variable):
      axes = v.get_metadata().get("axes")
      return v.replace(P() if axes is None else logical_to_spec(axes))
    return P()

  return jax.tree.map(spec, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))
