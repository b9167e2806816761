"""The per-chunk work of the two parallel stages (picklable functions for worker processes).

- :func:`meta_chunk`: load each reference of a chunk and compute its meta (or why it is
  skipped);
- :func:`text_chunk`: plan the turns, write the text, build and check the records, write
  the chunk's train and test shards (staged under ``OUT/.work/shards/``; the run moves them
  into ``OUT/train`` and ``OUT/test`` once it is accepted) and image files, and return the
  chunk's counts.
Their results depend only on their inputs, so the output is the same for any number of
workers and any order in which chunks complete.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from datagen.config import GenConfig, make_backend
from datagen.fileio import write_bytes_atomic
from datagen.meta import ImageMeta, objects_from_instances
from datagen.sources.base import ImageRef, SourceError
from datagen.split import TEST, TRAIN
from datagen.tasks import plan_turns
from datagen.writer import build_record, chunk_name, write_chunk_shards

STAGED = "shards"  # OUT/.work/shards/{train,test}: chunk shards not yet published


def staged_folder(work_dir: str | Path, side: str) -> Path:
  """Where a chunk's shards of `side` wait until the run publishes them."""
  return Path(work_dir) / STAGED / side


def meta_chunk(source, cfg: GenConfig, refs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """{"items": [meta dict | {"id", "skip", "message"}], "skips": {reason: count}}."""
  items: list[dict[str, Any]] = []
  skips: Counter = Counter()
  for rd in refs:
    ref = ImageRef.from_dict(rd)
    try:
      loaded = source.load(ref)
    except SourceError as e:
      skips["unreadable"] += 1
      items.append({"id": ref.id, "skip": "unreadable", "message": str(e)})
      continue
    skips.update(loaded.skips)
    if loaded.skip_image:
      skips[loaded.skip_image] += 1
      items.append({"id": ref.id, "skip": loaded.skip_image, "message": ""})
      continue
    objects, present, sk = objects_from_instances(loaded.instances, min_area=cfg.min_area,
                                                  components=cfg.components)
    skips.update(sk)
    if not objects:
      skips["no_objects"] += 1
      items.append({"id": ref.id, "skip": "no_objects", "message": ""})
      continue
    meta = ImageMeta(ref.id, ref.modality, ref.dataset, ref.case_id, ref.slice, loaded.width,
                     loaded.height, loaded.region, loaded.orientation, tuple(objects),
                     tuple(present), tuple(loaded.vocabulary), dict(loaded.notes), ref.to_dict())
    items.append(meta.to_dict())
  return {"items": items, "skips": dict(skips)}


def text_chunk(source, cfg: GenConfig, work_dir: str, index: int,
               metas: Sequence[Mapping[str, Any]], sides: Mapping[str, str],
               backend=None) -> dict[str, Any]:
  """Writes chunk ``index``; returns its counts (merged into the summary)."""
  backend = backend or make_backend(cfg, work_dir)
  ms = [ImageMeta.from_dict(m) for m in metas]
  items = [(m, plan_turns(m, cfg.tasks, cfg.seed)) for m in ms]
  gens = backend.generate_many(items)
  out = Path(cfg.out)
  by_side: dict[str, list] = {TRAIN: [], TEST: []}
  stats: dict[str, Any] = {"per_modality": {}, "per_task": Counter(), "per_label": {},
                           "provenance": Counter(), "images": Counter()}
  for (m, specs), gen in zip(items, gens):
    if len(gen.qas) != len(specs):
      raise RuntimeError(f"{m.id}: backend {gen.backend} returned {len(gen.qas)} turns for "
                         f"{len(specs)} planned")
    data = source.image_bytes(ImageRef.from_dict(m.ref))
    rec = build_record(m, gen, data)
    if cfg.images_on_disk:
      write_bytes_atomic(out / "images" / rec.image, data)
    side = sides[m.case_key]
    by_side[side].append(rec)
    _count(stats, m, specs, gen, side)
  for side, recs in by_side.items():
    write_chunk_shards(recs, staged_folder(work_dir, side), chunk_name(side, index))
  stats["backend"] = dict(backend.take_stats())
  return _plain(stats)


def _count(stats: dict[str, Any], m: ImageMeta, specs, gen, side: str) -> None:
  stats["images"][side] += 1
  stats["provenance"][gen.backend] += 1
  mod = stats["per_modality"].setdefault(m.modality, {"images": 0, "objects": 0,
                                                       "turns": Counter()})
  mod["images"] += 1
  mod["objects"] += len(m.objects)
  for o in m.objects:
    stats["per_label"].setdefault(o.label, {"objects": 0, "turns": Counter()})["objects"] += 1
  for spec in specs:
    task = "vg_negative" if spec.negative else spec.task
    stats["per_task"][task] += 1
    mod["turns"][task] += 1
    if spec.label:
      stats["per_label"].setdefault(spec.label, {"objects": 0, "turns": Counter()}
                                    )["turns"][task] += 1


def _plain(x: Any) -> Any:
  """Counters -> dicts, recursively (JSON-able)."""
  if isinstance(x, dict):
    return {k: _plain(v) for k, v in x.items()}
  return x


def merge_counts(a: dict[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
  """Adds nested dicts of numbers (b into a, in place); returns a."""
  for k, v in b.items():
    if isinstance(v, Mapping):
      merge_counts(a.setdefault(k, {}), v)
    elif isinstance(v, (int, float)):
      a[k] = a.get(k, 0) + v
    else:
      a[k] = v
  return a
