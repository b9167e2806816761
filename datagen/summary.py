"""The run summary (summary.json) and its printed form."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from bird_jax.vocabulary import TASKS
from bird_jax.vocabulary import MODALITIES
from datagen.config import GenConfig

MAX_EXAMPLES = 5  # skip messages kept per reason


def cost_usd(backend: Mapping[str, Any], price_in: float | None, price_out: float | None
             ) -> float | None:
  """Estimated cost of the tokens paid in this output's chunks (None without prices)."""
  if price_in is None or price_out is None:
    return None
  return (backend.get("prompt_tokens", 0) * price_in
          + backend.get("completion_tokens", 0) * price_out) / 1e6


def build_summary(cfg: GenConfig, *, plan: Mapping[str, Any], meta_skips: Counter,
                  skipped: Sequence[Mapping[str, Any]], duplicates: Sequence[str],
                  split: Mapping[str, Any], stats: Mapping[str, Any], files: Mapping[str, int],
                  timings: Mapping[str, float]) -> dict[str, Any]:
  examples: dict[str, list[str]] = defaultdict(list)
  for item in skipped:
    if len(examples[item["skip"]]) < MAX_EXAMPLES:
      examples[item["skip"]].append(f"{item['id']}: {item.get('message', '')}".rstrip(": "))
  backend = dict(stats.get("backend", {}))
  if cfg.backend == "openai":
    backend["cost_usd"] = cost_usd(backend, cfg.llm.price_in, cfg.llm.price_out)
  per_modality = stats.get("per_modality", {})
  images = stats.get("images", {})
  return {
      "source": cfg.source,
      "backend": cfg.backend,
      "options": cfg.fingerprint(),
      "images": {**plan["counts"], "with_objects": len(plan["refs"]) - len(skipped),
                 "near_duplicates_dropped": len(duplicates),
                 "written": sum(images.values()), "train": images.get("train", 0),
                 "test": images.get("test", 0)},
      "skips": {"source": dict(plan.get("skips", {})), "meta": dict(meta_skips),
                "examples": dict(examples)},
      "split": dict(split),
      "per_modality": {m: per_modality[m] for m in MODALITIES if m in per_modality},
      "per_task": dict(stats.get("per_task", {})),
      "per_label": dict(sorted(stats.get("per_label", {}).items())),
      "provenance": dict(stats.get("provenance", {})),
      "backend_stats": backend,
      "files": dict(files),
      "timings_s": {k: round(v, 2) for k, v in timings.items()},
  }


def format_summary(s: Mapping[str, Any]) -> str:
  im = s["images"]
  lines = [
      f"datagen: {s['source']} -> {im['written']} images ({im['train']} train, {im['test']} "
      f"test) in {s['timings_s'].get('total_s', 0):.1f} s with the {s['backend']} backend",
      f"  candidates {im['candidates']}, after slice stride {im['after_stride']}, sampled "
      f"{im['selected']}, with objects {im['with_objects']}, near-duplicates dropped "
      f"{im['near_duplicates_dropped']}",
  ]
  turns = s["per_task"]
  lines.append("  turns: " + ", ".join(f"{t} {turns.get(t, 0)}" for t in (*TASKS, "vg_negative")))
  mods = s["per_modality"]
  lines.append("  images per modality: " + ", ".join(f"{m} {mods[m]['images']}" for m in mods))
  for kind in ("source", "meta"):
    if s["skips"][kind]:
      lines.append(f"  skipped ({kind}): " + ", ".join(f"{k} {v}" for k, v in
                                                     sorted(s["skips"][kind].items())))
  b = s["backend_stats"]
  if s["backend"] == "openai":
    cost = b.get("cost_usd")
    lines.append(
        f"  openai: {b.get('requests', 0)} requests, {b.get('cache_hits', 0)} cache hits, "
        f"{b.get('retries', 0)} retries, {b.get('rejected', 0)} rejected answers; tokens "
        f"{b.get('prompt_tokens', 0)} in + {b.get('completion_tokens', 0)} out"
        + (f", estimated cost ${cost:.4f}" if cost is not None else
           " (cost: give --price-in/--price-out)"))
    lines.append(
        f"  template fallbacks: {b.get('fallback_images', 0)} of {im['written']} images "
        f"({b.get('failed_images', 0)} with requests failing after all retries, "
        f"{b.get('fallback_caption', 0)} captions and {b.get('fallback_conversation', 0)} "
        "conversations rejected)")
  lines.append("  files: " + ", ".join(f"{k} ({v})" for k, v in s["files"].items()))
  return "\n".join(lines)
