"""datagen end to end with the template backend: every box in every conversation is a box of
the record's meta (and those are the boxes of the source masks), output identical for 1 and
2 workers and after resuming, case-level split, negatives, varied phrasings, Med-GRIT files,
publication all at once (a crash mid-way leaves the previous set or none, and the next run
finishes it; only host 0 withdraws), and the records load through the Grain training
pipeline."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from bird_jax import manifest as M
from bird_jax.boxes import parse_boxes, quantize_box
from bird_jax.data.medgrit import import_medgrit_json
from bird_jax.data.records import ImageRoot
from bird_jax.vocabulary import TASKS
from bird_jax.data.shards import read_shards
from bird_jax.vocabulary import MODALITIES
from bird_jax_testing.tools import exit_code
from datagen.cli import main
from datagen.language import modality_name
from datagen.config import GenConfig
from datagen.meta import objects_from_instances
from datagen import publish as publish_lib
from datagen import run as run_lib
from datagen.publish import recover_publication
from datagen.run import ConfigMismatch, TooManyFallbacks, generate
from datagen.sources.base import ImageRef
from datagen.sources.phantom import PhantomSource
from datagen.sources.phantom_specs import SPECS
from datagen.stages import staged_folder
from datagen.writer import chunk_name, chunk_shard

CFG = dict(source="phantom", num_images=120, image_size=48, chunk_size=16, progress=False,
           test_fraction=0.2)


def files_of(out: Path) -> dict[str, bytes]:
  """The run's files, less its resume state and the records of how it ran (timings, hosts)."""
  return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
          if p.is_file() and ".work" not in p.parts
          and p.name not in ("summary.json", "manifest.json")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  base = tmp_path_factory.mktemp("datagen")
  one = generate(GenConfig(out=str(base / "w1"), workers=1, **CFG))
  two = generate(GenConfig(out=str(base / "w2"), workers=2, **CFG))
  return base, one, two


@pytest.fixture(scope="module")
def records(runs):
  base, _, _ = runs
  return {side: list(read_shards(base / "w1" / side)) for side in ("train", "test")}


def test_output_does_not_depend_on_the_number_of_workers(runs):
  base, one, two = runs
  a, b = files_of(base / "w1"), files_of(base / "w2")
  assert a.keys() == b.keys() and a == b
  assert {k.split("/")[0] for k in a} == {"train", "test", "medgrit", "images"}
  assert one["per_task"] == two["per_task"] and one["images"] == two["images"]


def test_every_box_is_a_meta_box_and_meta_boxes_come_from_the_masks(records):
  src = PhantomSource(seed=0, image_size=48, num_images=120, slice_stride=3)
  n_boxes = 0
  for rec in records["train"] + records["test"]:
    rec.validate()
    known = {quantize_box(o.box) for o in rec.objects}
    for turn in rec.conversations:
      parsed = parse_boxes(turn.value)
      assert parsed.ok, (rec.id, turn.value)
      for b in parsed.boxes:
        assert b.tagged and tuple(int(v) for v in b.coords) in known, (rec.id, turn.value)
        n_boxes += 1
    case = int(rec.case_id.removeprefix("case"))
    sl = int(rec.id.rsplit("_", 1)[1]) if not rec.id.endswith("2d_none") else None
    ref = ImageRef(rec.id, rec.modality, rec.dataset, rec.case_id, sl, {"case": case})
    objs, _, _ = objects_from_instances(src.load(ref).instances)
    assert [(o.label, o.box) for o in objs] == [(o.label, o.box) for o in rec.objects]
    assert rec.image_bytes == src.image_bytes(ref)
    assert rec.image == rec.id + ".png" and rec.id.split("_")[0] == rec.modality
  assert n_boxes > 400


def test_split_is_by_case_and_near_the_fraction(runs, records):
  _, summary, _ = runs
  cases = {side: {(r.dataset, r.case_id) for r in recs} for side, recs in records.items()}
  assert cases["train"] and cases["test"] and not cases["train"] & cases["test"]
  n_test, n = len(records["test"]), len(records["train"]) + len(records["test"])
  assert abs(n_test / n - 0.2) < 0.06
  assert summary["images"]["written"] == n and summary["images"]["test"] == n_test
  assert set(summary["split"]["test"]["images_per_modality"]) == set(MODALITIES)


