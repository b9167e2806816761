"""Boxes <-> text: formatter rules, round trips, the tolerant parser and BiRD's extraction."""

import math

import pytest
from hypothesis import given, settings, strategies as st

from bird_jax import boxes as bx

unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
unit_box = st.tuples(unit, unit, unit, unit)
int_box = st.tuples(*[st.integers(0, 999)] * 4)


def test_paper_meta_box():
  assert bx.format_box([0.562, 0.654, 0.625, 0.737]) == "(562,654),(625,737)"
  assert bx.box_span([0.512, 0.604, 0.679, 0.758]) == "<box>(512,604),(679,758)</box>"


def test_every_three_decimal_value_maps_to_its_digits():
  # float("0.57") * 1000 == 569.999...: truncation would give 569
  for k in range(1000):
    assert bx.quantize(float(f"0.{k:03d}")) == k
    assert bx.quantize(k / 1000) == k
  assert bx.quantize(1.0) == 999 and bx.quantize(0.9995) == 999 and bx.quantize(0.0) == 0
  assert bx.quantize(0.0005) == 1 and bx.quantize(0.00049) == 0  # half up


@pytest.mark.parametrize("bad", [-0.001, 1.0001, math.nan, math.inf])
def test_quantize_rejects_out_of_range(bad):
  with pytest.raises(ValueError, match="outside"):
    bx.quantize(bad)


def test_quantize_box_rejects_wrong_length():
  with pytest.raises(ValueError, match="4 numbers"):
    bx.quantize_box([0.1, 0.2, 0.3])


@settings(max_examples=300, deadline=None)
@given(unit, unit)
def test_quantize_is_monotone_and_within_half_a_step(a, b):
  lo, hi = min(a, b), max(a, b)
  assert bx.quantize(lo) <= bx.quantize(hi)
  err = abs(bx.quantize(a) / 1000 - a)
  assert err <= (0.0005 + 1e-12 if a <= 0.9995 else 0.001 + 1e-12)


@settings(max_examples=300, deadline=None)
@given(int_box)
def test_int_text_round_trip(ints):
  norm = bx.dequantize_box(ints)
  assert bx.quantize_box(norm) == ints
  text = bx.box_span(norm)
  assert text == "<box>({},{}),({},{})</box>".format(*ints)
  parsed = bx.parse_boxes(text)
  assert parsed.ok and parsed.coords == [tuple(float(v) for v in ints)]
  assert bx.bird_extract_boxes(text) == [tuple(float(v) for v in ints)]
  assert bx.bird_extract_boxes(bx.format_box(norm)) == [tuple(float(v) for v in ints)]


phrase = st.text(st.characters(blacklist_characters="<>", blacklist_categories=("Cs",)),
                 min_size=1, max_size=20)


@settings(max_examples=200, deadline=None)
@given(phrase, st.lists(unit_box, min_size=1, max_size=4))
def test_ref_span_round_trip(name, box_list):
  text = "The " + bx.ref_span(name, box_list) + " is shown."
  parsed = bx.parse_boxes(text)
  assert parsed.ok
  assert parsed.coords == [tuple(float(v) for v in bx.quantize_box(b)) for b in box_list]
  assert all(b.ref == name.strip() and b.tagged for b in parsed.boxes)
  assert len(bx.bird_extract_boxes(text)) == len(box_list)


def test_ref_span_rejects_tags_and_empty():
  with pytest.raises(ValueError, match="contains the tag"):
    bx.ref_span("a <BOX> b", [(0.1, 0.1, 0.2, 0.2)])
  with pytest.raises(ValueError, match="at least one box"):
    bx.ref_span("liver", [])


hostile_alphabet = st.sampled_from(
    ["<box>", "</box>", "<BOX>", "</Box>", "<ref>", "</ref>", "< box >", "(", ")", ",", " ",
     "\n", "12", "999", "-3", "4.5", "abc", "[", "]", "<|im_end|>", "é", "1e9", "nan"])


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.lists(hostile_alphabet, max_size=30).map("".join), st.text(max_size=60)))
def test_parsers_never_raise(text):
  parsed = bx.parse_boxes(text)
  assert all(k.kind in bx.ISSUE_KINDS for k in parsed.issues)
  assert all(len(b.coords) == 4 and 0 <= b.start < b.end <= len(text) for b in parsed.boxes)
  for box in bx.bird_extract_boxes(text):
    assert box is None or len(box) == 4


