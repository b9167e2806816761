"""Dotted parameter paths ('llm.h.attn.c_attn.kernel'): the one naming of a leaf that the
checkpoint tables, freezing and weight-decay regexes, sharding reports and Orbax trees share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def dotted(path: Sequence[Any]) -> str:
  """A pytree / nnx path -> 'llm.h.attn.c_attn.kernel' (drops Variable '.value' hops)."""
  parts = []
  for k in path:
    name = getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))
    if name != "value":
      parts.append(str(name))
  return ".".join(parts)


def flatten(state: Any) -> dict[str, Any]:
  """Nested nnx State / dict -> {dotted path: array}."""
  from flax import nnx

  if isinstance(state, nnx.State):
    state = nnx.to_pure_dict(state)
  out: dict[str, Any] = {}

  def walk(node: Any, prefix: str) -> None:
    if isinstance(node, Mapping):
      for k, v in node.items():
        walk(v, f"{prefix}.{k}" if prefix else str(k))
    else:
      out[prefix] = node

  walk(state, "")
  return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """{dotted path: leaf} -> nested dicts (the inverse of `flatten`)."""
  out: dict[str, Any] = {}
  for path, value in flat.items():
    node = out
    *parents, leaf = path.split(".")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return out
