"""datagen for the demo's base model: the generic `shapes` source, disjoint turn plans and
concise answers (BiRD's grounded-phrase format without the surrounding sentence)."""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest

from bird_jax.boxes import parse_boxes
from bird_jax.data.shards import read_shards
from bird_jax.vocabulary import MODALITIES, modality_of
from datagen.config import GenConfig
from datagen.meta import ImageMeta, MetaObject
from datagen.run import generate
from datagen.sources.shapes import CATEGORIES, ShapesSource, make_scene, render
from datagen.tasks import TaskCounts, plan_turns


@pytest.fixture(scope="module")
def shapes():
  src = ShapesSource(seed=0, image_size=64, num_images=80, max_labels=5)
  return src, list(src.refs(Counter()))


def test_refs_spread_over_the_modalities_one_case_per_scene(shapes):
  src, refs = shapes
  per = Counter(r.modality for r in refs)
  assert set(per) == set(MODALITIES) and len(set(per.values())) == 1
  assert per["ct"] == 12  # ceil(80 * 1.05 / 8) + 1 candidates per modality
  assert len({r.case_id for r in refs}) == len(refs)
  for r in refs:
    assert modality_of(r.id + ".png") == r.modality and r.slice is None
    assert r.id.endswith("--2d_none") and r.dataset == "Shapes"


def test_scenes_are_deterministic_and_seeded(shapes):
  src, refs = shapes
  again = ShapesSource(seed=0, image_size=64, num_images=80)
  other = ShapesSource(seed=1, image_size=64, num_images=80)
  pick = refs[::9]
  assert all(src.image_bytes(r) == again.image_bytes(r) for r in pick)
  assert sum(src.image_bytes(r) != other.image_bytes(r) for r in pick) == len(pick)


def test_labels_look_alike_within_and_differ_across(shapes):
  """Instances of a label share their look; two labels of a scene never share colour, shape
  and texture; unrelated objects do not overlap; negatives are absent labels."""
  n_multi = n_nested = n_category = 0
  for index in range(60):
    scene = make_scene(0, index, 5)
    looks: dict[str, set] = {}
    for o in scene.objects:
      looks.setdefault(o.look.label, set()).add((o.look.colour, o.look.shape, o.look.texture))
    assert all(len(v) == 1 for v in looks.values())
    keys = [next(iter(v)) for v in looks.values()]
    assert len(set(keys)) == len(keys)
    assert 1 <= len(looks) <= 5 and not set(scene.absent) & set(looks)
    img, inst = render(scene, 64)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    masks = [m for _, m in inst]
    for i, a in enumerate(scene.objects):
      for j, b in enumerate(scene.objects[:i]):
        related = a.parent == j or b.parent == i
        if related:
          assert not (masks[i] & ~masks[j]).any() or not (masks[j] & ~masks[i]).any()
        else:
          assert not (masks[i] & masks[j]).any(), (index, a.look.label, b.look.label)
    n_multi += any(n > 1 for n in Counter(o.look.label for o in scene.objects).values())
    n_nested += any(o.parent is not None for o in scene.objects)
    n_category += any(o.look.name for o in scene.objects)
  assert n_multi >= 10 and n_nested >= 5 and n_category >= 20


def test_a_category_always_looks_the_same():
  seen: dict[str, set] = {}
  for index in range(80):
    for o in make_scene(3, index, 5).objects:
      if o.look.name:
        assert o.look.name in CATEGORIES
        seen.setdefault(o.look.name, set()).add((o.look.colour, o.look.shape, o.look.texture,
                                                 o.look.rim))
  assert len(seen) >= 10 and all(len(v) == 1 for v in seen.values())


def _meta(labels: list[str]) -> ImageMeta:
  objects = tuple(MetaObject(label, (0.1 * i, 0.1, 0.1 * i + 0.05, 0.2), 0.01)
                  for i, label in enumerate(labels))
  present = tuple(dict.fromkeys(labels))
  return ImageMeta("ct_x--D--c--2d_none", "ct", "D", "c", None, 64, 64, "", "", objects,
                   present, present + ("absent thing",), {}, {})


def test_disjoint_plans_never_refer_to_a_label_that_a_vg_turn_asks_about():
  labels = ["a", "b", "b", "c", "d", "d", "e"]
  counts = TaskCounts(vg=3, roc=3, rc=1, mia=0, negatives=1.0, disjoint=True)
  sizes = Counter()
  for seed in range(40):
    specs = plan_turns(_meta(labels), counts, seed)
    vg = {s.label for s in specs if s.task == "vg" and not s.negative}
    ref = [s.label for s in specs if s.task in ("roc", "rc")]
    assert not vg & set(ref)
    objs = [j for s in specs if s.task in ("roc", "rc") for j in s.objects]
    assert len(objs) == len(set(objs))  # RC does not reuse an ROC object
    sizes[len(vg), len(ref)] += 1
  assert set(sizes) <= {(3, 2), (3, 3), (2, 3), (2, 4)} and sum(sizes.values()) == 40
  one = plan_turns(_meta(["a"]), counts, 0)  # a single label goes to VG
  assert [s.task for s in one if not s.negative] == ["vg"]


