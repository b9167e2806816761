"""Which images to use: diversity across modalities, datasets and cases, and no runs of
near-identical neighbouring slices.

Selection (:func:`select`) streams the source's references twice and keeps only counts and
the chosen references in memory:

1. slice stride: within a volume, only slices ``s`` with ``(s + phase) % stride == 0`` are
   candidates (``phase`` drawn per case), so kept neighbours are at least ``stride`` slices
   apart; 2-D images always pass;
2. quotas, by water-filling at each level: ``num_images`` is shared equally among modalities,
   a modality's share equally among its datasets, a dataset's share equally among its cases
   (a level that has fewer candidates than its share gives the rest to the others);
3. inside a case, the slices with the smallest seeded hash are taken.

After the boxes are known, :func:`dedup` drops a slice that is near-identical to the
previous kept slice of its case (same labels and instance counts, every box matched with
IoU >= ``min_iou``; see :func:`datagen.meta.near_identical`).

Everything is a pure function of the references, the seed and the options.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence

from bird_jax.vocabulary import MODALITIES
from datagen.meta import ImageMeta, near_identical
from datagen.sources.base import ImageRef, stable_seed, stable_unit


def stride_keep(ref: ImageRef, stride: int) -> bool:
  if ref.slice is None or stride <= 1:
    return True
  return (ref.slice + stable_seed("phase", ref.case_key) % stride) % stride == 0


def water_fill(counts: Mapping[Hashable, int], total: int,
               order: Callable[[Hashable], object] = str) -> dict[Hashable, int]:
  """Splits ``total`` as equally as possible among keys, none above its count.

  The remainder of an uneven split goes to the first keys in ``order``.
  """
  alloc = {k: 0 for k in counts}
  remaining = total
  active = sorted((k for k, n in counts.items() if n > 0), key=order)
  while remaining > 0 and active:
    share = remaining // len(active)
    if share == 0:
      for k in active[:remaining]:
        alloc[k] += 1
      break
    still = []
    for k in active:
      give = min(share, counts[k] - alloc[k])
      alloc[k] += give
      remaining -= give
      if alloc[k] < counts[k]:
        still.append(k)
    active = still
  return alloc


def case_quotas(case_counts: Mapping[tuple[str, str, str], int], total: int, seed: int
                ) -> dict[tuple[str, str, str], int]:
  """Images per (modality, dataset, case) for ``total`` images (0 = all)."""
  if total <= 0:
    return dict(case_counts)
  by_mod: Counter = Counter()
  by_ds: Counter = Counter()
  for (m, d, _), n in case_counts.items():
    by_mod[m] += n
    by_ds[m, d] += n
  order = lambda k: stable_unit(seed, "order", k)  # noqa: E731
  q_mod = water_fill(by_mod, total, order=lambda m: MODALITIES.index(m))
  out: dict[tuple[str, str, str], int] = {}
  for m, qm in q_mod.items():
    q_ds = water_fill({d: n for (mm, d), n in by_ds.items() if mm == m}, qm, order)
    for d, qd in q_ds.items():
      cases = {c: n for (mm, dd, c), n in case_counts.items() if mm == m and dd == d}
      out.update({(m, d, c): q for c, q in water_fill(cases, qd, order).items()})
  return out


def select(refs: Callable[[], Iterable[ImageRef]], num_images: int, *, stride: int, seed: int
           ) -> tuple[list[ImageRef], dict[str, int]]:
  """The sampled references, ordered by (modality, dataset, case, slice), and counts
  (``candidates``, ``after_stride``, ``selected``).

  ``refs()`` is called twice (counting, then choosing); it must yield the same sequence.
  """
  counts: Counter = Counter()
  n = 0
  for ref in refs():
    n += 1
    if stride_keep(ref, stride):
      counts[ref.modality, ref.dataset, ref.case_key] += 1
  quotas = case_quotas(counts, num_images, seed)
  heaps: dict[tuple[str, str, str], list] = defaultdict(list)
  for ref in refs():
    key = (ref.modality, ref.dataset, ref.case_key)
    q = quotas.get(key, 0)
    if q <= 0 or not stride_keep(ref, stride):
      continue
    item = (-stable_unit(seed, "pick", ref.id), ref.id, ref)
    heap = heaps[key]
    if len(heap) < q:
      heapq.heappush(heap, item)
    elif item > heap[0]:
      heapq.heapreplace(heap, item)
  chosen = sorted((item[2] for heap in heaps.values() for item in heap), key=sort_key)
  return chosen, {"candidates": n, "after_stride": sum(counts.values()), "selected": len(chosen)}


def sort_key(ref: ImageRef) -> tuple:
  return (MODALITIES.index(ref.modality), ref.dataset, ref.case_id,
          -1 if ref.slice is None else ref.slice, ref.id)


def dedup(metas: Sequence[ImageMeta], min_iou: float) -> tuple[list[ImageMeta], list[str]]:
  """Drops slices near-identical to the previous kept slice of the same case.

  Returns (kept metas in input order, dropped ids). ``min_iou > 1`` disables it.
  """
  by_case: dict[str, list[int]] = defaultdict(list)
  for i, m in enumerate(metas):
    if m.slice is not None:
      by_case[m.case_key].append(i)
  dropped: set[int] = set()
  if min_iou <= 1.0:
    for idx in by_case.values():
      last = None
      for i in sorted(idx, key=lambda j: metas[j].slice):
        if last is not None and near_identical(metas[last], metas[i], min_iou):
          dropped.add(i)
        else:
          last = i
  kept = [m for i, m in enumerate(metas) if i not in dropped]
  return kept, [metas[i].id for i in sorted(dropped)]


def iter_chunks(items: Sequence, size: int) -> Iterator[tuple[int, Sequence]]:
  for k, start in enumerate(range(0, len(items), size)):
    yield k, items[start:start + size]
