"""``python -m datagen``: Med-GRIT-style conversations from image/mask sources.

    python -m datagen --source phantom --out data/phantom                # ~1000 images, offline
    python -m datagen --source samed2d --root /data/SAMed2Dv1 --out data/sam --num-images 60000
    python -m datagen --source atlas --out data/atlas      # needs: apt-get install mricron-data
    python -m datagen --source shapes --out data/shapes --num-images 20000  # generic scenes
    OPENAI_API_KEY=... python -m datagen --source phantom --out data/p --backend openai \\
        --base-url https://api.openai.com/v1 --model gpt-4o-mini --price-in 0.15 --price-out 0.6

Rerun the same command to resume an interrupted run. Exit codes: 0 done, 2 refused input or
a server that refuses the requests (one line), 7 more images fell back to template text than
--max-fallback-fraction allows (nothing is published to OUT/train or OUT/test), 1 anything
unexpected (with its traceback) (docs/faults.md).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from bird_jax import exit_codes
from bird_jax.cli import ToolParser
from bird_jax.exit_codes import refusing
from datagen.config import (BACKENDS, DEFAULT_ATLAS_DIR, SHAPES_STYLES, SOURCES, BackendConfig,
                            GenConfig)
from datagen.llm.template import ANSWER_STYLES
from datagen.meta import COMPONENT_RULES, DEFAULT_MIN_AREA
from datagen.run import clean_output, generate
from datagen.summary import format_summary
from datagen.tasks import TaskCounts


PROG = "python -m datagen"


def parser() -> argparse.ArgumentParser:
  p = ToolParser(prog=PROG, description=__doc__,
                 formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--source", choices=SOURCES, default="phantom")
  p.add_argument("--out", required=True, help="output folder (resumed when it exists)")
  p.add_argument("--num-images", type=int, default=1000,
                 help="images to sample (0 = all candidates; samed2d/atlas)")
  p.add_argument("--seed", type=int, default=0)
  g = p.add_argument_group("phantom and shapes")
  g.add_argument("--image-size", type=int, default=112, help="image side in pixels")
  g.add_argument("--max-labels", type=int, default=5,
                 help="shapes: labelled kinds of object per scene, at most")
  g.add_argument("--shapes-style", choices=SHAPES_STYLES, default="full",
                 help="shapes: full scenes; plain ones (colour + shape labels, one object "
                 "each, no textures, categories or lines: easier grounding); bare ones (such "
                 "objects on a black background without noise: the easiest)")
  g = p.add_argument_group("samed2d")
  g.add_argument("--root", default="", help="the SAMed2Dv1 folder")
  g.add_argument("--index", default="", help="JSON index (default ROOT/SAMed2D_v1.json)")
  g.add_argument("--class-mapping", default="",
                 help="class mapping (default ROOT/SAMed2D_v1_class_mapping_id.json)")
  g.add_argument("--min-aspect", type=float, default=0.5,
                 help="skip images whose short side is below this fraction of the long side")
  g = p.add_argument_group("atlas")
  g.add_argument("--atlas-dir", default=DEFAULT_ATLAS_DIR)
  g.add_argument("--atlas-labels", choices=("aal", "brodmann"), default="aal")
  g.add_argument("--atlas-planes", default="axial,coronal,sagittal")
  g = p.add_argument_group("sampling and meta")
  g.add_argument("--slice-stride", type=int, default=3,
                 help="keep every k-th slice of a volume")
  g.add_argument("--dedup-iou", type=float, default=0.9,
                 help="drop a slice whose boxes all match the previous kept slice of its case "
                 "at this IoU (> 1 disables)")
  g.add_argument("--min-area", type=float, default=DEFAULT_MIN_AREA,
                 help="speck threshold, fraction of the image area")
  g.add_argument("--components", choices=COMPONENT_RULES, default="union",
                 help="several connected components in one instance mask")
  g = p.add_argument_group("text")
  g.add_argument("--backend", choices=BACKENDS, default="template")
  g.add_argument("--answer-style", choices=ANSWER_STYLES, default="varied",
                 help="template backend: concise VG answers are the grounded phrase only, "
                 "<ref>label</ref><box>..</box>; MIA answers a grounded listing")
  for task, n in (("vg", 2), ("roc", 1), ("rc", 1), ("mia", 1)):
    g.add_argument(f"--{task}", type=int, default=n, help=f"{task.upper()} turns per image")
  g.add_argument("--negatives", type=float, default=0.2,
                 help="probability of one absent-structure question per image (0 = none)")
  g.add_argument("--disjoint", action="store_true",
                 help="ROC/RC turns refer only to objects whose label no VG turn of the same "
                 "image asks about (no answer can be copied from another turn)")
  g = p.add_argument_group("openai backend (key from OPENAI_API_KEY only)")
  d = BackendConfig()
  g.add_argument("--base-url", default=d.base_url)
  g.add_argument("--model", default=d.model)
  g.add_argument("--temperature", type=float, default=d.temperature)
  g.add_argument("--json-mode", choices=("json_object", "json_schema", "none"),
                 default=d.json_mode)
  g.add_argument("--prompt-version", default=d.prompt_version)
  g.add_argument("--max-attempts", type=int, default=d.max_attempts,
                 help="answers per stage before falling back to the template backend")
  g.add_argument("--concurrency", type=int, default=d.concurrency)
  g.add_argument("--timeout", type=float, default=d.timeout, help="seconds per request")
  g.add_argument("--max-retries", type=int, default=d.max_retries)
  g.add_argument("--backoff", type=float, default=d.backoff)
  g.add_argument("--max-backoff", type=float, default=d.max_backoff)
  g.add_argument("--max-failures", type=int, default=d.max_failures,
                 help="images whose requests failed after all retries before the run stops")
  g.add_argument("--max-fallback-fraction", type=float, default=d.max_fallback_fraction,
                 help="fail (exit 7) when a larger share of images fell back to template text")
  g.add_argument("--cache-dir", default="")
  g.add_argument("--price-in", type=float, default=None, help="USD per 1M prompt tokens")
  g.add_argument("--price-out", type=float, default=None, help="USD per 1M completion tokens")
  g = p.add_argument_group("split and output")
  g.add_argument("--test-fraction", type=float, default=0.12)
  g.add_argument("--chunk-size", type=int, default=64)
  g.add_argument("--images", dest="write_images", action="store_true", default=None,
                 help="write images/<id>.png (default: yes, except for samed2d)")
  g.add_argument("--no-images", dest="write_images", action="store_false")
  g.add_argument("--workers", type=int, default=0, help="processes (0 = number of CPUs)")
  g.add_argument("--host-index", type=int, default=0)
  g.add_argument("--host-count", type=int, default=1)
  g.add_argument("--overwrite", action="store_true",
                 help="delete a previous run in --out (its LLM response cache is kept)")
  g.add_argument("--no-progress", action="store_true")
  return p


def config_from_args(a: argparse.Namespace) -> GenConfig:
  llm = BackendConfig(base_url=a.base_url, model=a.model, temperature=a.temperature,
                      json_mode=a.json_mode, prompt_version=a.prompt_version,
                      max_attempts=a.max_attempts, concurrency=a.concurrency, timeout=a.timeout,
                      max_retries=a.max_retries, backoff=a.backoff, max_backoff=a.max_backoff,
                      max_failures=a.max_failures, max_fallback_fraction=a.max_fallback_fraction,
                      cache_dir=a.cache_dir, price_in=a.price_in, price_out=a.price_out)
  return GenConfig(
      out=a.out, source=a.source, num_images=a.num_images, seed=a.seed,
      image_size=a.image_size, max_labels=a.max_labels, shapes_style=a.shapes_style,
      samed2d_root=a.root, samed2d_index=a.index,
      samed2d_mapping=a.class_mapping, min_aspect=a.min_aspect, atlas_dir=a.atlas_dir,
      atlas_labels=a.atlas_labels,
      atlas_planes=tuple(x.strip() for x in a.atlas_planes.split(",") if x.strip()),
      slice_stride=a.slice_stride, dedup_iou=a.dedup_iou, min_area=a.min_area,
      components=a.components,
      tasks=TaskCounts(vg=a.vg, roc=a.roc, rc=a.rc, mia=a.mia, negatives=a.negatives,
                       disjoint=a.disjoint),
      backend=a.backend, answer_style=a.answer_style, llm=llm, test_fraction=a.test_fraction,
      chunk_size=a.chunk_size,
      write_images=a.write_images, workers=a.workers, host_index=a.host_index,
      host_count=a.host_count, progress=not a.no_progress)


def main(argv: Sequence[str] | None = None) -> int:
  """One run (bird_jax/cli.py's run_tool turns what it raises into the exit code: refused
  options, sources, servers and outputs carry 2, TooManyFallbacks 7)."""
  args = parser().parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  for name in ("httpx", "httpx2", "openai"):  # one line per request otherwise
    logging.getLogger(name).setLevel(logging.WARNING)
  with refusing(ValueError):
    cfg = config_from_args(args).validate()
  if args.overwrite:
    clean_output(cfg.out)
  result = generate(cfg)
  if result.get("status") in ("incomplete", "host_done"):
    print(f"datagen: this host's chunks are written; stage {result['stage']!r} still misses "
          f"chunks {result['missing_chunks'][:10]}... from other hosts; rerun when they are "
          "done to finish" if result["missing_chunks"] else
          "datagen: this host's chunks are written; host 0 writes the final files")
    return exit_codes.OK
  print(format_summary(result))
  return exit_codes.OK