def test_turns_tasks_negatives_and_phrasings(runs, records):
  _, summary, _ = runs
  recs = records["train"] + records["test"]
  tasks = Counter(t for r in recs for t in r.tasks)
  negatives = 0
  questions: dict[str, set] = {t: set() for t in TASKS}
  for r in recs:
    assert r.conversations[0].value.startswith(f"Picture 1: <img>{r.image}</img>\n")
    assert r.caption and r.provenance.backend == "template"
    labels = {o.label for o in r.objects}
    for k, task in enumerate(r.tasks):
      q, a = r.conversations[2 * k].value, r.conversations[2 * k + 1].value
      if task == "vg" and not parse_boxes(a).boxes:
        negatives += 1
        absent = max((l.name for l in SPECS[r.modality].labels if l.name in q), key=len)
        assert absent not in labels and absent in a and re.search(r"\b(no|not)\b", a, re.IGNORECASE)
        continue
      if task == "roc":
        label = a.rstrip(".").lower()
        assert label in labels
      q = re.sub(r"<box>.*?</box>", "B", q.split("\n", 1)[-1])
      for label in sorted(labels, key=len, reverse=True):
        q = q.replace(label, "X")
      questions[task].add(q.replace(modality_name(r.modality), "M"))
  total = sum(len(r.tasks) for r in recs)
  assert sum(summary["per_task"].values()) == total
  assert summary["per_task"]["vg_negative"] == negatives
  assert negatives > 0.1 * len(recs) and tasks["mia"] == len(recs) and tasks["roc"] == len(recs)
  assert [len(questions[t]) for t in TASKS] == [8, 8, 6, 6]  # every phrasing is used


def test_medgrit_json_files(runs, records):
  base, summary, _ = runs
  out = base / "w1"
  train = import_medgrit_json(out / "medgrit" / "train.json",
                              image_root=ImageRoot(str(out / "images")))
  assert [r.conversations for r in train] == [r.conversations for r in records["train"]]
  assert [(r.width, r.height) for r in train] == [(48, 48)] * len(train)
  for task, name in (("vg", "VG"), ("roc", "ROC"), ("rc", "RC"), ("mia", "MIA")):
    entries = json.loads((out / "medgrit" / f"test_{name}.json").read_text())
    expect = [(r.id, k) for r in records["test"] for k, t in enumerate(r.tasks)
              if t == task and (t != "vg" or parse_boxes(r.conversations[2 * k + 1].value).boxes)]
    assert len(entries) == len(expect) == summary["files"][f"test_{name}.json"]
    for e, (rid, k) in zip(entries, expect):
      rec = next(r for r in records["test"] if r.id == rid)
      assert len(e["conversations"]) == 2 and e["id"] == rid
      assert e["conversations"][0]["value"].startswith(f"Picture 1: <img>{rid}.png</img>\n")
      assert e["conversations"][1]["value"] == rec.conversations[2 * k + 1].value


def test_resume_after_losing_chunks_gives_the_same_files(runs, tmp_path):
  base, _, _ = runs
  out = tmp_path / "resumed"
  shutil.copytree(base / "w1", out)
  work = out / ".work"
  for p in sorted((work / "text").glob("chunk-*.json"))[1::2]:
    k = p.stem.split("-")[1]
    p.unlink()
    for side in ("train", "test"):
      chunk_shard(out / side, chunk_name(side, int(k))).unlink(missing_ok=True)
  (work / "meta" / "chunk-00003.json").unlink()
  (out / "train" / ".train-c00001-00000-of-00001.array_record.tmp999").write_bytes(b"partial")
  shutil.rmtree(out / "medgrit")
  generate(GenConfig(out=str(out), workers=1, **CFG))
  assert files_of(out) == files_of(base / "w1")
  with pytest.raises(ConfigMismatch, match="seed"):
    generate(GenConfig(out=str(out), workers=1, **{**CFG, "seed": 1}))


