"""Record schema, byte codec, ArrayRecord shards, image root and Med-GRIT JSON import/export."""

import json
import os
import re

import pytest

from bird_jax.data import medgrit
from bird_jax.data.records import ImageRoot, Object, Record, RecordError, Turn
from bird_jax.data.records import decode_record, encode_record
from bird_jax.data.shards import count_records, find_shards, read_shards, write_shards
from bird_jax_testing.records import synthetic_record


def test_codec_round_trip_keeps_every_field():
  rec = synthetic_record(3)
  back = decode_record(encode_record(rec))
  assert back == rec
  assert back.image_bytes == rec.image_bytes and back.image_bytes[:8] == b"\x89PNG\r\n\x1a\n"
  assert Record.from_dict(rec.to_dict()) == rec.replace(image_bytes=None)


@pytest.mark.parametrize("change, field", [
    (dict(modality="mri"), "modality"),
    (dict(image=""), "image"),
    (dict(image="/abs/x.png"), "image"),
    (dict(image="a/../../x.png"), "image"),
    (dict(objects=(Object("liver", (0.5, 0.2, 0.4, 0.3)),)), "objects[0].box"),
    (dict(objects=(Object("liver", (0.1, 0.2, 0.4, 1.2)),)), "objects[0].box"),
    (dict(objects=(Object("liver", (0.1, 0.2, 0.4, float("nan"))),)), "objects[0].box"),
    (dict(tasks=("vg", "roc", "xyz")), "tasks[2]"),
    (dict(tasks=("vg",)), "tasks"),
    (dict(width=0), "width"),
])
def test_validation_names_record_and_field(change, field):
  rec = synthetic_record(1).replace(**change)
  with pytest.raises(RecordError) as e:
    rec.validate(where="file.json[7]")
  msg = str(e.value)
  assert "file.json[7]" in msg and repr(rec.id) in msg and repr(field) in msg