def test_plans_without_disjoint_are_unchanged():
  """The default plan draws exactly what it drew before the option existed (recorded with the
  planner of that time; 2,700 seeds x label sets x counts matched)."""
  specs = plan_turns(_meta(["a", "b", "b", "c"]), TaskCounts(vg=2, roc=1, rc=1, mia=1), 7)
  assert [(s.task, s.label, s.objects) for s in specs] == [
      ("roc", "a", (0,)), ("vg", "a", (0,)), ("rc", "c", (3,)), ("vg", "b", (1, 2)),
      ("mia", "", ())]


@pytest.fixture(scope="module")
def concise_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("shapes_run")
  cfg = GenConfig(out=str(out), source="shapes", num_images=40, image_size=48, max_labels=4,
                  tasks=TaskCounts(vg=3, roc=3, rc=0, mia=0, negatives=0.5, disjoint=True),
                  answer_style="concise", workers=1, progress=False, chunk_size=16)
  return out, generate(cfg)


def test_concise_disjoint_shapes_run(concise_run):
  out, summary = concise_run
  recs = list(read_shards(str(out / "train"))) + list(read_shards(str(out / "test")))
  assert len(recs) == summary["images"]["written"] == 40
  assert {r.modality for r in recs} == set(MODALITIES)
  n_vg = 0
  for rec in recs:
    rec.validate()
    turns = rec.conversations
    vg_labels, roc_labels = set(), set()
    for task, q, a in zip(rec.tasks, turns[::2], turns[1::2]):
      if task == "vg" and parse_boxes(a.value).boxes:
        m = re.fullmatch(r"<ref>([^<]+)</ref>((<box>\(\d+,\d+\),\(\d+,\d+\)</box>)+)", a.value)
        assert m, a.value  # the grounded phrase and nothing else
        boxes = [b.coords for b in parse_boxes(a.value).boxes]
        assert boxes == sorted(boxes)  # instances left to right
        vg_labels.add(m.group(1))
        n_vg += 1
      elif task == "roc":
        roc_labels.add(a.value.rstrip(".").lower())
    assert not {v.lower() for v in vg_labels} & roc_labels
  assert n_vg >= 40
  test_vg = json.loads((out / "medgrit" / "test_VG.json").read_text())
  assert test_vg and all(t["conversations"][1]["value"].startswith(("<ref>", "There", "The ",
                                                                    "No ", "This "))
                         for t in test_vg)


def test_concise_needs_the_template_backend(tmp_path):
  with pytest.raises(ValueError, match="concise needs the template backend"):
    GenConfig(out=str(tmp_path), backend="openai", answer_style="concise").validate()
  with pytest.raises(ValueError, match="max-labels"):
    ShapesSource(max_labels=9)


def test_concise_mia_is_a_grounded_listing_left_to_right():
  from datagen.llm.template import template_generation
  from datagen.tasks import TurnSpec

  meta = _meta(["c", "a", "b", "a"])  # leftmost boxes: c 0.0, a 0.1 (and 0.3), b 0.2
  gen = template_generation(meta, [TurnSpec("mia", "", ())], seed=0, concise=True)
  answer = gen.qas[0].answer
  assert re.findall(r"<ref>(\w)</ref>", answer) == ["c", "a", "b"]
  a_boxes = re.search(r"<ref>a</ref>((?:<box>[^<]+</box>)+)", answer).group(1)
  assert [b.coords for b in parse_boxes(a_boxes).boxes] == [
      parse_boxes(answer).boxes[1].coords, parse_boxes(answer).boxes[2].coords]
  assert len(parse_boxes(answer).boxes) == 4


def test_plain_scenes_have_one_plain_coloured_object_per_label():
  """--shapes-style plain: colour scenes, labels `colour shape`, one object each, none nested,
  no textures or rims; the full style is unchanged by the option (same scenes as before)."""
  from datagen.sources.shapes import COLOURS, GREYS, SHAPES

  for i in range(40):
    scene = make_scene(0, i, max_labels=5, style="plain")
    assert not scene.grey and scene.background in ("flat", "gradient") and scene.plain
    labels = [o.look.label for o in scene.objects]
    assert labels and len(labels) == len(set(labels))
    for o in scene.objects:
      assert o.parent is None and o.look.texture == "plain" and o.look.rim is None
      colour, shape = o.look.label.rsplit(" ", 1)
      assert colour in {**COLOURS, **GREYS} and shape in SHAPES
  full = make_scene(0, 3, max_labels=5)
  assert full == make_scene(0, 3, max_labels=5, style="full") and not full.plain
  cfg = GenConfig(out="x", source="shapes")
  assert "shapes_style" not in cfg.fingerprint()  # earlier runs keep their identity
  assert GenConfig(out="x", source="shapes", shapes_style="plain").fingerprint()["shapes_style"] \
      == "plain"
  with pytest.raises(ValueError, match="shapes style 'fancy'"):
    GenConfig(out="x", source="shapes", shapes_style="fancy").validate()


def test_bare_scenes_are_plain_objects_on_black():
  """--shapes-style bare: plain-style objects on pure black, no noise: every non-black pixel
  belongs to an object."""
  for i in range(12):
    bare = make_scene(0, i, max_labels=3, style="bare")
    assert bare.plain and bare.bg_colours == ((0.0, 0.0, 0.0),)
    assert all(o.look.colour != "black" for o in bare.objects)
    img, instances = render(bare, 112)
    covered = np.zeros(img.shape[:2], bool)
    for _, mask in instances:
      covered |= mask
    assert not img[~covered].any() and img[covered].max(-1).min() > 0
  with pytest.raises(ValueError, match="shapes style 'fancy'"):
    make_scene(0, 0, max_labels=3, style="fancy")