def test_hosts_sharing_the_output_split_the_chunks(runs, tmp_path):
  base, _, _ = runs
  out = str(tmp_path / "hosts")

  def host(i):
    return generate(GenConfig(out=out, workers=1, host_index=i, host_count=2, **CFG))

  first = host(1)
  assert first["status"] == "incomplete" and first["stage"] == "meta"
  assert first["missing_chunks"] == list(range(0, len(first["missing_chunks"]) * 2, 2))
  second = host(0)
  assert second["status"] == "incomplete" and second["stage"] == "text"
  assert host(1)["status"] == "host_done"
  assert host(0)["images"]["written"] > 100
  assert files_of(tmp_path / "hosts") == files_of(base / "w1")


def shard_files(out: Path) -> dict[str, bytes]:
  return {k: v for k, v in files_of(out).items() if k.split("/")[0] in ("train", "test")}


def crash_after(n: int):
  """A stand-in for publish._place_shard that places `n` shards, then fails as a killed run would."""
  place, placed = publish_lib._place_shard, []

  def place_then_crash(src, dst):
    if len(placed) == n:
      raise KeyboardInterrupt("killed while publishing")
    place(src, dst)
    placed.append(dst)
  return place_then_crash


def test_a_crash_while_publishing_leaves_no_partial_set_and_a_rerun_publishes_all(
    runs, tmp_path, monkeypatch):
  base, _, _ = runs
  out = tmp_path / "crashed"
  cfg = GenConfig(out=str(out), workers=1, **CFG)
  monkeypatch.setattr(publish_lib, "_place_shard", crash_after(1))
  with pytest.raises(KeyboardInterrupt):
    generate(cfg)  # the first publication: nothing was published before
  assert not (out / "train").exists() and not (out / "test").exists()
  assert not (out / "summary.json").exists() and (out / ".train.publishing").is_dir()
  monkeypatch.undo()
  generate(cfg)
  assert files_of(out) == files_of(base / "w1")
  assert sorted(p.name for p in out.iterdir()) == sorted(
      ["train", "test", "medgrit", "images", "summary.json", "manifest.json", ".work"])
  assert not list(staged_folder(out / ".work", "train").iterdir())  # all published


def test_a_crash_while_republishing_leaves_the_previous_set_or_none(runs, tmp_path, monkeypatch):
  """Chunks generated again replace published ones: killed while the new set is assembled,
  OUT/train is the previous set, whole; killed between the two renames, it is absent (never a
  part of a set); either way the next run publishes every shard."""
  base, _, _ = runs
  out = tmp_path / "republished"
  shutil.copytree(base / "w1", out)
  previous = shard_files(out)
  cfg = GenConfig(out=str(out), workers=1, **CFG)

  def redo_chunks():
    for p in sorted((out / ".work" / "text").glob("chunk-*.json"))[::3]:
      p.unlink()

  redo_chunks()
  monkeypatch.setattr(publish_lib, "_place_shard", crash_after(3))
  with pytest.raises(KeyboardInterrupt):
    generate(cfg)
  assert shard_files(out) == previous and (out / "summary.json").exists()
  monkeypatch.undo()

  replace = os.replace

  def crash_renaming_in(src, dst):
    if Path(src).name == ".train.publishing":
      raise KeyboardInterrupt("killed between the renames")
    replace(src, dst)

  redo_chunks()
  monkeypatch.setattr(os, "replace", crash_renaming_in)
  with pytest.raises(KeyboardInterrupt):
    generate(cfg)
  monkeypatch.undo()
  assert not (out / "train").exists() and (out / ".train.replaced").is_dir()
  assert shard_files(out) == {k: v for k, v in previous.items() if k.startswith("test/")}
  generate(cfg)
  assert files_of(out) == files_of(base / "w1")
  assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != ".work"]


