"""eval.py: audit mode on hand-computed prediction files (through the real CLI), model mode end
to end on a tiny random checkpoint, test-file discovery, prediction-file tolerance, report and
gallery outputs."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from bird_jax.evaluation import cli
from bird_jax.evaluation.config import default_config as get_config
from bird_jax.evaluation.gallery import pick_samples
from bird_jax.evaluation.predictions import (Prediction, PredictionFileError, read_predictions,
                                             write_predictions)
from bird_jax.evaluation.scoring import constant_answer, score_task
from bird_jax.evaluation.testsets import (EvalDataError, ImageFinder, find_test_files,
                                          read_test_file, task_of_filename)
from bird_jax.metrics.postprocess import postprocess_response
from bird_jax.metrics.text import caption_scores_by_modality
from bird_jax.vocabulary import TASKS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def B(x1, y1, x2, y2):
  return f"<box>({x1},{y1}),({x2},{y2})</box>"


# (image, annotation, raw response): every rule of docs/evaluation.md that VG/ROC scoring applies
VG_CASES = [
  ("ct_a.png", "<ref>liver</ref>" + B(100, 100, 300, 300),
   "<ref>liver</ref>" + B(100, 100, 300, 300) + "<|endoftext|>"),  # hit
  ("ct_c.png", "<ref>kidneys</ref>" + B(0, 0, 100, 100) + B(10, 0, 110, 100),
   "<ref>kidneys</ref>" + B(0, 0, 100, 100)),  # one box, IoU 1 and 0.818: BiRD 2 hits, strict 1
  ("mr_a.png", B(100, 100, 300, 300), ""),  # empty response
  ("mr_b.png", B(100, 100, 300, 300), "garbage <box>(a,b),(c,d)</box>"),  # unparseable
  ("mr_c.png", B(100, 100, 300, 300), B(300, 300, 100, 100)),  # inverted: IoU 0
  ("mr_d.png", B(0, 0, 100, 100), B(0, 0, 100, 50)),  # IoU exactly 0.5: BiRD miss, strict hit
  ("x_a.png", B(100, 100, 300, 300), "<box>(100, 100), (300, 300)</box>"),  # spaces: float() ok
  ("x_b.png", B(100, 100, 300, 300), "at (100,100),(300,300)"),  # bare-coordinate fallback
  ("x_c.png", "No object.", B(1, 1, 2, 2)),  # no reference box: skipped
  ("pet_a.png", B(100, 100, 300, 300), "<box>(99999999,0),(1e400,5)</box>"),  # absurd
  ("foo_a.png", B(100, 100, 300, 300), B(100, 100, 300, 300)),  # unknown modality prefix
  ("ct_d.png", B(100, 100, 300, 300),  # post-processing: cut at ".<|im_end|>" keeping the dot
   "It is at " + B(100, 100, 300, 300) + ".<|im_end|>\n<|im_start|>user\n" + B(0, 0, 1, 1)),
]
ROC_CASES = [
  ("ct_1.png", "kidney", "The kidneys.<|im_end|>\n"),  # substring of a longer word
  ("ct_2.png", "left kidney", "kidney left"),  # every token, any order
  ("mr_1.png", "Edema", "edema"),  # lower-cased
  ("mr_2.png", "tumor.", "tumor"),  # punctuation stuck to a token must appear
  ("x_1.png", "lung", ""),  # empty response
  ("endoscopy_1.png", "polyp", "\nthe polyp\n"),  # text between the first two newlines
  ("dermoscopy_1.png", "lesion", "a\n\nlesion"),  # "a\n\nb" -> ""
]


def write_cases(path, cases, question="Where is it?"):
  write_predictions(path, [Prediction(f"s{i}", im, question, a, r)
                           for i, (im, a, r) in enumerate(cases)])


@pytest.fixture(scope="module")
def audit_run(tmp_path_factory):
  """eval.py itself (a subprocess: flags, config file, overrides) on VG + ROC files."""
  d = tmp_path_factory.mktemp("audit")
  write_cases(d / "vg.jsonl", VG_CASES)
  write_cases(d / "roc.jsonl", ROC_CASES, "What is at <box>(1,2),(300,400)</box>?")
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "eval.py"), f"--predictions={d / 'vg.jsonl'},"
       f"{d / 'roc.jsonl'}", "--task=vg,roc", f"--out={d / 'out'}", "--config.gallery=20"],
      capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return d / "out", proc.stdout


@pytest.mark.heavy
def test_audit_vg_by_hand(audit_run):
  out, stdout = audit_run
  rep = json.loads((out / "report.json").read_text())
  vg = rep["tasks"]["vg"]
  # hits / targets by hand: ct: ct_a 1/1, ct_c 2/2, ct_d 1/1 -> 4/4; mr: 0/4;
  # x: 2/2 (x_c skipped); pet: 0/1
  assert vg["details"]["targets"] == {"ct": 4, "mr": 4, "x": 2, "pet": 1, "endoscopy": 0,
                                      "dermoscopy": 0, "fundus": 0, "ultrasound": 0}
  assert vg["details"]["hits"]["ct"] == 4 and vg["details"]["hits"]["mr"] == 0
  assert vg["bird"]["ct"] == pytest.approx(100 * 4 / (4 + 1e-8), abs=1e-9)
  assert vg["bird"]["x"] == pytest.approx(100.0, abs=1e-6) and vg["bird"]["pet"] == 0.0
  assert vg["bird"]["endoscopy"] is None  # absent (counts 0 in the mean)
  assert vg["bird_mean_script"] == pytest.approx(100 * 2 / 8, abs=1e-6)  # (1 + 0 + 1 + 0) / 8
  # corrected: ct_c gives 1 of 2 (one-to-one), mr_d hits at IoU == 0.5
  assert vg["corrected"]["ct"] == pytest.approx(75.0) and vg["corrected"]["mr"] == 25.0
  assert vg["corrected_mean_present"] == pytest.approx((75 + 25 + 100 + 0) / 4)
  assert vg["corrected_micro"] == pytest.approx(100 * 6 / 11)
  assert vg["counts"] == {"ct": 3, "mr": 4, "x": 2, "pet": 1, "endoscopy": 0, "dermoscopy": 0,
                          "fundus": 0, "ultrasound": 0}
  assert vg["details"]["skipped_no_reference_box"]["x"] == 1 and vg["unknown_modality"] == 1
  assert any("foo_a.png" in n for n in vg["notes"])
  assert "| VG (Recall@0.5) | 100.00 | 0.00 | 100.00 | 0.00 | - |" in stdout


@pytest.mark.heavy
def test_audit_roc_by_hand(audit_run):
  out, _ = audit_run
  rep = json.loads((out / "report.json").read_text())
  roc = rep["tasks"]["roc"]
  assert roc["bird"] == {"ct": 100.0, "mr": 50.0, "x": 0.0, "pet": None, "endoscopy": 100.0,
                         "dermoscopy": 0.0, "fundus": None, "ultrasound": None}
  assert roc["bird_mean_script"] == pytest.approx(100 * 2.5 / 8)  # BiRD's script
  assert roc["paper_mean"] == pytest.approx(100 * 2.5 / 6)  # the paper's 6 ROC modalities
  assert roc["corrected_mean_present"] == pytest.approx(50.0)
  assert roc["corrected_micro"] == pytest.approx(100 * 4 / 7)
  t3 = rep["table3_bird_compatible"]
  assert t3["rows"]["roc"]["average"] == pytest.approx(100 * 2.5 / 6)
  # Average row: per modality over the tasks present; corner: mean of the task averages
  assert t3["average"]["mr"] == pytest.approx(25.0) and t3["average"]["pet"] == 0.0
  assert t3["average"]["endoscopy"] == 100.0 and t3["average"]["fundus"] is None
  assert t3["average"]["average"] == pytest.approx((25.0 + 100 * 2.5 / 6) / 2)
  assert roc["baseline"]["answer"] == "kidney"  # the most frequent class, first seen on ties
  # "kidney" answers ct_1 but not "left kidney" (ct_2); no mr sample is a kidney
  assert roc["baseline"]["bird"]["ct"] == 50.0 and roc["baseline"]["bird"]["mr"] == 0.0


@pytest.mark.heavy
def test_audit_outputs(audit_run):
  out, _ = audit_run
  md = (out / "report.md").read_text()
  assert "## Corrected variants (not BiRD-compatible" in md and "| Average |" in md
  for task in ("vg", "roc"):
    with Image.open(out / "plots" / f"{task}.png") as im:
      assert im.size[0] > 500
  html = (out / "gallery" / "index.html").read_text()
  assert html.count("class='card'") == len(VG_CASES) + len(ROC_CASES)
  assert "&lt;box&gt;(100, 100), (300, 300)&lt;/box&gt;" in html  # escaped Q/A text
  assert len(list((out / "gallery").glob("*.png"))) == len(VG_CASES) + len(ROC_CASES)


def test_audit_errors_are_clear(tmp_path):
  c = get_config()
  with pytest.raises(ValueError, match="audit mode needs --task"):
    cli.run(c, predictions=["x.jsonl"])
  with pytest.raises(ValueError, match="model mode needs --ckpt"):
    cli.run(c, data="somewhere")
  c.tasks = ("vg,roc",)  # what --config.tasks=vg,roc parses to
  with pytest.raises(ValueError, match=r"config.tasks: 'vg,roc' is not one of .* once per item"):
    cli.config_tuple(c, "tasks", TASKS)
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"image": "ct_1.png", "annotation": "a", "response": "b"}\nnot json\n')
  with pytest.raises(PredictionFileError, match=r"bad.jsonl:2: not valid JSON"):
    read_predictions(bad)


def test_prediction_file_tolerance(tmp_path):
  path = tmp_path / "p.jsonl"
  path.write_text("\n".join([
      json.dumps({"id": "a", "image": "ct_1.png", "question": "q", "annotation": "liver",
                  "response": None}),
      json.dumps({"image": "mr_1.png", "annotation": "x", "response": 12}),
      "", json.dumps({"id": "c", "image": "x_1.png", "annotation": "lung", "response": "Lung"})]))
  pf = read_predictions(path)
  assert [p.response for p in pf.predictions] == ["", "12", "Lung"]
  assert pf.predictions[1].id == "line2"
  assert pf.repaired == {"missing or non-string response (scored as empty)": 1,
                         "missing question": 2, "missing id (line number used)": 1}
  s = score_task("roc", pf.predictions)
  assert s.bird["ct"] == 0.0 and s.bird["x"] == 1.0


def test_caption_tasks_use_the_metrics_modules():
  preds = [Prediction("m0", "ct_1.png", "q", "The liver is enlarged with a small lesion.",
                      "The liver shows a small lesion.<|im_end|>\n<|im_start|>"),
           Prediction("m1", "ct_2.png", "q", "A CT scan of the abdomen showing the kidneys.",
                      "CT of the abdomen with both kidneys."),
           Prediction("m2", "mr_1.png", "q", "An MRI of the brain with a tumor.", "")]
  direct = caption_scores_by_modality([p.image for p in preds], [p.annotation for p in preds],
                                      [postprocess_response(p.response) for p in preds])
  mia = score_task("mia", preds)
  assert mia.bird["ct"] == direct.per_modality["ct"].mbmr and mia.bird["mr"] == 0.0
  assert mia.bird["x"] is None and mia.bird_mean == direct.mean["mBMR"]
  rc = score_task("rc", preds)
  if rc.details["spice_status"] == "SPICE available":
    assert rc.bird["ct"] == direct_rc_spice(preds)
  else:  # never reported as SPICE: the cells stay empty, the approximation is labelled
    assert rc.bird["ct"] is None and rc.bird_mean is None
    assert any("NOT SPICE" in n for n in rc.notes)
    assert rc.details["per_modality"]["ct"]["SPICE-approx (content-word F1, not SPICE)"] > 0


def direct_rc_spice(preds):
  refs = [p.annotation for p in preds if p.image.startswith("ct_")]
  hyps = [postprocess_response(p.response) for p in preds if p.image.startswith("ct_")]
  return caption_scores_by_modality(["ct_0.png"] * len(refs), refs, hyps,
                                    spice="java").per_modality["ct"].spice


def test_constant_answers_by_hand():
  vg = constant_answer("vg", [B(0, 0, 100, 100), "none", B(100, 100, 300, 300)])
  assert vg == B(50, 50, 200, 200)
  assert constant_answer("roc", ["Liver", "kidney", "liver "]) == "liver"


def test_limit_spreads_over_the_whole_test_file():
  grouped = [f"{m}-{i}" for m in ("ct", "mr", "x", "pet") for i in range(25)]
  picked = cli.spread_subset(grouped, 8)
  assert len(picked) == 8 and len(set(picked)) == 8
  assert {p.split("-")[0] for p in picked} == {"ct", "mr", "x", "pet"}
  assert cli.spread_subset(grouped[:5], 8) == grouped[:5]


def test_test_files_are_found_by_task_words(tmp_path):
  assert [task_of_filename(n) for n in ("test_VG.json", "Med-GRIT_ROC.json", "eval_GC.json",
                                        "MII.jsonl", "notes.json", "vg_roc.json")] == \
      ["vg", "roc", "rc", "mia", None, None]
  for name in ("test_VG.json", "test_RO.json", "test_RC.json", "test_MIA.json", "readme.txt"):
    (tmp_path / name).write_text("[]")
  found = find_test_files(tmp_path)
  assert {t: p.name for t, p in found.items()} == {
      "vg": "test_VG.json", "roc": "test_RO.json", "rc": "test_RC.json", "mia": "test_MIA.json"}
  (tmp_path / "vg_extra.json").write_text("[]")
  with pytest.raises(EvalDataError, match="several test files for task vg"):
    find_test_files(tmp_path, ["vg"])


def test_read_test_file_pairs_and_images(tmp_path):
  path = tmp_path / "test_VG.json"
  path.write_text(json.dumps([
      {"id": "ct_00--A--1--x_0001", "conversations": [
          {"from": "user", "value": "Picture 1: <img>ct_00--A--1--x_0001.png</img>\nWhere?"},
          {"from": "assistant", "value": "a1"}, {"from": "user", "value": "And the spleen?"},
          {"from": "assistant", "value": "a2"}]},
      {"id": "mr_00--B--2--2d_none", "conversations": [
          {"from": "user", "value": "No image tag here?"}, {"from": "assistant", "value": "b"}]}]))
  s = read_test_file(path)
  assert [x.id for x in s] == ["ct_00--A--1--x_0001#0", "ct_00--A--1--x_0001#1",
                               "mr_00--B--2--2d_none"]
  assert s[1].question == "Picture 1: <img>ct_00--A--1--x_0001.png</img>\nAnd the spleen?"
  assert s[2].image == "mr_00--B--2--2d_none.png" and s[2].annotation == "b"
  path.write_text(json.dumps([{"id": "x", "conversations": [{"from": "assistant", "value": "a"},
                                                            {"from": "user", "value": "q"}]}]))
  with pytest.raises(EvalDataError, match=r"test_VG.json\[0\] \(id 'x'\): turns must alternate"):
    read_test_file(path)


@pytest.mark.parametrize("image, why", [("../x.png", "must not contain '..'"),
                                        ("/etc/x.png", "must be relative to the image root")])
def test_a_test_record_whose_image_leaves_the_image_folders_is_refused(tmp_path, image, why):
  path = tmp_path / "test_VG.json"
  record = lambda rid, question: {"id": rid, "conversations": [
      {"from": "user", "value": question}, {"from": "assistant", "value": "a"}]}
  ok = record("ct_1", "Picture 1: <img>ct_1.png</img>\nQ")
  path.write_text(json.dumps([ok, record("ct_2", f"Picture 1: <img>{image}</img>\nQ")]))
  with pytest.raises(EvalDataError, match=rf"test_VG.json\[1\] \(id 'ct_2'\): image path "
                                          rf"'{image}' {why}"):
    read_test_file(path)
  path.write_text(json.dumps([ok, record(image[:-4], "Q")]))  # no span: the image from the id
  with pytest.raises(EvalDataError, match=rf"test_VG.json\[1\] .*: image path '{image}' {why}"):
    read_test_file(path)


def test_images_are_found_only_inside_the_image_folders(tmp_path):
  root, outside = tmp_path / "images", tmp_path / "outside"
  (root / "sub").mkdir(parents=True)
  outside.mkdir()
  for p in (root / "sub" / "ct_1.png", root / "ct_2.png", outside / "ct_3.png"):
    p.write_bytes(b"png")
  (root / "ct_3.png").symlink_to(outside / "ct_3.png")
  find = ImageFinder([root])
  assert find("sub/ct_1.png") == (root / "sub" / "ct_1.png").resolve()
  assert find("elsewhere/ct_2.png") == (root / "ct_2.png").resolve()  # by base name
  with pytest.raises(FileNotFoundError, match="ct_4.png"):
    find("ct_4.png")
  for image, why in ((str(outside / "ct_3.png"), "must be relative"),
                     ("../outside/ct_3.png", "'..'")):
    with pytest.raises(ValueError, match=why):
      find(image)
  with pytest.raises(FileNotFoundError, match="outside the image root .*: not followed"):
    find("ct_3.png")  # a symlink leaving the folder: not followed, and said so
  inside = tmp_path / "images2"
  inside.mkdir()
  (inside / "ct_3.png").write_bytes(b"png")
  assert ImageFinder([root, inside])("ct_3.png") == (inside / "ct_3.png").resolve()


def test_gallery_picks_every_modality():
  preds = [Prediction(str(i), f"{m}_{i}.png", "", "", "") for i, m in enumerate(
      ["ct", "ct", "ct", "mr", "x", "x", "zzz"])]
  assert pick_samples(preds, 4) == [0, 3, 4, 6]
  assert pick_samples(preds, 100) == list(range(7))


# ---- model mode ------------------------------------------------------------------------------

QUESTIONS = {
    "vg": ("Where is the liver?", "<ref>liver</ref>" + B(100, 120, 400, 500)),
    "roc": ("What is at " + B(100, 120, 400, 500) + "?", "liver"),
    "rc": ("Describe the region " + B(10, 20, 300, 400) + ".", "A bright round structure."),
    "mia": ("Describe this image.", "An abdominal CT slice."),
}


@pytest.fixture(scope="module")
def model_run(tmp_path_factory, tiny_cfg, tiny_model):
  from bird_jax.checkpoint import orbax as ockpt

  d = tmp_path_factory.mktemp("model_mode")
  mngr = ockpt.checkpoint_manager(d / "ckpt")
  ockpt.save(mngr, 7, params=nnx.to_pure_dict(nnx.state(tiny_model)), config=tiny_cfg)
  mngr.wait_until_finished()
  data = d / "data"
  (data / "images").mkdir(parents=True)
  rng = np.random.default_rng(0)
  names = ["ct_00--A--c1--x_0001", "mr_00--B--c2--z_0003", "x_ray--C--c3--2d_none"]
  for n in names:
    Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(
        data / "images" / f"{n}.png")
  for task, (q, a) in QUESTIONS.items():
    entries = [{"id": n, "conversations": [
        {"from": "user", "value": f"Picture 1: <img>{n}.png</img>\n{q}"},
        {"from": "assistant", "value": a}]} for n in names[:2 if task == "mia" else 3]]
    (data / f"test_{task.upper()}.json").write_text(json.dumps(entries))
  c = get_config()
  c.batch_size = 8  # the 8 forced host devices form the data axis
  c.buckets = (160,)
  c.gallery = 2
  for t in ("vg", "roc", "rc", "mia"):
    c.max_new_tokens[t] = 6
  result = cli.run(c, ckpt=str(d / "ckpt"), data=str(data), out=str(d / "out"))
  return d, result, c


@pytest.mark.heavy
def test_model_mode_writes_bird_predictions(model_run, tiny_cfg):
  d, result, _ = model_run
  from bird_jax.tokenizer import load_tokenizer

  tok = load_tokenizer(tiny_cfg)
  for task, n in (("vg", 3), ("roc", 3), ("rc", 3), ("mia", 2)):
    lines = (d / "out" / "predictions" / f"{task}.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == n and all(list(r) == ["id", "image", "question", "annotation",
                                              "response"] for r in rows)
    assert rows[0]["id"] == "ct_00--A--c1--x_0001" and rows[0]["image"] == rows[0]["id"] + ".png"
    assert rows[0]["annotation"] == QUESTIONS[task][1]
    for r in rows:  # at most 6 new tokens, raw (special tokens kept, not post-processed)
      ids = tok.encode(r["response"])
      assert 1 <= len(ids) <= 6 and (len(ids) == 6 or r["response"].endswith("<|endoftext|>"))
  assert set(result.scores) == {"vg", "roc", "rc", "mia"}
  vg = result.scores["vg"]
  # x_ray_... is modality x
  assert (vg.counts["ct"], vg.counts["mr"], vg.counts["x"], vg.unknown) == (1, 1, 1, 0)
  # the constant baseline answers the mean reference box: every sample's own box here
  assert vg.baseline["answer"] == B(100, 120, 400, 500)
  assert vg.baseline["bird_mean"] == pytest.approx(3 / 8, abs=1e-6)
  assert result.scores["mia"].counts == {"ct": 1, "mr": 1, "x": 0, "pet": 0, "endoscopy": 0,
                                         "dermoscopy": 0, "fundus": 0, "ultrasound": 0}
  assert os.path.isfile(result.paths["gallery"]) and os.path.isfile(result.paths["plot_mia"])


@pytest.mark.heavy
def test_model_mode_prompt_is_the_reference_chat_prompt(model_run, tiny_cfg):
  from bird_jax.evaluation.runner import build_prompts
  from bird_jax.tokenizer import load_tokenizer

  d, _, _ = model_run
  tok = load_tokenizer(tiny_cfg)
  sample = read_test_file(d / "data" / "test_VG.json")[0]
  (prompt,) = build_prompts([sample], tok, tiny_cfg, 160)
  assert prompt.images == ["ct_00--A--c1--x_0001.png"]
  q = tiny_cfg.vision.n_queries
  start = prompt.ids.index(tok.img_id)
  assert prompt.ids[start + 1:start + 2 + q] == [tok.imgpad_id] * q + [tok.img_end_id]
  assert tok.decode(prompt.ids) == (  # (decode writes an all-pad image span as <img></img>)
      "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
      "Picture 1: <img></img>\nWhere is the liver?<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.heavy
def test_model_mode_files_audit_to_the_same_scores(model_run):
  d, result, c = model_run
  again = cli.run(c, predictions=[str(d / "out" / "predictions" / "roc.jsonl")], task=["roc"],
                  out=str(d / "audit"))
  assert again.scores["roc"].bird == result.scores["roc"].bird
  assert again.scores["roc"].processed == result.scores["roc"].processed


@pytest.mark.heavy
def test_model_mode_records_what_it_scored(model_run):
  d, result, _ = model_run
  src = json.loads(open(result.paths["json"]).read())["source"]
  assert src["mode"] == "model" and src["step"] == 7 and src["checkpoint"] == str(d / "ckpt")
  vg = src["predictions"]["vg"]
  assert vg["samples"] == 3 and vg["test_file"] == str(d / "data" / "test_VG.json")
  assert vg["sha256"] == cli.sha256_of(vg["path"])


@pytest.mark.heavy
def test_model_mode_reads_an_hf_folder_as_it_reads_a_checkpoint(model_run, tiny_cfg, hf_weights,
                                                                tmp_path):
  """--ckpt HF_DIR: the same weights give the same predictions, and the folder's files are
  the manifest's inputs."""
  from conftest import write_hf_folder

  d, _, c = model_run
  write_hf_folder(tmp_path / "hf", tiny_cfg, hf_weights)
  c = copy.deepcopy(c)
  c.tasks = ("vg",)
  cli.run(c, ckpt=str(tmp_path / "hf"), data=str(d / "data"), out=str(tmp_path / "out"))
  got = (tmp_path / "out" / "predictions" / "vg.jsonl").read_text()
  assert got == (d / "out" / "predictions" / "vg.jsonl").read_text()
  inputs = json.loads((tmp_path / "out" / "manifest.json").read_text())["inputs"]["checkpoint"]
  assert "config.json" in json.dumps(inputs)
  c.model_preset = "tiny"
  with pytest.raises(ValueError, match="is an HF folder: its config.json gives the model"):
    cli.run(c, ckpt=str(tmp_path / "hf"), data=str(d / "data"), out=str(tmp_path / "out2"))


