"""One generation run: plan -> meta -> de-duplicate + split -> text + records -> files.

Output folder ``OUT``:

    train/train-cNNNNN-00000-of-00001.array_record   self-contained records, one per chunk
    test/test-cNNNNN-00000-of-00001.array_record
    medgrit/train.json, test.json                    Med-GRIT JSON (multi-turn)
    medgrit/test_{VG,ROC,RC,MIA}.json                single-turn evaluation files
    images/<id>.png                                  (unless --no-images; samed2d: off)
    summary.json
    manifest.json                                    what made it, with every file's hash
                                                     (bird_jax/manifest.py; host 0 writes it)
    .work/                                           resume state (plan, chunks, LLM cache,
                                                     the chunks' shards until published)

Publication: chunk shards are written under ``.work/shards/{train,test}`` and published as
``train/`` and ``test/`` only when every chunk is done and the run is accepted (not too many
template fallbacks), so ``train.py`` never reads a partial or refused run. Each side is put in
place by one rename of a folder assembled beside it (datagen/publish.py), so ``train/`` is at
every moment the previous complete set, the new complete set, or absent, never a part of one;
a publication interrupted by a crash is finished or undone by the next run. A refused run (TooManyFallbacks) also withdraws what an earlier
accepted run of OUT had published. Only host 0 publishes, withdraws or recovers.

Resume: every stage saves its results per chunk of ``chunk_size`` images (atomically) under
``.work``; a rerun with the same options skips what exists, so a killed run continues
where it stopped and ends with exactly the files of an uninterrupted run. Chunks are fixed
by the plan, not by the workers, so the output does not depend on the number of workers.
Several hosts sharing ``OUT`` split the chunks (``host_index``/``host_count``); the split
and the final files need every chunk, which a last run (any host) completes.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bird_jax import exit_codes
from bird_jax.exit_codes import refusing
from bird_jax.manifest import MANIFEST, Manifest, files_under
from datagen.config import LLM_CACHE, GenConfig, check_backend_ready, make_backend, make_source
from datagen.fileio import read_json, remove_temp_files, write_json_atomic
from datagen.meta import ImageMeta
from datagen.publish import TRANSIENT, publish, recover_publication, withdraw
from datagen.sampling import dedup, iter_chunks, select
from datagen.sources.base import stable_seed
from datagen.split import TEST, TRAIN, split_cases, split_counts
from datagen.stages import merge_counts, meta_chunk, staged_folder, text_chunk
from datagen.summary import build_summary
from datagen.writer import export_json_files

log = logging.getLogger(__name__)

OUTPUT_ENTRIES = ("train", "test", *TRANSIENT, "medgrit", "images", "summary.json", MANIFEST,
                  ".work")


class ConfigMismatch(RuntimeError):
  """OUT holds a run made with other options."""

  exit_code = exit_codes.BAD_INPUT


class TooManyFallbacks(RuntimeError):
  """More images fell back to template text than ``max_fallback_fraction`` allows."""

  exit_code = exit_codes.TOO_MANY_FALLBACKS


def clean_output(out: str | Path) -> None:
  """Removes what a previous run wrote into ``out`` (nothing else), except the LLM response
  cache: those answers were paid for, and a request that is asked again is served from it."""
  for name in OUTPUT_ENTRIES:
    p = Path(out) / name
    if name == ".work" and p.is_dir():
      for q in p.iterdir():
        if q.name == LLM_CACHE:
          continue
        if q.is_dir():
          shutil.rmtree(q)
        else:
          q.unlink()
    elif p.is_dir():
      shutil.rmtree(p)
    elif p.exists():
      p.unlink()


def check_config(work: Path, cfg: GenConfig) -> None:
  path = work / "config.json"
  fp = cfg.fingerprint()
  if path.exists():
    old = read_json(path)
    if old != fp:
      diff = sorted(k for k in set(old) | set(fp) if old.get(k) != fp.get(k))
      raise ConfigMismatch(f"{cfg.out} holds a run made with other options (differing: "
                           f"{', '.join(diff)}); use another --out, the same options, or "
                           "--overwrite")
  else:
    write_json_atomic(path, fp, indent=1)


def make_plan(work: Path, source, cfg: GenConfig) -> dict[str, Any]:
  path = work / "plan.json"
  if path.exists():
    return read_json(path)
  skips: Counter = Counter()

  def refs():
    skips.clear()
    return source.refs(skips)

  chosen, counts = select(refs, cfg.num_images, stride=cfg.slice_stride, seed=cfg.seed)
  plan = {"refs": [r.to_dict() for r in chosen], "counts": counts, "skips": dict(skips)}
  write_json_atomic(path, plan)
  return plan


def run_chunks(fn: Callable[..., Any], tasks: Sequence[tuple[int, tuple, int]], workers: int,
               on_done: Callable[[int, Any], None], bar: tqdm) -> None:
  """Runs ``fn(*args)`` for each (chunk, args, n_images); ``on_done`` in this process."""
  if workers <= 1 or len(tasks) <= 1:
    for k, args, n in tasks:
      on_done(k, fn(*args))
      bar.update(n)
    return
  ctx = multiprocessing.get_context("spawn")
  with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=ctx) as ex:
    futures = {ex.submit(fn, *args): (k, n) for k, args, n in tasks}
    try:
      for f in as_completed(futures):
        k, n = futures[f]
        on_done(k, f.result())
        bar.update(n)
    except BaseException:
      ex.shutdown(wait=True, cancel_futures=True)
      raise


def _mine(cfg: GenConfig, k: int) -> bool:
  return k % cfg.host_count == cfg.host_index


def meta_stage(cfg: GenConfig, source, work: Path, refs: Sequence[dict]
               ) -> tuple[list[ImageMeta], Counter, list[dict]] | list[int]:
  """Stage 1 (meta of every planned image, per chunk): (metas, skip counts, skipped items),
  or the chunks still missing (other hosts')."""
  chunks = list(iter_chunks(refs, cfg.chunk_size))
  path = lambda k: work / "meta" / f"chunk-{k:05d}.json"  # noqa: E731
  tasks = [(k, (source, cfg, c), len(c)) for k, c in chunks if _mine(cfg, k) and
           not path(k).exists()]
  with tqdm(total=sum(n for *_, n in tasks), unit="img", desc="meta",
            disable=not cfg.progress) as bar:
    run_chunks(meta_chunk, tasks, cfg.n_workers,
               lambda k, res: write_json_atomic(path(k), res), bar)
  missing = [k for k, _ in chunks if not path(k).exists()]
  if missing:
    return missing
  metas, skips, skipped = [], Counter(), []
  for k, _ in chunks:
    res = read_json(path(k))
    skips.update(res["skips"])
    for item in res["items"]:
      if "skip" in item:
        skipped.append(item)
      else:
        metas.append(ImageMeta.from_dict(item))
  return metas, skips, skipped


def text_stage(cfg: GenConfig, source, work: Path, kept: Sequence[ImageMeta],
               sides: dict[str, str]) -> tuple[list[int], list[int], dict[str, Any]]:
  """Stage 2 (text, records, shards, per chunk of the kept images): (chunk indices, chunks
  still missing, merged counts of the chunks done)."""
  out = Path(cfg.out)
  for folder in (out / "images", staged_folder(work, TRAIN), staged_folder(work, TEST)):
    remove_temp_files(folder)
  chunks = list(iter_chunks(kept, cfg.chunk_size))
  done = lambda k: work / "text" / f"chunk-{k:05d}.json"  # noqa: E731
  keys = {k: stable_seed(*(m.id for m in c)) for k, c in chunks}

  def is_done(k: int) -> bool:
    return done(k).exists() and read_json(done(k)).get("key") == keys[k]

  def is_final(k: int) -> bool:
    """Done without template fallbacks: a chunk that fell back is generated again on a rerun
    (its answers that were paid for come from the response cache)."""
    if not done(k).exists():
      return False
    d = read_json(done(k))
    return d.get("key") == keys[k] and not fallback_images(d["stats"])

  def finish(k: int, stats: dict[str, Any]) -> None:
    write_json_atomic(done(k), {"key": keys[k], "stats": stats})

  todo = [(k, c) for k, c in chunks if _mine(cfg, k) and not is_final(k)]
  in_process = cfg.backend != "template"  # the openai backend runs threads in this process
  backend = make_backend(cfg, str(work)) if in_process and todo else None
  tasks = [(k, (source, cfg, str(work), k, [m.to_dict() for m in c],
                {m.case_key: sides[m.case_key] for m in c}, backend), len(c)) for k, c in todo]
  try:
    with tqdm(total=sum(n for *_, n in tasks), unit="img", desc=f"text ({cfg.backend})",
              disable=not cfg.progress) as bar:
      run_chunks(text_chunk, tasks, 1 if in_process else cfg.n_workers, finish, bar)
  finally:
    if backend is not None and hasattr(backend, "close"):
      backend.close()
  missing = [k for k, _ in chunks if not is_done(k)]
  stats: dict[str, Any] = {}
  for k, _ in chunks:
    if k not in missing:
      merge_counts(stats, read_json(done(k))["stats"])
  return [k for k, _ in chunks], missing, stats


def fallback_images(stats: dict[str, Any]) -> int:
  """Images of (merged) chunk counts whose text came from the template backend, wholly or in
  part, because the LLM failed or its answers were rejected."""
  return int(stats.get("backend", {}).get("fallback_images", 0))


def check_fallbacks(cfg: GenConfig, stats: dict[str, Any]) -> None:
  """Raises TooManyFallbacks when the fallback share of the written images exceeds the limit;
  the final files are then not written (a rerun against a healthy server regenerates them)."""
  images = sum(stats.get("images", {}).values())
  fell = fallback_images(stats)
  if cfg.backend != "openai" or not images or fell / images <= cfg.llm.max_fallback_fraction:
    return
  b = stats.get("backend", {})
  raise TooManyFallbacks(
      f"{fell} of {images} images ({fell / images:.0%}) fell back to template text, more than "
      f"--max-fallback-fraction {cfg.llm.max_fallback_fraction:g} ({b.get('failed_images', 0)} "
      f"with requests failing after all retries, {b.get('fallback_caption', 0)} captions and "
      f"{b.get('fallback_conversation', 0)} conversations rejected after "
      f"{cfg.llm.max_attempts} answers); nothing was published to {Path(cfg.out) / TRAIN} or "
      f"{Path(cfg.out) / TEST} (the chunks wait in {Path(cfg.out) / '.work' / 'shards'}); check "
      "--base-url / the server and rerun: chunks with fallbacks are generated again, paid "
      "answers come from the cache")


def generate(cfg: GenConfig) -> dict[str, Any]:
  """Runs (or resumes) generation into ``cfg.out``; returns the summary, or, when chunks of
  other hosts are missing, ``{"status": "incomplete" | "host_done", ...}``."""
  t0 = time.time()
  out, work = Path(cfg.out), Path(cfg.out) / ".work"
  with refusing(ValueError, OSError):  # options, key and source files, before any write
    cfg.validate()
    check_backend_ready(cfg)
    source = make_source(cfg)
  work.mkdir(parents=True, exist_ok=True)
  check_config(work, cfg)
  record = None
  if cfg.host_index == 0:
    recover_publication(out, work)  # what a crash during publication left
    record = Manifest(out, "datagen", dataclasses.asdict(cfg), resume=True, with_devices=False)
    record.hash_later("inputs", "source", getattr(source, "input_files", ()))
  plan = make_plan(work, source, cfg)
  timings = {"plan_s": time.time() - t0}

  t = time.time()
  got = meta_stage(cfg, source, work, plan["refs"])
  if not isinstance(got, tuple):
    close_record(record, work, t0, "incomplete")
    return {"status": "incomplete", "stage": "meta", "missing_chunks": got}
  metas, meta_skips, skipped = got
  timings["meta_s"] = time.time() - t

  kept, duplicates = dedup(metas, cfg.dedup_iou)  # cheap: recomputed on every run
  pairs = [(m.case_key, m.modality) for m in kept]
  sides = split_cases(pairs, cfg.test_fraction, cfg.seed)

  t = time.time()
  chunks, missing, stats = text_stage(cfg, source, work, kept, sides)
  try:
    check_fallbacks(cfg, stats)
  except TooManyFallbacks:
    if cfg.host_index == 0:  # the others leave OUT to it
      withdraw(out, work)
      record.data["outputs"] = {}
      close_record(record, work, t0, "refused: too many template fallbacks")
    raise
  if missing or cfg.host_index != 0:
    close_record(record, work, t0, "incomplete")
    return {"status": "incomplete" if missing else "host_done", "stage": "text",
            "missing_chunks": missing}
  timings["text_s"] = time.time() - t

  t = time.time()
  shards = publish(out, work, chunks)
  files = export_json_files(shards[TRAIN], shards[TEST], out / "medgrit")
  timings["export_s"] = time.time() - t
  timings["total_s"] = time.time() - t0
  summary = build_summary(cfg, plan=plan, meta_skips=meta_skips, skipped=skipped,
                          duplicates=duplicates, split=split_counts(pairs, sides), stats=stats,
                          files=files, timings=timings)
  write_json_atomic(out / "summary.json", summary, indent=1)
  for name in ("train", "test", "medgrit", "images"):
    record.hash_now("outputs", name, files_under(out / name))
  record.hash_now("outputs", "summary", [out / "summary.json"])
  close_record(record, work, t0, "done")
  return summary


def close_record(record: Manifest | None, work: Path, t0: float, outcome: str) -> None:
  """Ends the manifest's segment: how it ended and the chunks it generated."""
  if record is None:
    return
  done = {stage: sum(p.stat().st_mtime >= t0 for p in (work / stage).glob("chunk-*.json"))
          for stage in ("meta", "text")}
  record.close(outcome=outcome, chunks_generated=done)