# (model output, boxes read, issue kinds)
HOSTILE = [
    ("The <ref>enhancing tumor</ref> is located at the coordinates <box>(512,604),(679,758)</box>.",
     [(512, 604, 679, 758)], []),
    ("<box>( 12 , 34 ) , ( 56,78 )</box>", [(12, 34, 56, 78)], []),
    ("<BOX>(1,2),(3,4)</BOX><Box>(5,6),(7,8)</bOx>", [(1, 2, 3, 4), (5, 6, 7, 8)], []),
    ("<box>(1,2),(3,4),(5,6),(7,8)</box>", [(1, 2, 3, 4), (5, 6, 7, 8)], []),
    ("<box>[10, 20, 30, 40]</box>", [(10, 20, 30, 40)], []),
    ("It is at (100,200),(300,400).", [(100, 200, 300, 400)], []),
    ("It is at ( 100, 200 ) ( 300 ,400 ).", [(100, 200, 300, 400)], []),
    ("<box>(1,2),(3,4)", [(1, 2, 3, 4)], ["unclosed_box"]),
    ("<box>(1,2),(3,", [], ["unclosed_box", "unparseable_box"]),
    ("<box>(1,2),(3,4)<box>(5,6),(7,8)</box>", [(1, 2, 3, 4), (5, 6, 7, 8)], ["unclosed_box"]),
    ("<box>the liver</box>", [], ["unparseable_box"]),
    ("<box></box>", [], ["unparseable_box"]),
    ("<box>(1,2),(3,4),(5,6)</box>", [], ["unparseable_box"]),
    ("</box> stray </ref>", [], ["stray_tag", "stray_tag"]),
    ("<ref>liver", [], ["unclosed_ref"]),
    ("<box>(1.5,2),(3,4.25)</box>", [(1.5, 2, 3, 4.25)], []),
    ("<box>(-5,2),(1200,4)</box>", [(-5, 2, 1200, 4)], []),
    ("no boxes here<|im_end|>\n<|endoftext|>", [], []),
    ("", [], []),
    ("((((((((((((((((((((,,,,,,))))))))", [], []),
]


@pytest.mark.parametrize("text,want,kinds", HOSTILE)
def test_hostile_outputs(text, want, kinds):
  parsed = bx.parse_boxes(text)
  assert parsed.coords == [tuple(float(v) for v in b) for b in want]
  assert [k.kind for k in parsed.issues] == kinds


def test_ref_runs_and_validity():
  text = ("<ref>kidney</ref> at <box>(1,2),(3,4)</box>, <box>(5,6),(7,8)</box> and "
          "<box>(9,9),(10,10)</box>. Also <box>(0,0),(5,5)</box>; <ref>liver</ref><box>(7,7),(3,3)</box>")
  parsed = bx.parse_boxes(text)
  assert [b.ref for b in parsed.boxes] == ["kidney", "kidney", "kidney", None, "liver"]
  assert [b.valid for b in parsed.boxes] == [True, True, True, True, False]
  assert parsed.boxes[0].normalised == (0.001, 0.002, 0.003, 0.004)
  assert bx.parse_boxes(None).issues[0].kind == "not_text"  # type: ignore[arg-type]


# (text, fallback, BiRD's boxes)
BIRD = [
    ("<box>(1,2),(3,4)</box> and <box>(5,6),(7,8)</box>", True, [(1, 2, 3, 4), (5, 6, 7, 8)]),
    ("<box>(1, 2),( 3,4)</box>", True, [(1, 2, 3, 4)]),  # float() ignores the spaces
    ("<box>(1.5,2),(3,4)</box>", True, [(1.5, 2, 3, 4)]),
    ("<box>(a,b),(c,d)</box>", True, [None]),
    ("<box></box>", True, [None]),
    ("<box>(1,2),(3,4),(5,6)</box>", True, [None]),
    ("<box>(1,2),(3,4)</box><box>(x)</box>", True, [(1, 2, 3, 4), None]),
    # no <box> match: fallback to bare integer pairs without spaces
    ("<BOX>(1,2),(3,4)</BOX>", True, [(1, 2, 3, 4)]),
    ("<BOX>(1,2),(3,4)</BOX>", False, []),
    ("<box>(1,2),\n(3,4)</box>", True, []),  # no DOTALL and the fallback has no \n
    ("at (1,2),(3,4) or (5, 6),(7,8)", True, [(1, 2, 3, 4)]),
    ("(1.5,2),(3,4)", True, []),
    # a <box> match disables the fallback
    ("<box>junk</box> (1,2),(3,4)", True, [None]),
    ("<box>(1,2),(3,4)", True, [(1, 2, 3, 4)]),  # truncated: only the fallback reads it
    ("nothing", True, []),
]


@pytest.mark.parametrize("text,fallback,want", BIRD)
def test_bird_extract_boxes(text, fallback, want):
  got = bx.bird_extract_boxes(text, fallback=fallback)
  assert got == [None if b is None else tuple(float(v) for v in b) for b in want]


def test_pixel_helpers():
  norm = bx.normalise_pixel_box((56, 112, 280, 448), 560, 448)
  assert norm == (0.1, 0.25, 0.5, 1.0)
  assert bx.pixel_box(norm, 560, 448) == (56.0, 112.0, 280.0, 448.0)
  with pytest.raises(ValueError, match="positive"):
    bx.normalise_pixel_box((0, 0, 1, 1), 0, 10)


def test_refs_tags_and_iou_rules():
  parsed = bx.parse_boxes("<ref>liver</ref><box>(1,2),(3,4)</box> and <REF> kidney </ref> alone")
  assert parsed.refs == ("liver", "kidney")
  assert bx.has_tags("a < Box>b") and not bx.has_tags("a <img>b</img>")
  assert bx.canonical_tags("< REF>x</Ref><BOX >(1,2),(3,4)</box>") == "<ref>x</ref><box>(1,2),(3,4)</box>"
  assert bx.box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
  assert bx.box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
  assert bx.round_to_grid(0.1235) == 0.124 and bx.round_to_grid(1.0) == 1.0