@pytest.mark.heavy
@pytest.mark.faults
def test_a_non_finite_model_is_refused(tmp_path, tiny_cfg, tiny_model, model_run, fault_log):
  from bird_jax.checkpoint import orbax as ockpt
  from bird_jax.checkpoint.verify import NonFiniteWeights

  params = nnx.to_pure_dict(nnx.state(tiny_model))
  params["llm"]["ln_f"]["weight"] = np.full_like(params["llm"]["ln_f"]["weight"], np.nan)
  mngr = ockpt.checkpoint_manager(tmp_path / "ckpt")
  ockpt.save(mngr, 3, params=params, config=tiny_cfg)
  mngr.wait_until_finished()
  d, _, c = model_run
  with pytest.raises(NonFiniteWeights, match=r"step 3: llm\.ln_f\.weight: the weights hold NaN/inf"):
    cli.run(c, ckpt=str(tmp_path / "ckpt"), data=str(d / "data"), out=str(tmp_path / "out"))
  fault_log(what="eval of a NaN checkpoint")


@pytest.mark.faults
@pytest.mark.parametrize("task, lines, why", [
    ("vg", [], "the prediction file holds no samples"),
    ("vg", [("ct_1.png", "liver", "kidney"), ("mr_1.png", "kidney", "kidney")],
     "no reference answer of the 2 samples holds a box"),  # a ROC file scored as vg
    ("vg", [("ct_1.png", "<ref>liver</ref> on the left", "x")],
     "no reference answer of the 1 samples holds a box"),  # unparseable annotation
    ("roc", [("ct_1.png", "<ref>liver</ref>" + B(1, 2, 3, 4), "liver")],
     "every reference answer of the 1 samples is a box"),  # a VG file scored as roc
    ("roc", [("foo_1.png", "liver", "liver")], "none of the 1 samples has an image name"),
])
def test_nothing_scored_is_an_error_with_the_reason(tmp_path, task, lines, why, fault_log):
  path = tmp_path / "p.jsonl"
  write_cases(path, lines)
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "eval.py"), f"--predictions={path}", f"--task={task}",
       f"--out={tmp_path / 'out'}", "--config.gallery=0"],
      capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert proc.returncode == 6, proc.stderr[-2000:]  # exit_codes.NOTHING_SCORED
  assert f"{task}: nothing scored: {why}" in proc.stderr
  rep = json.loads((tmp_path / "out" / "report.json").read_text())
  assert why in rep["unscorable"][task] and f"NOTHING SCORED: {why}" in rep["tasks"][task]["notes"][0]
  assert rep["source"]["predictions"][task]["sha256"] == cli.sha256_of(str(path))
  assert "NOTHING SCORED" in (tmp_path / "out" / "report.md").read_text()
  fault_log(what=f"eval --task {task}: {why}")
