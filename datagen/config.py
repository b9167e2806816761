"""The options of one generation run, and the source/backend they name."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from datagen.llm.config import BackendConfig, api_key
from datagen.llm.template import ANSWER_STYLES
from datagen.meta import COMPONENT_RULES, DEFAULT_MIN_AREA
from datagen.sources.shapes import STYLES as SHAPES_STYLES
from datagen.tasks import TaskCounts

SOURCES = ("phantom", "samed2d", "atlas", "shapes")
BACKENDS = ("template", "openai")
DEFAULT_ATLAS_DIR = "/usr/share/mricron/templates"
LLM_CACHE = "llm_cache"  # OUT/.work/llm_cache: paid responses, never deleted by datagen


@dataclasses.dataclass(frozen=True)
class GenConfig:
  out: str
  source: str = "phantom"
  num_images: int = 1000  # 0 = every candidate (samed2d / atlas)
  seed: int = 0
  # phantom and shapes
  image_size: int = 112
  max_labels: int = 5  # shapes: labelled kinds of object per scene, at most
  shapes_style: str = "full"  # shapes: "full", "plain" (colour + shape labels, one each) or
  # "bare" (plain objects on black)
  # samed2d
  samed2d_root: str = ""
  samed2d_index: str = ""  # default: ROOT/SAMed2D_v1.json (or the one SAMed2D*.json)
  samed2d_mapping: str = ""  # default: ROOT/SAMed2D_v1_class_mapping_id.json
  min_aspect: float = 0.5  # short side / long side below this: image skipped
  # atlas
  atlas_dir: str = DEFAULT_ATLAS_DIR
  atlas_labels: str = "aal"  # aal | brodmann
  atlas_planes: tuple[str, ...] = ("axial", "coronal", "sagittal")
  # sampling and meta
  slice_stride: int = 3
  dedup_iou: float = 0.9  # > 1 disables similarity de-duplication
  min_area: float = DEFAULT_MIN_AREA
  components: str = "union"
  # text
  tasks: TaskCounts = TaskCounts()
  backend: str = "template"
  answer_style: str = "varied"  # template backend: "varied" | "concise" (VG: grounded phrase only)
  llm: BackendConfig = BackendConfig()
  # split and output
  test_fraction: float = 0.12
  chunk_size: int = 64
  write_images: bool | None = None  # None: yes, except for samed2d (images already on disk)
  # execution (not part of the output's identity)
  workers: int = 0  # 0 = number of CPUs
  host_index: int = 0
  host_count: int = 1
  progress: bool = True

  def validate(self) -> "GenConfig":
    checks = [
        (self.source in SOURCES, f"source {self.source!r} is not one of {SOURCES}"),
        (self.backend in BACKENDS, f"backend {self.backend!r} is not one of {BACKENDS}"),
        (self.answer_style in ANSWER_STYLES, f"answer style {self.answer_style!r} is not one of "
         f"{ANSWER_STYLES}"),
        (self.answer_style == "varied" or self.backend == "template",
         "--answer-style concise needs the template backend"),
        (self.shapes_style in SHAPES_STYLES, f"shapes style {self.shapes_style!r} is not one "
         f"of {SHAPES_STYLES}"),
        (self.num_images >= 0, f"num_images {self.num_images} must be >= 0"),
        (self.slice_stride >= 1, f"slice_stride {self.slice_stride} must be >= 1"),
        (self.components in COMPONENT_RULES, f"components {self.components!r} is not one of "
         f"{COMPONENT_RULES}"),
        (0 <= self.min_area < 1, f"min_area {self.min_area} must be in [0, 1)"),
        (0 <= self.test_fraction < 1, f"test_fraction {self.test_fraction} must be in [0, 1)"),
        (self.chunk_size >= 1, f"chunk_size {self.chunk_size} must be >= 1"),
        (0 <= self.host_index < self.host_count, f"host_index {self.host_index} must be in "
         f"[0, host_count={self.host_count})"),
        (self.llm.json_mode in ("json_object", "json_schema", "none"),
         f"json_mode {self.llm.json_mode!r} is not json_object | json_schema | none"),
        (self.llm.concurrency >= 1, "concurrency must be >= 1"),
        (self.llm.max_attempts >= 1, "max_attempts must be >= 1"),
    ]
    for ok, msg in checks:
      if not ok:
        raise ValueError(f"invalid datagen options: {msg}")
    if self.source == "samed2d" and not self.samed2d_root:
      raise ValueError("--source samed2d needs --root (the SAMed2Dv1 folder)")
    self.tasks.validate()
    return self

  @property
  def n_workers(self) -> int:
    return self.workers or os.cpu_count() or 1

  @property
  def images_on_disk(self) -> bool:
    return self.write_images if self.write_images is not None else self.source != "samed2d"

  def fingerprint(self) -> dict[str, Any]:
    """The options that decide the output (a resumed run must use the same)."""
    d = dataclasses.asdict(self)
    for k in ("out", "workers", "host_index", "host_count", "progress", "samed2d_root",
              "samed2d_index", "samed2d_mapping", "atlas_dir"):  # data may move between runs
      d.pop(k)
    for k in ("concurrency", "timeout", "max_retries", "backoff", "max_backoff", "max_failures",
              "max_fallback_fraction", "cache_dir", "price_in", "price_out", "base_url"):
      d["llm"].pop(k)
    if self.backend != "openai":
      d.pop("llm")
    if self.source != "shapes":
      d.pop("max_labels")
    if self.source != "shapes" or self.shapes_style == "full":  # earlier runs keep their identity
      d.pop("shapes_style")
    if self.answer_style == "varied":  # runs made before the option existed keep their identity
      d.pop("answer_style")
    if not self.tasks.disjoint:  # runs made before the option existed keep their identity
      d["tasks"].pop("disjoint")
    d["atlas_planes"] = list(self.atlas_planes)
    d["write_images"] = self.images_on_disk
    return d


def make_source(cfg: GenConfig):
  if cfg.source == "phantom":
    from datagen.sources.phantom import PhantomSource
    return PhantomSource(seed=cfg.seed, image_size=cfg.image_size, num_images=cfg.num_images,
                         slice_stride=cfg.slice_stride)
  if cfg.source == "shapes":
    from datagen.sources.shapes import ShapesSource
    return ShapesSource(seed=cfg.seed, image_size=cfg.image_size, num_images=cfg.num_images,
                        max_labels=cfg.max_labels, style=cfg.shapes_style)
  if cfg.source == "samed2d":
    from datagen.sources.samed2d import SAMed2DSource
    return SAMed2DSource(cfg.samed2d_root, index=cfg.samed2d_index or None,
                         mapping=cfg.samed2d_mapping or None, min_aspect=cfg.min_aspect)
  from datagen.sources.atlas import AtlasSource
  return AtlasSource(cfg.atlas_dir, labels=cfg.atlas_labels, planes=cfg.atlas_planes)


def check_backend_ready(cfg: GenConfig) -> None:
  """Fails before any work when the openai backend has no key."""
  if cfg.backend == "openai":
    api_key()


def make_backend(cfg: GenConfig, work_dir: str):
  from datagen.llm.template import TemplateBackend
  if cfg.backend == "template":
    return TemplateBackend(cfg.seed, cfg.answer_style)
  from datagen.llm.openai_backend import OpenAIBackend
  return OpenAIBackend(cfg.llm, seed=cfg.seed,
                       cache_dir=cfg.llm.cache_dir or os.path.join(work_dir, LLM_CACHE))