def test_validation_of_conversations():
  rec = synthetic_record(2)
  turns = rec.conversations
  bad = [
      (turns[1:], "conversations[0].from"),  # starts with assistant
      (turns[:-1], "conversations"),  # unanswered user turn
      ((Turn("user", "no image"), turns[1]), "conversations"),  # no <img> span
      ((turns[0], Turn("assistant", "at <box>(10,20),(5,40)</box>")), "conversations[1].value"),
      ((turns[0], Turn("assistant", "at <box>(10,20),(30</box>")), "conversations[1].value"),
      ((turns[0], Turn("assistant", "at <box>(10,20),(30,1400)</box>")), "conversations[1].value"),
  ]
  for conv, field in bad:
    r = rec.replace(conversations=tuple(conv), tasks=("vg",) * (len(conv) // 2 or 1))
    with pytest.raises(RecordError, match=re.escape(f"'{field}'")):
      r.validate()


def test_image_root_confines_paths(tmp_path):
  root = tmp_path / "root"
  (root / "sub").mkdir(parents=True)
  (root / "sub" / "a.png").write_bytes(b"A")
  (tmp_path / "secret.png").write_bytes(b"S")
  os.symlink(tmp_path / "secret.png", root / "escape.png")
  os.symlink(root / "sub" / "a.png", root / "inside.png")
  r = ImageRoot(str(root))
  assert r.read("sub/a.png") == b"A"
  assert r.read("inside.png") == b"A"  # a symlink staying inside the root is fine
  for bad in ("/etc/passwd", "../secret.png", "sub/../../secret.png", "escape.png"):
    with pytest.raises(ValueError):
      r.read(bad)
  with pytest.raises(FileNotFoundError, match="missing.png"):
    r.read("missing.png")


def test_shards_round_trip_and_atomicity(tmp_path):
  recs = [synthetic_record(i, embed=(i % 2 == 0)) for i in range(7)]
  images = tmp_path / "images"
  images.mkdir()
  for r in recs:  # path-referenced images for the odd ones
    (images / r.image).write_bytes(synthetic_record(int(r.id[-6:])).image_bytes)
  paths = write_shards(recs, tmp_path / "out", name="train", num_shards=3,
                       image_root=ImageRoot(str(images)), progress=False)
  assert [p.name for p in paths] == [f"train-{i:05d}-of-00003.array_record" for i in range(3)]
  assert [count_records(p) for p in paths] == [3, 2, 2]
  assert find_shards(tmp_path / "out") == [str(p) for p in paths]
  back = sorted(read_shards(str(tmp_path / "out" / "train-*")), key=lambda r: r.id)
  assert back == sorted((synthetic_record(i) for i in range(7)), key=lambda r: r.id)

  bad = back[:4] + [back[4].replace(modality="nope")]
  with pytest.raises(RecordError, match="input #4.*modality"):
    write_shards(bad, tmp_path / "bad", num_shards=2, progress=False)
  with pytest.raises(RecordError, match="input #1: record 'mr_000001': field 'image'.*no image root"):
    write_shards(recs, tmp_path / "bad", num_shards=2, progress=False)
  assert os.listdir(tmp_path / "bad") == []  # no partial or temporary shard left


def _medgrit_entries():
  return [
      {"id": "ct_00--AbdomenCT1K--Case_00011--x_0040", "conversations": [
          {"from": "user", "value": "Picture 1: <img>ct_00--AbdomenCT1K--Case_00011--x_0040.png"
                                    "</img>\nWhere is the liver?"},
          {"from": "assistant", "value": "The <ref>liver</ref> is at <box>(512,604),(679,758)</box>."},
          {"from": "user", "value": "What is the object at the coordinates <box>(454,554),(700,800)</box>?"},
          {"from": "assistant", "value": "Edema."},
          {"from": "user", "value": "Can you tell me more about the structure at <box>(562,654),(625,737)</box>?"},
          {"from": "assistant", "value": "It is a hyperintense region of the left hemisphere with a "
                                         "clear margin and surrounding edema."},
          {"from": "user", "value": "Can you provide a general interpretation of this image?"},
          {"from": "assistant", "value": "An axial CT slice of the abdomen. 中文也可以。"}]},
      {"id": "fundus_photography--REFUGE--g0001--2d_none", "conversations": [
          {"from": "user", "value": "Picture 1:<img>fundus_photography--REFUGE--g0001--2d_none.png"
                                    "</img>\nWhere is the optic cup?"},
          {"from": "assistant", "value": "<ref>optic cup</ref><box>(400,380),(520,500)</box>"}]},
  ]


def test_medgrit_import_export_is_lossless(tmp_path):
  src = tmp_path / "medgrit.json"
  src.write_text(json.dumps(_medgrit_entries(), ensure_ascii=False), encoding="utf-8")
  recs = medgrit.import_medgrit_json(src)
  assert [r.modality for r in recs] == ["ct", "fundus"]
  assert recs[0].image == "ct_00--AbdomenCT1K--Case_00011--x_0040.png"
  assert recs[0].tasks == ("vg", "roc", "rc", "mia")
  assert recs[1].tasks == ("vg",)
  assert medgrit.import_medgrit_json(src, task="rc")[0].tasks == ("rc",) * 4
  out = tmp_path / "export" / "again.json"
  assert medgrit.export_medgrit_json(recs, out) == 2
  assert json.loads(out.read_text(encoding="utf-8")) == _medgrit_entries()
  # through shards (with images) and back
  images = tmp_path / "images"
  images.mkdir()
  for r in recs:
    (images / r.image).write_bytes(synthetic_record(0, image_size=40).image_bytes)
  medgrit.main(["import", "--json", str(src), "--image-root", str(images),
                "--out", str(tmp_path / "shards"), "--num-shards", "2"])
  sharded = sorted(read_shards(tmp_path / "shards"), key=lambda r: r.id)
  assert [(r.width, r.height) for r in sharded] == [(40, 40), (40, 40)]
  medgrit.main(["export", "--shards", str(tmp_path / "shards"), "--json", str(out)])
  assert sorted(json.loads(out.read_text(encoding="utf-8")), key=lambda e: e["id"]) == \
      _medgrit_entries()


def test_medgrit_import_errors_name_file_entry_and_field(tmp_path):
  entries = _medgrit_entries()
  entries[1]["id"] = "brain_0001"  # modality "brain" is not one of the 8 keys
  src = tmp_path / "bad.json"
  src.write_text(json.dumps(entries), encoding="utf-8")
  with pytest.raises(RecordError, match=r"bad.json\[1\]: record 'brain_0001': field 'modality'"):
    medgrit.import_medgrit_json(src)
  assert len(medgrit.import_medgrit_json(src, skip_invalid=True)) == 1
  with pytest.raises(RecordError, match="field 'image'.*missing_dir"):
    medgrit.import_medgrit_json(src, image_root=ImageRoot(str(tmp_path / "missing_dir")),
                                skip_invalid=False)
