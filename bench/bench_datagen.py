"""Med-GRIT generation throughput: images/s of the template backend on 1024x1024 masks.

    .venv/bin/python bench/bench_datagen.py [--images 24] [--workers 2]

Builds a SA-Med2D-style folder (``SAMed2Dv1/``: index, class mapping, 1024x1024 PNG images
and one PNG mask per instance, from CT/X-ray/fundus/endoscopy phantoms drawn at 1024 px) in
a temporary folder, then times, per image: reading its masks, boxes from masks (component
labelling, speck rule), the turn plan, template text, record building and checks. The
baseline, measured in the same run, is decoding the same image and mask PNGs alone (what
any reader must do). Then the whole ``generate`` run (shards, JSON files, summary) with
``--workers`` processes. Prints one figure per line, with ratios.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from datagen.config import GenConfig
from datagen.run import generate
from datagen.sources.phantom import PhantomSource
from datagen.sources.samed2d import SAMed2DSource
from datagen.stages import meta_chunk, text_chunk

SIZE = 1024


def build_folder(root: Path, n_images: int) -> tuple[int, int]:
  """A SAMed2Dv1 folder of phantom images with their instance masks; (images, masks)."""
  src = PhantomSource(seed=0, image_size=SIZE, num_images=8 * n_images,
                      modalities=("ct", "x", "fundus", "endoscopy"))
  refs = [r for r in src.refs(Counter()) if r.slice is None or r.slice % 6 == 3][:n_images]
  index, mapping, n_masks = {}, {}, 0
  (root / "images").mkdir(parents=True)
  (root / "masks").mkdir()
  for ref in refs:
    img, instances = src.render_ref(ref)
    Image.fromarray(img).save(root / "images" / f"{ref.id}.png", compress_level=1)
    classes = mapping.setdefault(ref.dataset, {})
    seen: Counter = Counter()
    masks = []
    for label, mask in instances:
      cls = classes.setdefault(label, len(classes) + 1)
      name = f"masks/{ref.id}--{cls:04d}_{seen[label]:03d}.png"
      seen[label] += 1
      Image.fromarray(mask.astype(np.uint8) * 255).save(root / name, compress_level=1)
      masks.append(name)
    index[f"images/{ref.id}.png"] = masks
    n_masks += len(masks)
  (root / "SAMed2D_v1.json").write_text(json.dumps(index))
  (root / "SAMed2D_v1_class_mapping_id.json").write_text(json.dumps(mapping))
  return len(refs), n_masks


def decode_only(root: Path) -> float:
  """images/s of decoding every image and mask PNG to arrays (the baseline)."""
  index = json.loads((root / "SAMed2D_v1.json").read_text())
  t0 = time.perf_counter()
  for image, masks in index.items():
    np.asarray(Image.open(root / image))
    for m in masks:
      np.asarray(Image.open(root / m)) > 0
  return len(index) / (time.perf_counter() - t0)


def stages_in_process(root: Path, out: Path) -> float:
  """images/s of meta + template text + records (one process, no disk output but shards)."""
  cfg = GenConfig(out=str(out), source="samed2d", samed2d_root=str(root), num_images=0,
                  slice_stride=1, progress=False, write_images=False)
  src = SAMed2DSource(str(root))
  refs = [r.to_dict() for r in src.refs(Counter())]
  t0 = time.perf_counter()
  metas = [m for m in meta_chunk(src, cfg, refs)["items"] if "skip" not in m]
  sides = {f"{m['dataset']}--{m['case_id']}": "train" for m in metas}
  text_chunk(src, cfg, str(out / ".work"), 0, metas, sides)
  return len(refs) / (time.perf_counter() - t0)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--images", type=int, default=24)
  p.add_argument("--workers", type=int, default=2)
  args = p.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    root = Path(tmp) / "SAMed2Dv1"
    t0 = time.perf_counter()
    n, n_masks = build_folder(root, args.images)
    print(f"setup: {n} images of {SIZE}x{SIZE} with {n_masks} masks "
          f"({n_masks / n:.1f} per image) in {time.perf_counter() - t0:.1f} s")
    base = decode_only(root)
    print(f"baseline, PNG decode of image + masks only: {base:.1f} images/s")
    fast = stages_in_process(root, Path(tmp) / "stages")
    print(f"template backend, meta + text + records, 1 process: {fast:.1f} images/s "
          f"({fast / base:.2f}x the decode baseline)")
    cfg = GenConfig(out=str(Path(tmp) / "run"), source="samed2d", samed2d_root=str(root),
                    num_images=0, slice_stride=1, workers=args.workers, progress=False,
                    test_fraction=0.12)
    t0 = time.perf_counter()
    summary = generate(cfg)
    rate = summary["images"]["written"] / (time.perf_counter() - t0)
    print(f"python -m datagen (samed2d, template, {args.workers} workers, whole run): "
          f"{rate:.1f} images/s ({rate / base:.2f}x the decode baseline)")


if __name__ == "__main__":
  main()