def test_recovery_finishes_or_undoes_each_step_of_a_publication(tmp_path):
  def folder(path: Path, *names: str) -> Path:
    path.mkdir(parents=True)
    for n in names:
      (path / n).write_text(f"{path.name}/{n}")
    return path

  def names(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())

  cases = {  # what a crash left -> train/ afterwards
      "assembling": ({"train": ["a", "b"], ".train.publishing": ["a"]}, ["a", "b"], "train/a"),
      "between the renames": ({".train.replaced": ["a"], ".train.publishing": ["a", "b"]},
                              ["a", "b"], ".train.publishing/a"),
      "deleting the old": ({"train": ["a", "b"], ".train.replaced": ["a"]}, ["a", "b"],
                           "train/a"),
      "renamed aside only": ({".train.replaced": ["a"]}, ["a"], ".train.replaced/a"),
  }
  for what, (left, want, content) in cases.items():
    out = tmp_path / what.replace(" ", "_")
    for name, files in left.items():
      folder(out / name, *files)
    recover_publication(out, out / ".work")
    assert names(out) == ["train"] and names(out / "train") == want, what
    assert (out / "train" / "a").read_text() == content, what
  out = tmp_path / "withdrawing"
  folder(out / ".train.withdrawn", "a", "b")
  folder(staged_folder(out / ".work", "train"), "b")  # staged since: newer, it stays
  recover_publication(out, out / ".work")
  assert names(out) == [".work"]
  staged = staged_folder(out / ".work", "train")
  assert names(staged) == ["a", "b"] and (staged / "b").read_text() == "train/b"


def test_only_host_0_withdraws_a_refused_run(runs, tmp_path, monkeypatch):
  base, _, _ = runs
  out = tmp_path / "refused"
  shutil.copytree(base / "w1", out)
  published = files_of(out)

  def refuse(cfg, stats):
    raise TooManyFallbacks("too many fallbacks")

  monkeypatch.setattr(run_lib, "check_fallbacks", refuse)
  with pytest.raises(TooManyFallbacks):
    generate(GenConfig(out=str(out), workers=1, host_index=1, host_count=2, **CFG))
  assert files_of(out) == published and (out / "summary.json").exists()  # untouched
  with pytest.raises(TooManyFallbacks):
    generate(GenConfig(out=str(out), workers=1, **CFG))
  assert sorted(p.name for p in out.iterdir()) == [".work", "images", "manifest.json"]
  assert not M.read(out)["outputs"]  # the manifest names nothing published
  assert M.read(out)["segments"][-1]["outcome"] == "refused: too many template fallbacks"
  for side in ("train", "test"):
    assert sorted(p.name for p in staged_folder(out / ".work", side).iterdir()) == sorted(
        k.split("/")[1] for k in published if k.startswith(f"{side}/"))
  monkeypatch.undo()
  generate(GenConfig(out=str(out), workers=1, **CFG))
  assert files_of(out) == published


def test_records_load_through_the_training_pipeline(runs):
  from bird_jax.config import get_preset
  from bird_jax.data.pipeline import DataConfig, make_dataset
  base, _, _ = runs
  ds = make_dataset(DataConfig(shards=str(base / "w1" / "train"), batch_size=4, max_len=1024,
                               num_epochs=1, shuffle=False), get_preset("tiny"),
                    process_index=0, process_count=1)
  it = iter(ds)
  batch = next(it)
  assert batch["images"].shape[0] == 4 and batch["images"].shape[-3:] == (56, 56, 3)
  assert batch["tokens"].shape == (4, 1024)
  assert it.stats["bad_records"] == 0 and it.stats["samples"] >= 4


def test_cli(tmp_path, capsys):
  out = tmp_path / "cli"
  assert main(["--source", "phantom", "--out", str(out), "--num-images", "16", "--image-size",
               "32", "--workers", "1", "--no-progress", "--test-fraction", "0.25"]) == 0
  printed = capsys.readouterr().out
  assert "datagen: phantom -> " in printed and "test_VG.json" in printed
  summary = json.loads((out / "summary.json").read_text())
  assert summary["images"]["written"] == len(list((out / "images").iterdir()))
  assert exit_code(main, ["--source", "phantom", "--out", str(out), "--num-images", "17",
                          "--image-size", "32", "--no-progress", "--test-fraction", "0.25"]) == 2
  assert "other options (differing: num_images)" in capsys.readouterr().err
  assert exit_code(main, ["--source", "samed2d", "--out", str(tmp_path / "x")]) == 2
  assert "--root" in capsys.readouterr().err
