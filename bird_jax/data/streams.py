"""Data streams: the records split into S independent pipelines, so that the global batches do
not depend on the number of processes reading them.

Stream s of S reads records ``s::S`` of the whole set (its own shuffle, packing and batches of
``batch_size / S`` rows); a global batch is the streams' batches stacked in stream order.
Process p of n runs streams ``p*S/n .. (p+1)*S/n - 1``: every record is read by exactly one
process, and any n dividing S gives the same batches, hence the same losses.

Iterator state: ``{"streams": {"<s>": state of stream s}}``. A process's iterator gives its own
streams; `merge_states` joins every process's into the state of the whole run (what a
checkpoint holds); `set_state` takes the whole run's state and picks its own streams.
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any, Callable, Iterator, Sequence

import numpy as np


def streams_of(streams: int, index: int, count: int) -> range:
  """The streams process `index` of `count` runs."""
  if streams % count:
    raise ValueError(f"data.streams={streams} is not divisible by the {count} processes")
  per = streams // count
  return range(index * per, (index + 1) * per)


def merge_states(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """The whole run's iterator state from every process's."""
  merged: dict[str, Any] = {}
  for s in states:
    merged.update(s["streams"])
  return {"streams": merged}


def samples_read(state: dict[str, Any] | None) -> int:
  """Samples packed into batches so far, over every stream of a (merged) iterator state."""
  if not state:
    return 0
  return sum(int(s.get("stats", {}).get("samples", 0)) for s in state["streams"].values())


class StreamsDataset:
  """`iter()` gives a fresh `StreamsIterator` over the streams `ids` of `total`."""

  def __init__(self, ids: range, total: int, make: Callable[[int], Any]):
    self.ids, self.total, self._make = ids, total, make

  def __iter__(self) -> "StreamsIterator":
    return StreamsIterator(self.ids, self.total, lambda s: iter(self._make(s)))


class StreamsIterator:
  """Batches of this process's streams, rows stacked in stream order."""

  def __init__(self, ids: range, total: int, make: Callable[[int], Iterator]):
    self.ids, self.total = ids, total
    self._its = {s: make(s) for s in ids}
    self._resume = self._snapshot()

  def _snapshot(self) -> dict[str, Any]:
    return {"streams": {str(s): it.get_state() for s, it in self._its.items()}}

  def __iter__(self) -> "StreamsIterator":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    parts = [next(it) for it in self._its.values()]  # the first stream to end ends the run
    self._resume = self._snapshot()
    if len(parts) == 1:
      return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  @property
  def stats(self) -> dict[str, int]:
    """Counters of this process's streams, summed."""
    total: Counter = Counter()
    for it in self._its.values():
      total.update(it.stats)
    return dict(total)

  def get_state(self) -> dict[str, Any]:
    """The state after the last whole batch (a batch cut short by a stream's end is not one)."""
    return copy.deepcopy(self._resume)

  def set_state(self, state: dict[str, Any]) -> None:
    if "streams" not in state:  # a single-stream state, as saved before streams existed
      state = {"streams": {"0": state}}
    saved = state["streams"]
    if len(saved) != self.total or any(str(s) not in saved for s in self.ids):
      raise ValueError(f"the saved data-iterator state has {len(saved)} stream(s), this run "
                       f"reads {self.total}: set data.streams={len(saved)} to continue it")
    for s, it in self._its.items():
      it.set_state(saved[str(s)])
    self._resume = self._snapshot()

  def close(self) -> None:
    for it in self._its.values():
      close = getattr(it, "close", None)
      if close is not None:
        close()
