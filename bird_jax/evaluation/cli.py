"""`eval.py`: model mode (generate on the test files, then score) and audit mode (score files).

    eval.py --config configs/eval_bird.py --ckpt runs/bird7b --data data/medgrit_test
    eval.py --predictions VG.jsonl --task vg [--config.images=SAMed2Dv1/images]

Both write to `--out` (default `config.out`): predictions/<task>.jsonl (model mode),
report.md, report.json, plots/<task>.png, gallery/index.html and manifest.json (what was
scored, with what, and the hashes of it all: bird_jax/manifest.py), and print the Markdown
table.
Input is checked before anything is written: flags, config fields, prediction and test files,
their images, the mesh and the checkpoint; what is refused raises BadInput naming it (exit 2).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import ml_collections

from bird_jax.chatml import find_image_paths
from bird_jax.evaluation.predictions import (Prediction, PredictionFile, read_predictions,
                                             write_predictions)
from bird_jax.evaluation.scoring import ScoringOptions, TaskScores, score_task
from bird_jax.evaluation.testsets import (ImageFinder, find_test_files, image_exists,
                                          read_test_file)
from bird_jax.evaluation.report import load_paper_table, markdown, write_report
from bird_jax.exit_codes import BadInput, refusing
from bird_jax.manifest import Manifest, files_under, key_of, sha256_of
from bird_jax.vocabulary import TASKS


@dataclasses.dataclass
class EvalResult:
  scores: dict[str, TaskScores]
  paths: dict[str, str]
  markdown: str


def config_tuple(c: ml_collections.ConfigDict, field: str, allowed: Sequence[str] = ()
                 ) -> tuple:
  """A tuple field of the config, each item checked against `allowed` (when given)."""
  value = c[field]
  items = (value,) if isinstance(value, (str, int)) else tuple(value)
  for item in items:
    if allowed and item not in allowed:
      raise BadInput(f"config.{field}: {item!r} is not one of {tuple(allowed)} (a tuple "
                     f"field takes the flag once per item: --config.{field}={allowed[0]} "
                     f"--config.{field}={allowed[-1]})")
  return items


def scoring_options(c: ml_collections.ConfigDict) -> ScoringOptions:
  return ScoringOptions(meteor=c.meteor, spice=c.spice, workers=c.workers)


def image_finder(c: ml_collections.ConfigDict, data: str | None) -> ImageFinder | None:
  roots = list(config_tuple(c, "images"))
  if data:  # datagen writes OUT/medgrit/test_*.json beside OUT/images/
    roots += [data, os.path.join(data, "images"), os.path.join(data, os.pardir, "images")]
  return ImageFinder(roots) if roots else None


def score_predictions(c: ml_collections.ConfigDict, task: str, path: str,
                      pf: PredictionFile) -> TaskScores:
  """The scores of a prediction file read from `path`, as audit mode reports them (the lines
  reading had to repair are noted)."""
  s = score_task(task, pf.predictions, scoring_options(c))
  s.notes += [f"{path}: {n} line(s) with {problem}" for problem, n in pf.repaired.items()]
  return s


def new_manifest(c: ml_collections.ConfigDict, out: str, mesh=None) -> Manifest:
  """The eval's manifest (written by `finish`); each eval replaces the folder's."""
  return Manifest(out, "eval", json.loads(c.to_json_best_effort()), write=False,
                  mesh=None if mesh is None else dict(mesh.shape))


def finish(c: ml_collections.ConfigDict, out: str,
           results: dict[str, tuple[list[Prediction], TaskScores]],
           find_image: ImageFinder | None, title: str, source: dict[str, Any],
           record: Manifest, predictions: dict[str, str]) -> EvalResult:
  """Report, plots and gallery for scored tasks; `source` (what was scored) goes into
  report.json; the manifest `record` gets the outputs' hashes and `predictions` (task ->
  file scored), and is written."""
  from bird_jax.evaluation.gallery import write_gallery

  scores = {t: s for t, (_, s) in results.items()}
  paths = write_report(scores, out, paper_table=load_paper_table(c.paper_table), title=title,
                       source=source)
  if c.gallery > 0:
    paths["gallery"] = write_gallery(os.path.join(out, "gallery"), results, find_image,
                                     per_task=c.gallery)
  record.data["predictions"] = {t: key_of(out, p) for t, p in predictions.items()}
  record.hash_now("outputs", "report", [paths["json"], paths["markdown"]])
  record.hash_now("outputs", "plots", [v for k, v in paths.items() if k.startswith("plot_")])
  if "gallery" in paths:
    record.hash_now("outputs", "gallery", files_under(os.path.dirname(paths["gallery"])))
  unscorable = sorted(t for t, s in scores.items() if s.unscorable)
  record.close(outcome=f"nothing scored: {', '.join(unscorable)}" if unscorable else "done")
  return EvalResult(scores, paths, markdown(scores, title))


def audit(c: ml_collections.ConfigDict, files: Sequence[str], tasks: Sequence[str], out: str
          ) -> EvalResult:
  """Scores existing prediction files, each paired with its task."""
  if len(files) != len(tasks):
    raise BadInput(f"--predictions names {len(files)} file(s) but --task {len(tasks)} task(s); "
                   "give one task per file")
  for t in tasks:
    if t not in TASKS:
      raise BadInput(f"--task {t!r}: tasks are {TASKS}")
  read = []
  for path in files:
    with refusing(ValueError, OSError):  # the messages name the file (and the line)
      read.append(read_predictions(path))
  record = new_manifest(c, out)
  record.hash_now("inputs", "predictions", files)
  results = {t: (pf.predictions, score_predictions(c, t, path, pf))
             for path, t, pf in zip(files, tasks, read)}
  source = {"mode": "audit", "predictions": {
      t: {"path": os.path.abspath(p), "sha256": sha256_of(p)} for p, t in zip(files, tasks)}}
  return finish(c, out, results, image_finder(c, None), f"Audit of {', '.join(files)}", source,
                record, dict(zip(tasks, files)))


def spread_subset(items: list, n: int) -> list:
  """`n` items evenly spread over `items` (test files are grouped by modality: a prefix would
  cover only the first few)."""
  if n >= len(items):
    return items
  return [items[i * len(items) // n] for i in range(n)]


def check_images(samples: dict[str, list], find_image: ImageFinder) -> None:
  """Every image of every sample's question is found (BadInput naming the missing ones),
  before any work."""
  for t, items in samples.items():
    paths = {p for s in items for p in find_image_paths(s.question) or [s.image]}
    missing = sorted(p for p in paths if not image_exists(find_image, p))
    if missing:
      raise BadInput(f"{t}: {len(missing)} image(s) not found, e.g. {missing[:5]} (searched "
                     f"{[str(r) for r in find_image.roots]}; --config.images adds a folder)")


def model_eval(c: ml_collections.ConfigDict, ckpt: str, data: str, out: str) -> EvalResult:
  """Generates predictions for the test files of `data` with the checkpoint, then scores them."""
  import jax

  from bird_jax import distributed
  from bird_jax.checkpoint.orbax import step_files
  from bird_jax.config import get_preset
  from bird_jax.evaluation.runner import RunOptions, make_generator, predict
  from bird_jax.manifest import files_under
  from bird_jax.pretrained import (checkpoint_step, is_hf_folder, load_hf_model, load_model,
                                   manager_root)
  from bird_jax.sharding import make_mesh
  from bird_jax.tokenizer import load_tokenizer

  tasks = config_tuple(c, "tasks", TASKS)
  with refusing(ValueError, OSError):  # the messages name the folder or file
    files = find_test_files(data, tasks)
    samples = {t: read_test_file(f) for t, f in files.items()}
  if c.limit > 0:
    samples = {t: spread_subset(s, c.limit) for t, s in samples.items()}
  find_image = image_finder(c, data)
  check_images(samples, find_image)
  distributed.initialize()
  mesh = make_mesh(**c.mesh.to_dict())
  with refusing(KeyError, where="config.model_preset"):
    override = get_preset(c.model_preset) if c.model_preset else None
  hf_folder = is_hf_folder(ckpt)
  with refusing(ValueError, OSError):  # named by the messages; NaN/inf weights keep exit 4
    if hf_folder and (override or c.step >= 0):
      raise ValueError(f"--ckpt {ckpt} is an HF folder: its config.json gives the model and it "
                       "has no steps (leave config.model_preset and config.step unset)")
    step = None if hf_folder else checkpoint_step(ckpt, None if c.step < 0 else c.step)
    with jax.set_mesh(mesh):
      if hf_folder:
        cfg, model = load_hf_model(ckpt, mesh, dtype=c.dtype or None, progress=True)
      else:
        cfg, model = load_model(ckpt, mesh, step=step, cfg=override, dtype=c.dtype or None,
                                progress=True)
    tok = load_tokenizer(cfg, hf_dir=ckpt if hf_folder else None)
  opts = RunOptions(batch_size=c.batch_size, max_new_tokens=dict(c.max_new_tokens.to_dict()),
                    min_new_tokens=c.min_new_tokens, temperature=c.temperature, top_p=c.top_p,
                    seed=c.seed, buckets=tuple(int(b) for b in config_tuple(c, "buckets")))
  gen = make_generator(model, cfg, tok, opts, mesh)
  results, written = {}, {}
  lead = distributed.is_lead()  # every process generates (each device its rows of a batch)
  record = new_manifest(c, out, mesh) if lead else None
  if lead:  # the weights are hashed while the model generates
    record.hash_later("inputs", "checkpoint", files_under(ckpt) if hf_folder
                      else step_files(manager_root(ckpt), step))
    record.hash_now("inputs", "test_files", [files[t] for t in tasks])
  for t in tasks:
    preds = predict(t, samples[t], gen, tok, cfg, find_image, opts, progress=lead)
    if not lead:  # one process writes and scores
      continue
    path = os.path.join(out, "predictions", f"{t}.jsonl")
    write_predictions(path, preds)
    written[t] = {"path": os.path.abspath(path), "sha256": sha256_of(path),
                  "test_file": os.path.abspath(files[t]), "samples": len(preds)}
    results[t] = (preds, score_task(t, preds, scoring_options(c)))
  title = f"Evaluation of {ckpt} on {data}"
  if not lead:
    return EvalResult({}, {}, f"(process {jax.process_index()}: process 0 writes the report)")
  source = {"mode": "model", "checkpoint": os.path.abspath(ckpt), "step": step,
            "data": os.path.abspath(data), "limit": int(c.limit), "predictions": written}
  record.hash_now("outputs", "predictions", [w["path"] for w in written.values()])
  return finish(c, out, results, find_image, title, source, record,
                {t: w["path"] for t, w in written.items()})


def run(c: ml_collections.ConfigDict, *, ckpt: str = "", data: str = "",
        predictions: Sequence[str] = (), task: Sequence[str] = (), out: str = "") -> EvalResult:
  out = out or c.out
  if predictions:
    if ckpt or data:
      raise BadInput("give either --predictions/--task (audit mode) or --ckpt/--data "
                     "(model mode), not both")
    if not task:
      raise BadInput("audit mode needs --task (vg, roc, rc or mia) for --predictions")
    return audit(c, predictions, task, out)
  if not ckpt or not data:
    raise BadInput("model mode needs --ckpt (an Orbax checkpoint, a workdir or an HF folder) and "
                   "--data (the folder of per-task test files); audit mode needs --predictions "
                   "and --task")
  return model_eval(c, ckpt, data, out)


def main(config: ml_collections.ConfigDict, flags: Any) -> int:
  """Exit codes (bird_jax/exit_codes.py): 0 scored, 6 some task had nothing to score (the
  report says why); what it raises carries its own (2 refused input, 4 the checkpoint's
  weights are not finite; bird_jax/cli.py reports them)."""
  from bird_jax import exit_codes

  result = run(config, ckpt=flags.ckpt, data=flags.data, predictions=flags.predictions,
               task=flags.task, out=flags.out)
  print(result.markdown)
  print("written: " + ", ".join(f"{k}={v}" for k, v in result.paths.items()))
  unscorable = {t: s.unscorable for t, s in result.scores.items() if s.unscorable}
  for t, why in unscorable.items():
    print(f"eval.py: warning: {t}: nothing scored: {why}", file=sys.stderr)
  return exit_codes.NOTHING_SCORED if unscorable else exit_codes.OK
